"""IQ1_S and IQ1_M: ~1.6-1.75 bit quants on a 2048-entry codebook of ternary 8-vectors.

Each group of 8 weights is an index into llama.cpp's ``iq1s_grid`` (2048 entries, elements from
{-1, 0, 1}) plus a per-group or per-16 shift of +-1/8 (``IQ1S_DELTA``), times a 3-bit sub-block
scale and a per-256 fp16 scale. The search solves the 3-level weighted least squares exactly by
sorting the values and trying every pair of split points, then snaps each group of 8 to the
codebook (the map and nearest-neighbour lists of the 2048-entry grid come from
:func:`quantkit.quants.iq2.grid_tables`).

Layout and search details: docs/iquants-iq2-iq1.md.
"""

from __future__ import annotations

import numpy as np
from numba import njit, prange

from .iq2 import F0, F1, FHALF, FLT_MAX, QK_K, code_levels, grid_point, grid_tables, nn_search
from .iq2 import dequantize_on_grid, weights_or_zero, zeroed_rows
from .numeric import fp32_to_fp16_bits, nearest_int

IQ1S_DELTA = np.float32(0.125)
IQ1M_DELTA = np.float32(0.125)
# IQ1_M scores the splits (i1, i2) of a row i1 in fixed-width loops over i2 (lanes 0..31: i2 = 0..16
# and padding), which LLVM vectorizes
SPLIT_LANES = 32
GROUP_MAX_EPS_IQ1_S = np.float32(1e-12)
GROUP_MAX_EPS_IQ1_M = np.float32(1e-7)
# IQ1_M: split points i1 <= i2 run over 0..16. C's ordered scan of the splits ends on the candidate
# with the largest would-be best M when every other candidate is below M*(1 - 2^-19) (32 float32
# roundings; C's comparisons move a value by ~6). _split_by_margin checks that with the largest lane
# ratio r: the other lanes below r*(1 - LANE_MARGIN) (their ratios are ~45 roundings off), the other
# splits of r's lane below r*(1 - IN_LANE_MARGIN) (r is ~5 roundings off M)
IQ1M_SPLITS = 17
LANE_MARGIN = np.float32(2.0**-16)
IN_LANE_MARGIN = np.float32(2.0**-18)
NEG_INF = np.float32(-np.inf)


# ------------------------------------------------------------------------------------------------
# Numba kernels (``_nrt=False``: borrow arrays only, see quantkit/quants/iq2.py)


@njit(cache=True, error_model="numpy", _nrt=False)
def _sort_index(xb, n, idx, rank):
    """idx = positions of xb[0:n] in ascending order, ties in index order (glibc's stable qsort).

    Each value's place is its rank: the number of smaller values plus the number of equal values
    before it (branch-free comparisons over all pairs, which Numba vectorizes).
    """
    for j in range(n):
        rank[j] = 0
    for i in range(n):
        xi = xb[i]
        for j in range(n):
            rank[j] += np.int32(xi < xb[j]) | (np.int32(xi == xb[j]) & np.int32(i < j))
    for j in range(n):
        idx[rank[j]] = j


@njit(cache=True, error_model="numpy", _nrt=False)
def _sort_index16(xb, n, idx):
    """_sort_index for short blocks: the same ranks, counted before and after each position."""
    for j in range(n):
        v = xb[j]
        r = 0
        for i in range(j):
            r += np.int32(xb[i] <= v)
        for i in range(j + 1, n):
            r += np.int32(xb[i] < v)
        idx[r] = j


@njit(inline="always", cache=True, error_model="numpy")
def _best_neighbour2(u, kmap, nbr_list, xval, weight, off, scale, xg, L, t, t4):
    """iq1_find_best_neighbour2: the neighbour of point ``u`` minimizing sum w*(scale*xg[l] - x)^2.

    The 24 possible terms are computed with C's float32 operations, then iq2.nn_search scans the
    candidates in C's order and summation order.
    """
    for l in range(3):
        sq = scale * xg[l]
        for i in range(8):
            diff = sq - xval[off + i]
            t[8 * l + i] = weight[off + i] * diff * diff
    c = nn_search(-kmap[u] - 1, nbr_list, t, t4)
    return code_levels(c, L, off, 1)


@njit(cache=True, error_model="numpy", _nrt=False)
def _sigma2(x, off):
    """2 * mean of x[off:off + 256]^2, summed in C's order."""
    sumx2 = F0
    for i in range(off, off + QK_K):
        sumx2 += x[i] * x[i]
    return np.float32(2.0) * sumx2 / np.float32(QK_K)


@njit(cache=True, error_model="numpy")
def _iq1s_work():
    """The work arrays of :func:`_quantize_row_iq1_s`, allocated by its row driver (the kernel only
    borrows arrays, so it is compiled without reference counting)."""
    bs = 32
    return (np.array([-F1 + IQ1S_DELTA, IQ1S_DELTA, F1 + IQ1S_DELTA], dtype=np.float32),
            np.array([-F1 - IQ1S_DELTA, -IQ1S_DELTA, F1 - IQ1S_DELTA], dtype=np.float32),
            np.zeros(QK_K // bs, dtype=np.float32),  # scales
            np.zeros(QK_K // bs, dtype=np.int32),  # shifts
            np.zeros(bs, dtype=np.float32),  # weight
            np.zeros(bs, dtype=np.float32),  # xb, the 32 values at hand
            (np.zeros(bs + 1, dtype=np.float32), np.zeros(bs + 1, dtype=np.float32)),  # sumx, sumw
            (np.zeros(bs, dtype=np.int32), np.zeros(bs, dtype=np.int32)),  # idx, rank
            np.zeros(bs, dtype=np.int32),  # L
            (np.zeros(24, dtype=np.float32), np.zeros(81, dtype=np.float32)),  # t, t4
            np.zeros(bs // 8, dtype=np.int32),  # index
            np.zeros(QK_K // bs, dtype=np.int32),  # qh
            (np.zeros(bs + 1, dtype=np.float32), np.zeros(bs + 1, dtype=np.float32),
             np.zeros(bs + 1, dtype=np.float32), np.zeros(bs + 1, dtype=np.float32)),  # tqxp, tq2p, tqxm, tq2m
            (np.zeros(bs + 1, dtype=np.float32), np.zeros(bs + 1, dtype=np.float32),
             np.zeros(bs + 1, dtype=np.float32), np.zeros(bs + 1, dtype=np.float32)))  # cqxp, cq2p, cqxm, cq2m


@njit(cache=True, error_model="numpy", _nrt=False)
def _quantize_row_iq1_s(x, qw, out, tabs, work):
    bs = 32
    nbl = x.shape[0] // QK_K
    x_p, x_m, scales, shifts, weight, xb, (sumx, sumw), (idx, rank), L, (t, t4), index, qh, tails, cands = work
    tqxp, tq2p, tqxm, tq2m = tails
    cqxp, cq2p, cqxm, cq2m = cands
    kmap, nbr_list, levels = tabs
    for ibl in range(nbl):
        o = ibl * 50
        for i in range(50):
            out[o + i] = 0
        for ib in range(QK_K // bs):
            qh[ib] = 0
        max_scale = F0
        sigma2 = _sigma2(x, QK_K * ibl)
        for ib in range(QK_K // bs):
            for i in range(bs):
                xb[i] = x[QK_K * ibl + bs * ib + i]
            for i in range(bs):
                weight[i] = qw[QK_K * ibl + bs * ib + i] * np.sqrt(sigma2 + xb[i] * xb[i])
            vmax = np.abs(xb[0])
            for i in range(1, bs):
                a = np.abs(xb[i])
                vmax = vmax if vmax > a else a
            if vmax < GROUP_MAX_EPS_IQ1_S:
                scales[ib] = F0
                shifts[ib] = 1
                continue
            _sort_index(xb, bs, idx, rank)
            sumx[0] = F0
            sumw[0] = F0
            for j in range(bs):
                i = idx[j]
                sumx[j + 1] = sumx[j] + weight[i] * xb[i]
                sumw[j + 1] = sumw[j] + weight[i]
            best_score = -FLT_MAX
            scale = vmax
            besti1 = -1
            besti2 = -1
            best_shift = 0
            # every split (i1, i2) with C's float32 expressions; the terms that depend on one split
            # point only are computed once, the rest for all i2 at a time (a loop Numba vectorizes),
            # then the candidates are compared in C's order
            xp0, xp1, xp2 = x_p[0], x_p[1], x_p[2]
            xm0, xm1, xm2 = x_m[0], x_m[1], x_m[2]
            for i2 in range(bs + 1):
                a2 = sumx[bs] - sumx[i2]
                b2 = sumw[bs] - sumw[i2]
                tqxp[i2] = a2 * xp2
                tq2p[i2] = b2 * xp2 * xp2
                tqxm[i2] = a2 * xm2
                tq2m[i2] = b2 * xm2 * xm2
            for i1 in range(bs + 1):
                sx1 = sumx[i1]
                sw1 = sumw[i1]
                a0 = sx1 - sumx[0]
                b0 = sw1 - sumw[0]
                hqxp = a0 * xp0
                hq2p = b0 * xp0 * xp0
                hqxm = a0 * xm0
                hq2m = b0 * xm0 * xm0
                b_row = best_score
                npass = 0
                for i2 in range(i1, bs + 1):
                    a1 = sumx[i2] - sx1
                    b1 = sumw[i2] - sw1
                    qxp = hqxp + a1 * xp1 + tqxp[i2]
                    q2p = hq2p + b1 * xp1 * xp1 + tq2p[i2]
                    qxm = hqxm + a1 * xm1 + tqxm[i2]
                    q2m = hq2m + b1 * xm1 * xm1 + tq2m[i2]
                    cqxp[i2] = qxp
                    cq2p[i2] = q2p
                    cqxm[i2] = qxm
                    cq2m[i2] = q2m
                    # C's test against the best score so far; if no split of this row passes it,
                    # the best cannot change in this row (exact skip)
                    npass += np.int32((q2p > F0) & (qxp * qxp > b_row * q2p))
                    npass += np.int32((q2m > F0) & (qxm * qxm > b_row * q2m))
                if npass == 0:
                    continue
                for i2 in range(i1, bs + 1):
                    sumqx = cqxp[i2]
                    sumq2 = cq2p[i2]
                    if sumq2 > F0 and sumqx * sumqx > best_score * sumq2:
                        scale = sumqx / sumq2
                        best_score = scale * sumqx
                        besti1 = i1
                        besti2 = i2
                        best_shift = 1
                    sumqx = cqxm[i2]
                    sumq2 = cq2m[i2]
                    if sumq2 > F0 and sumqx * sumqx > best_score * sumq2:
                        scale = sumqx / sumq2
                        best_score = scale * sumqx
                        besti1 = i1
                        besti2 = i2
                        best_shift = -1
            if besti1 < 0 or besti2 < 0 or best_shift == 0:
                scales[ib] = F0
                shifts[ib] = 1
                continue
            for j in range(bs):
                L[idx[j]] = 0 if j < besti1 else (1 if j < besti2 else 2)
            if scale < F0:
                for j in range(bs):
                    L[j] = 2 - L[j]
                scale = -scale
                best_shift = -best_shift
            xx = x_p if best_shift == 1 else x_m
            all_on_grid = True
            for k in range(bs // 8):
                u = grid_point(L, 8 * k)
                gi = kmap[u]
                if gi < 0:
                    all_on_grid = False
                    gi = _best_neighbour2(u, kmap, nbr_list, xb, weight, 8 * k, scale, xx, L, t, t4)
                index[k] = gi
            if not all_on_grid:
                sumqx = F0
                sumq2 = F0
                for k in range(bs // 8):
                    for j in range(8):
                        w = weight[8 * k + j]
                        q = xx[levels[index[k], j]]
                        sumqx += w * q * xb[8 * k + j]
                        sumq2 += w * q * q
                if sumqx > F0 and sumq2 > F0:
                    scale = sumqx / sumq2
            h = 0
            for k in range(bs // 8):
                out[o + 2 + (bs // 8) * ib + k] = np.uint8(index[k] & 255)
                h |= (index[k] >> 8) << (3 * k)
            qh[ib] = h
            scales[ib] = scale
            shifts[ib] = best_shift
            max_scale = max_scale if max_scale > scale else scale
        if max_scale == F0:  # every scale 0 (e.g. no weighted value is non-zero): C keeps the grid's high bits
            for ib in range(QK_K // bs):
                out[o + 34 + 2 * ib] = np.uint8(qh[ib] & 255)
                out[o + 35 + 2 * ib] = np.uint8((qh[ib] >> 8) & 255)
            continue
        d = max_scale / np.float32(15.0)
        dbits = fp32_to_fp16_bits(d * np.float32(1.125))
        out[o] = np.uint8(dbits & 255)
        out[o + 1] = np.uint8(dbits >> 8)
        id_ = F1 / d
        for ib in range(QK_K // bs):
            l = nearest_int(FHALF * (id_ * scales[ib] - F1))
            l = max(0, min(7, l))
            if shifts[ib] == -1:
                l |= 8
            v = qh[ib] | (l << 12)
            out[o + 34 + 2 * ib] = np.uint8(v & 255)
            out[o + 35 + 2 * ib] = np.uint8((v >> 8) & 255)


@njit(cache=True, error_model="numpy", _nrt=False)
def _iq1m_weights(xb, qw, off, has_qw, sigma2, weight):
    if has_qw:
        for i in range(16):
            weight[i] = qw[off + i] * np.sqrt(sigma2 + xb[i] * xb[i])
    else:
        for i in range(16):
            weight[i] = xb[i] * xb[i]


@njit(inline="always", cache=True, error_model="numpy")
def _split_sums(row, px, cwp, cwm, i2):
    """sum w*q*x and sum w*q*q of split (i1, i2) for the shift pairs (+,+), (+,-), (-,+), (-,-).

    ``row`` holds the terms of split point i1 (C's float32 expressions, evaluated in C's order).
    """
    ax0, ax1, hp0, hp1, hm0, hm1, tp0, tp1, tm0, tm1 = row
    sx0 = ax0 + px[0, i2]
    sx1 = ax1 + px[1, i2]
    qxp0 = tp0 - sx0
    qxp1 = tp1 - sx1
    qxm0 = tm0 - sx0
    qxm1 = tm1 - sx1
    q2p0 = hp0 + cwp[0, i2]
    q2p1 = hp1 + cwp[1, i2]
    q2m0 = hm0 + cwm[0, i2]
    q2m1 = hm1 + cwm[1, i2]
    return (qxp0 + qxp1, q2p0 + q2p1, qxp0 + qxm1, q2p0 + q2m1,
            qxm0 + qxp1, q2m0 + q2p1, qxm0 + qxm1, q2m0 + q2m1)


@njit(inline="always", cache=True, error_model="numpy")
def _passes(sx, sq, best):
    """C's test for replacing the best split: sumq2 > 0 and sumqx^2 > best*sumq2."""
    return (sq > F0) & (sx * sx > best * sq)


@njit(inline="always", cache=True, error_model="numpy")
def _split_row(row, px, cwp, cwm, best, cqx, cq2, cb, passes):
    """For every lane i2 (one loop, which LLVM vectorizes): cqx/cq2[k, i2] = _split_sums,
    cb[k, i2] = the best score C would set for that candidate, (sumqx/sumq2)*sumqx in float32, and
    passes[i2] = whether any of the 4 shift pairs passes C's test against ``best``."""
    for i2 in range(SPLIT_LANES):
        x0, q0, x1, q1, x2, q2, x3, q3 = _split_sums(row, px, cwp, cwm, i2)
        cqx[0, i2] = x0
        cq2[0, i2] = q0
        cqx[1, i2] = x1
        cq2[1, i2] = q1
        cqx[2, i2] = x2
        cq2[2, i2] = q2
        cqx[3, i2] = x3
        cq2[3, i2] = q3
        cb[0, i2] = (x0 / q0) * x0
        cb[1, i2] = (x1 / q1) * x1
        cb[2, i2] = (x2 / q2) * x2
        cb[3, i2] = (x3 / q3) * x3
        passes[i2] = _passes(x0, q0, best) | _passes(x1, q1, best) | _passes(x2, q2, best) | _passes(x3, q3, best)


@njit(inline="always", cache=True, error_model="numpy")
def _split_passes(cqx, cq2, best, passes):
    """passes[i2] of :func:`_split_row` against another best, from the stored sums."""
    for i2 in range(SPLIT_LANES):
        ok = False
        for k in range(4):
            ok |= _passes(cqx[k, i2], cq2[k, i2], best)
        passes[i2] = ok


@njit(inline="always", cache=True, error_model="numpy")
def _row_terms(terms, i1):
    """The terms of _split_sums that depend on split point i1 only (C's float32 expressions)."""
    px, pw, twp, twm, txp, txm, cp1, cm1, _, _ = terms
    return (px[0, i1], px[1, i1], twp[0] + pw[0, i1] * cp1, twp[1] + pw[1, i1] * cp1,
            twm[0] + pw[0, i1] * cm1, twm[1] + pw[1, i1] * cm1, txp[0], txp[1], txm[0], txm[1])


@njit(inline="always", cache=True, error_model="numpy")
def _split_in_order(terms, cqx, cq2, cb, passes):
    """C's ordered scan of the splits (i1, i2, shift pair), with C's test and update; returns the
    kept (i1, i2, shift pair, sumqx, sumq2).

    C's test against the best b at the start of a row is done for all splits of the row at once
    (_split_row). A split that fails it fails against any best >= b (sumq2 > 0 and float32 products
    are monotone), so only the splits that pass are visited; the test is redone only when an update
    leaves the best below b (possible by rounding).
    """
    px, _, _, _, _, _, _, _, cwp, cwm = terms
    best_score = -FLT_MAX
    best_sx = F0
    best_sq = F1
    besti1 = -1
    besti2 = -1
    best_k = -1
    for i1 in range(IQ1M_SPLITS):
        b = best_score
        _split_row(_row_terms(terms, i1), px, cwp, cwm, b, cqx, cq2, cb, passes)
        for i2 in range(i1, IQ1M_SPLITS):
            if not passes[i2]:
                continue
            for k in range(4):
                sx = cqx[k, i2]
                sq = cq2[k, i2]
                if sq > F0 and sx * sx > best_score * sq:
                    best_score = cb[k, i2]
                    best_sx = sx
                    best_sq = sq
                    besti1 = i1
                    besti2 = i2
                    best_k = k
            if best_score < b:
                b = best_score
                _split_passes(cqx, cq2, b, passes)
    return besti1, besti2, best_k, best_sx, best_sq


@njit(inline="always", cache=True, error_model="numpy")
def _would_be_best(sx, sq, valid):
    """The best score C sets when this candidate wins, (sumqx/sumq2)*sumqx in float32; -inf where
    C's test cannot pass (sumq2 <= 0) or the split does not exist."""
    return (sx / sq) * sx if valid & (sq > F0) else NEG_INF


@njit(inline="always", cache=True, error_model="numpy")
def _keep_larger(sx, sq, valid, lane, src_x2, src_q, dst_x2, dst_q):
    """dst[lane] = the candidate (sumqx^2, sumq2) if its ratio is larger than that of src[lane],
    else src[lane]; compared as sumqx^2 * kept sumq2 > kept sumqx^2 * sumq2 (approximate). sumq2 is
    not tested for > 0: it is whenever the range checks of _split_by_margin pass (sumq2 >= total
    weight / 65), and in lanes past i2 = 16 (sumq2 = -inf) no candidate replaces the initial -inf."""
    x2 = sx * sx
    kept_x2 = src_x2[lane]
    kept_q = src_q[lane]
    larger = valid & (x2 * kept_q > kept_x2 * sq)
    dst_x2[lane] = x2 if larger else kept_x2
    dst_q[lane] = sq if larger else kept_q


@njit(inline="always", cache=True, error_model="numpy")
def _track_row(terms, i1, lo, hi, src_x2, src_q, dst_x2, dst_q):
    """Fold the splits (i1, i2), lo <= i2 < hi, into the lanes k*SPLIT_LANES + i2 (shift pair k):
    read from src, written to dst (one loop over i2, which LLVM vectorizes for 16 lanes). Two
    buffers, so that every store is a full one (a value stored back in place becomes a masked
    store, which the next row's loads cannot take their value from)."""
    px, _, _, _, _, _, _, _, cwp, cwm = terms
    row = _row_terms(terms, i1)
    for i2 in range(lo, hi):
        x0, q0, x1, q1, x2, q2, x3, q3 = _split_sums(row, px, cwp, cwm, i2)
        valid = i2 >= i1
        _keep_larger(x0, q0, valid, i2, src_x2, src_q, dst_x2, dst_q)
        _keep_larger(x1, q1, valid, SPLIT_LANES + i2, src_x2, src_q, dst_x2, dst_q)
        _keep_larger(x2, q2, valid, 2 * SPLIT_LANES + i2, src_x2, src_q, dst_x2, dst_q)
        _keep_larger(x3, q3, valid, 3 * SPLIT_LANES + i2, src_x2, src_q, dst_x2, dst_q)


@njit(inline="always", cache=True, error_model="numpy")
def _split_by_margin(terms, xmax, a_x2, a_q, b_x2, b_q, ratio, ratio_bits, lane_best, top, top_bits):
    """(i1, i2, shift pair) C's ordered scan of the splits ends on, found without the scan, or
    (-1, -1, -1) when that is not proven (the caller then runs the scan).

    Let m be the candidate with the largest would-be best M. If every other candidate's is below
    M*(1 - 2^-19), C's scan ends on m: m passes C's test against any smaller earlier best, and once
    the best is M every later candidate fails. The margin covers the float32 rounding of C's
    products, which the range checks keep normal and finite (derivation in docs/iquants-iq2-iq1.md).
    m is found in two steps: per lane (shift pair, i2) the approximately largest ratio
    sumqx^2/sumq2 over all i1 (cross-multiplied, no division), then the lane with the largest ratio
    r, whose splits are scored with C's would-be best. The other lanes' ratios must be below
    r*(1 - LANE_MARGIN), the lane's other splits below r*(1 - IN_LANE_MARGIN).
    """
    lanes = 4 * SPLIT_LANES
    for j in range(lanes):
        a_x2[j] = NEG_INF
        a_q[j] = F1
    # the split (0, 0), then rows 0..8 over i2 = 1..16 and rows 9..16 over i2 = 9..24 (fixed widths
    # of 16 lanes; lanes past 16 hold no split); even rows read buffer a and write b, odd rows the
    # other way round, so that all lanes end in b
    n = IQ1M_SPLITS
    _track_row(terms, 0, 0, 1, a_x2, a_q, b_x2, b_q)
    for i1 in range(0, 8, 2):
        _track_row(terms, i1, 1, n, a_x2, a_q, b_x2, b_q)
        _track_row(terms, i1 + 1, 1, n, b_x2, b_q, a_x2, a_q)
    _track_row(terms, 8, 1, n, a_x2, a_q, b_x2, b_q)
    for i1 in range(9, n, 2):
        _track_row(terms, i1, 9, n + 8, b_x2, b_q, a_x2, a_q)
        _track_row(terms, i1 + 1, 9, n + 8, a_x2, a_q, b_x2, b_q)
    # r = the largest lane ratio (int32 bit patterns order like the floats for ratios >= 0 and put
    # -inf, no candidate, below them); the only lane near r is m's
    for j in range(lanes):
        ratio[j] = b_x2[j] / b_q[j]
    largest = ratio_bits[0]
    for j in range(1, lanes):
        largest = max(largest, ratio_bits[j])
    top_bits[0] = largest
    r = top[0]
    lane_threshold = r - r * LANE_MARGIN
    count = 0
    where = 0
    for j in range(lanes):
        hit = np.int32(ratio[j] >= lane_threshold)
        count += hit
        where += hit * j
    if count != 1:
        return -1, -1, -1
    k = where // SPLIT_LANES
    i2 = where % SPLIT_LANES
    # C's would-be best of every split (i1, i2) of that lane (_split_sums for shift pair k only);
    # the only one near r is m. r is the ratio of one of the lane's candidates, so M >= r*(1 - 5
    # roundings) and below r*(1 - IN_LANE_MARGIN) is below M*(1 - 2^-19)
    px, pw, twp, twm, txp, txm, cp1, cm1, cwp, cwm = terms
    t0 = txp[0] if k < 2 else txm[0]
    t1 = txp[1] if k % 2 == 0 else txm[1]
    tw0 = twp[0] if k < 2 else twm[0]
    tw1 = twp[1] if k % 2 == 0 else twm[1]
    c0 = cp1 if k < 2 else cm1
    c1 = cp1 if k % 2 == 0 else cm1
    cw0 = cwp[0, i2] if k < 2 else cwm[0, i2]
    cw1 = cwp[1, i2] if k % 2 == 0 else cwm[1, i2]
    p0 = px[0, i2]
    p1 = px[1, i2]
    in_lane_threshold = r - r * IN_LANE_MARGIN
    count = 0
    where = 0
    for i1 in range(SPLIT_LANES):
        sx = (t0 - (px[0, i1] + p0)) + (t1 - (px[1, i1] + p1))
        sq = ((tw0 + pw[0, i1] * c0) + cw0) + ((tw1 + pw[1, i1] * c1) + cw1)
        score = _would_be_best(sx, sq, i1 <= i2)
        lane_best[i1] = score
        hit = np.int32(score >= in_lane_threshold)
        count += hit
        where += hit * i1
    best = lane_best[where]
    # the range checks: total weight, max|x| * total weight >= sum |w*x|, M
    wsum = np.float64(pw[0, IQ1M_SPLITS - 1]) + np.float64(pw[1, IQ1M_SPLITS - 1])
    in_range = ((wsum >= 2.0**-30) & (wsum <= 2.0**30) & (wsum * np.float64(xmax) <= 2.0**30)
                & (best >= np.float32(2.0**-40)) & (best <= np.float32(2.0**40)))
    if count != 1 or not in_range:
        return -1, -1, -1
    return where, i2, k


@njit(cache=True, error_model="numpy")
def _iq1m_work():
    """The work arrays of :func:`_quantize_row_iq1_m`, allocated by its row driver (the kernel only
    borrows arrays, so it is compiled without reference counting)."""
    bs = 16
    lanes = 4 * SPLIT_LANES
    ratio = np.zeros(lanes, dtype=np.float32)
    top = np.zeros(1, dtype=np.float32)
    return (np.array([-F1 + IQ1M_DELTA, IQ1M_DELTA, F1 + IQ1M_DELTA], dtype=np.float32),
            np.array([-F1 - IQ1M_DELTA, -IQ1M_DELTA, F1 - IQ1M_DELTA], dtype=np.float32),
            np.array([0x00, 0x80, 0x08, 0x88], dtype=np.int32),
            np.zeros(QK_K // bs, dtype=np.float32),  # scales
            np.zeros(QK_K // bs, dtype=np.int32),  # shifts
            np.zeros(bs, dtype=np.float32),  # weight
            np.zeros(bs, dtype=np.float32),  # xb, the 16 values at hand
            np.zeros(bs, dtype=np.int32),  # idx
            np.zeros(bs, dtype=np.int32),  # L
            (np.zeros(24, dtype=np.float32), np.zeros(81, dtype=np.float32)),  # t, t4
            np.zeros(2, dtype=np.int32),  # index
            (np.zeros((2, SPLIT_LANES), dtype=np.float32), np.zeros((2, SPLIT_LANES), dtype=np.float32),
             np.zeros(2, dtype=np.float32), np.zeros(2, dtype=np.float32),
             np.zeros(2, dtype=np.float32), np.zeros(2, dtype=np.float32),
             # padding lanes i2 > 16 get sumq2 = -inf: no split there passes C's test or is kept
             np.full((2, SPLIT_LANES), NEG_INF, dtype=np.float32),
             np.full((2, SPLIT_LANES), NEG_INF, dtype=np.float32)),  # px, pw, txp, txm, twp, twm, cwp, cwm
            (np.zeros((4, SPLIT_LANES), dtype=np.float32), np.zeros((4, SPLIT_LANES), dtype=np.float32),
             np.zeros((4, SPLIT_LANES), dtype=np.float32), np.zeros(SPLIT_LANES, dtype=np.bool_)),  # C's scan
            (np.full(lanes, NEG_INF, dtype=np.float32), np.ones(lanes, dtype=np.float32),
             np.full(lanes, NEG_INF, dtype=np.float32), np.ones(lanes, dtype=np.float32),
             ratio, ratio.view(np.int32), np.zeros(SPLIT_LANES, dtype=np.float32),
             top, top.view(np.int32)),  # _split_by_margin's buffers
            np.zeros(4, dtype=np.int32),  # sc
            np.zeros(QK_K // bs, dtype=np.int32))  # qh


@njit(cache=True, error_model="numpy", _nrt=False)
def _quantize_row_iq1_m(x, qw, has_qw, out, tabs, work):
    bs = 16
    nbl = x.shape[0] // QK_K
    x_p, x_m, masks, scales, shifts, weight, xb, idx, L, (t, t4), index, split, scan, margin, sc, qh = work
    kmap, nbr_list, levels = tabs
    px, pw, txp, txm, twp, twm, cwp, cwm = split
    cqx, cq2, cb, passes = scan
    a_x2, a_q, b_x2, b_q, ratio, ratio_bits, lane_best, top, top_bits = margin
    p2 = x_p[2]
    m2 = x_m[2]
    cp1 = x_p[0] * x_p[0] - x_p[1] * x_p[1]
    cp2 = x_p[1] * x_p[1] - x_p[2] * x_p[2]
    cm1 = x_m[0] * x_m[0] - x_m[1] * x_m[1]
    cm2 = x_m[1] * x_m[1] - x_m[2] * x_m[2]
    terms = (px, pw, twp, twm, txp, txm, cp1, cm1, cwp, cwm)  # the split search's inputs
    for ibl in range(nbl):
        o = ibl * 56
        for i in range(56):
            out[o + i] = 0
        for ib in range(QK_K // bs):
            qh[ib] = 0
        for j in range(4):
            sc[j] = 0
        max_scale = F0
        sigma2 = _sigma2(x, QK_K * ibl)
        for ib in range(QK_K // bs):
            for i in range(bs):
                xb[i] = x[QK_K * ibl + bs * ib + i]
            _iq1m_weights(xb, qw, QK_K * ibl + bs * ib, has_qw, sigma2, weight)
            vmax = np.abs(xb[0])
            for i in range(1, bs):
                a = np.abs(xb[i])
                vmax = vmax if vmax > a else a
            if vmax < GROUP_MAX_EPS_IQ1_M:
                scales[ib] = F0
                shifts[ib] = 0
                continue
            _sort_index16(xb, bs, idx)
            px[0, 0] = F0
            px[1, 0] = F0
            pw[0, 0] = F0
            pw[1, 0] = F0
            for j in range(bs):
                i = idx[j]
                h = 0 if i < bs // 2 else 1
                px[h, j + 1] = px[h, j] + weight[i] * xb[i]
                px[1 - h, j + 1] = px[1 - h, j]
                pw[h, j + 1] = pw[h, j] + weight[i]
                pw[1 - h, j + 1] = pw[1 - h, j]
            # C: for each half h, qx = txs[h]*v2 - (px[h][i1] + px[h][i2]) and
            # q2 = tws[h]*v2*v2 + pw[h][i1]*c1 + pw[h][i2]*c2 (v = x_p or x_m); the parts that depend
            # on one split point only are computed once, the rest for all i2 at a time, then the
            # candidates are compared in C's order (i1, i2, k)
            for h in range(2):
                tx = px[h, bs]
                tw = pw[h, bs]
                txp[h] = tx * p2
                txm[h] = tx * m2
                twp[h] = tw * p2 * p2
                twm[h] = tw * m2 * m2
                for i2 in range(IQ1M_SPLITS):
                    cwp[h, i2] = pw[h, i2] * cp2
                    cwm[h, i2] = pw[h, i2] * cm2
            besti1, besti2, best_k = _split_by_margin(terms, vmax, a_x2, a_q, b_x2, b_q, ratio, ratio_bits, lane_best,
                                                      top, top_bits)
            if besti1 >= 0:
                sums = _split_sums(_row_terms(terms, besti1), px, cwp, cwm, besti2)
                best_sx = sums[2 * best_k]
                best_sq = sums[2 * best_k + 1]
            else:
                besti1, besti2, best_k, best_sx, best_sq = _split_in_order(terms, cqx, cq2, cb, passes)
            if besti1 < 0 or besti2 < 0 or best_k < 0:
                scales[ib] = F0
                shifts[ib] = 0
                continue
            scale = best_sx / best_sq
            for j in range(bs):
                L[idx[j]] = 0 if j < besti1 else (1 if j < besti2 else 2)
            if scale < F0:
                for j in range(bs):
                    L[j] = 2 - L[j]
                scale = -scale
                best_k = 3 - best_k
            all_on_grid = True
            for k in range(2):
                if k == 0:
                    xx = x_p if best_k < 2 else x_m
                else:
                    xx = x_p if best_k % 2 == 0 else x_m
                u = grid_point(L, 8 * k)
                gi = kmap[u]
                if gi < 0:
                    all_on_grid = False
                    gi = _best_neighbour2(u, kmap, nbr_list, xb, weight, 8 * k, scale, xx, L, t, t4)
                index[k] = gi
            if not all_on_grid:
                sqx = F0
                sq2 = F0
                for k in range(2):
                    if k == 0:
                        xx = x_p if best_k < 2 else x_m
                    else:
                        xx = x_p if best_k % 2 == 0 else x_m
                    for j in range(8):
                        w = weight[8 * k + j]
                        q = xx[levels[index[k], j]]
                        sqx += w * q * xb[8 * k + j]
                        sq2 += w * q * q
                if sqx > F0 and sq2 > F0:
                    scale = sqx / sq2
            out[o + 2 * ib] = np.uint8(index[0] & 255)
            out[o + 2 * ib + 1] = np.uint8(index[1] & 255)
            qh[ib] = (index[0] >> 8) | ((index[1] >> 8) << 4)
            scales[ib] = scale
            shifts[ib] = best_k
            max_scale = max_scale if max_scale > scale else scale
        if max_scale == F0:  # every scale 0: C keeps the grid's high bits, and no scales or shifts
            for ib in range(QK_K // bs):
                out[o + 32 + ib] = np.uint8(qh[ib] & 255)
            continue
        d = max_scale / np.float32(15.0)
        id_ = F1 / d
        sqx = F0
        sq2 = F0
        for ib in range(QK_K // bs):
            l = nearest_int(FHALF * (id_ * scales[ib] - F1))
            l = max(0, min(7, l))
            sc[ib // 4] |= l << (3 * (ib % 4))
            qh[ib] |= masks[shifts[ib]]
            for i in range(bs):
                xb[i] = x[QK_K * ibl + bs * ib + i]
            _iq1m_weights(xb, qw, QK_K * ibl + bs * ib, has_qw, sigma2, weight)
            fl = np.float32(2 * l + 1)
            for k in range(2):
                if k == 0:
                    xx = x_p if shifts[ib] < 2 else x_m
                    g = np.int32(out[o + 2 * ib]) | ((qh[ib] << 8) & 0x700)
                else:
                    xx = x_p if shifts[ib] % 2 == 0 else x_m
                    g = np.int32(out[o + 2 * ib + 1]) | ((qh[ib] << 4) & 0x700)
                for j in range(8):
                    w = weight[8 * k + j]
                    q = xx[levels[g, j]] * fl
                    sqx += w * q * xb[8 * k + j]
                    sq2 += w * q * q
        if sq2 > F0:
            d = sqx / sq2
        s = np.int32(fp32_to_fp16_bits(d * np.float32(1.1125)))
        sc[0] |= (s & 0x000F) << 12
        sc[1] |= (s & 0x00F0) << 8
        sc[2] |= (s & 0x0F00) << 4
        sc[3] |= s & 0xF000
        for ib in range(QK_K // bs):
            out[o + 32 + ib] = np.uint8(qh[ib] & 255)
        for j in range(4):
            out[o + 48 + 2 * j] = np.uint8(sc[j] & 255)
            out[o + 49 + 2 * j] = np.uint8((sc[j] >> 8) & 255)


@njit(parallel=True, cache=True, error_model="numpy")
def _quantize_iq1_s_rows(rows, imatrix, out, tabs):
    for r in prange(rows.shape[0]):
        _quantize_row_iq1_s(rows[r], imatrix, out[r], tabs, _iq1s_work())


@njit(parallel=True, cache=True, error_model="numpy")
def _quantize_iq1_m_rows(rows, imatrix, has_imatrix, out, tabs):
    for r in prange(rows.shape[0]):
        _quantize_row_iq1_m(rows[r], imatrix, has_imatrix, out[r], tabs, _iq1m_work())


@njit(parallel=True, cache=True, error_model="numpy")
def _dequantize_iq1_s_rows(data, out, grid, fp16):
    nb = out.shape[1] // QK_K
    for r in prange(data.shape[0]):
        q = data[r]
        y = out[r]
        for i in range(nb):
            o = 50 * i
            d = fp16[np.int32(q[o]) | (np.int32(q[o + 1]) << 8)]
            for ib in range(8):
                qh = np.int32(q[o + 34 + 2 * ib]) | (np.int32(q[o + 35 + 2 * ib]) << 8)
                dl = d * np.float32(2 * ((qh >> 12) & 7) + 1)
                delta = -IQ1S_DELTA if qh & 0x8000 else IQ1S_DELTA
                for l in range(4):
                    g = np.int32(q[o + 2 + 4 * ib + l]) | (((qh >> (3 * l)) & 7) << 8)
                    for j in range(8):
                        y[QK_K * i + 32 * ib + 8 * l + j] = dl * (np.float32(grid[g, j]) + delta)


@njit(parallel=True, cache=True, error_model="numpy")
def _dequantize_iq1_m_rows(data, out, grid, fp16):
    nb = out.shape[1] // QK_K
    for r in prange(data.shape[0]):
        q = data[r]
        y = out[r]
        for i in range(nb):
            o = 56 * i
            sc0 = np.int32(q[o + 48]) | (np.int32(q[o + 49]) << 8)
            sc1 = np.int32(q[o + 50]) | (np.int32(q[o + 51]) << 8)
            sc2 = np.int32(q[o + 52]) | (np.int32(q[o + 53]) << 8)
            sc3 = np.int32(q[o + 54]) | (np.int32(q[o + 55]) << 8)
            dbits = (sc0 >> 12) | ((sc1 >> 8) & 0x00F0) | ((sc2 >> 4) & 0x0F00) | (sc3 & 0xF000)
            d = fp16[dbits]
            for ib in range(8):
                s = sc0 if ib < 2 else (sc1 if ib < 4 else (sc2 if ib < 6 else sc3))
                dl1 = d * np.float32(2 * ((s >> (6 * (ib % 2))) & 7) + 1)
                dl2 = d * np.float32(2 * ((s >> (6 * (ib % 2) + 3)) & 7) + 1)
                for l in range(4):
                    qhb = np.int32(q[o + 32 + 2 * ib + l // 2])
                    if l % 2 == 0:
                        g = np.int32(q[o + 4 * ib + l]) | ((qhb << 8) & 0x700)
                        delta = -IQ1M_DELTA if qhb & 0x08 else IQ1M_DELTA
                    else:
                        g = np.int32(q[o + 4 * ib + l]) | ((qhb << 4) & 0x700)
                        delta = -IQ1M_DELTA if qhb & 0x80 else IQ1M_DELTA
                    dl = dl1 if l < 2 else dl2
                    for j in range(8):
                        y[QK_K * i + 32 * ib + 8 * l + j] = dl * (np.float32(grid[g, j]) + delta)


# ------------------------------------------------------------------------------------------------
# Python entry points (the family-module contract)


def quantize_iq1_s(rows: np.ndarray, imatrix) -> np.ndarray:
    out = zeroed_rows("IQ1_S", rows)
    _quantize_iq1_s_rows(rows, imatrix, out, grid_tables(2048).kernel_args())
    return out


def quantize_iq1_m(rows: np.ndarray, imatrix) -> np.ndarray:
    out = zeroed_rows("IQ1_M", rows)
    _quantize_iq1_m_rows(rows, weights_or_zero(imatrix), imatrix is not None, out, grid_tables(2048).kernel_args())
    return out


def dequantize_iq1_s(data: np.ndarray, n_per_row: int) -> np.ndarray:
    return dequantize_on_grid(_dequantize_iq1_s_rows, "IQ1_S", data, n_per_row)


def dequantize_iq1_m(data: np.ndarray, n_per_row: int) -> np.ndarray:
    return dequantize_on_grid(_dequantize_iq1_m_rows, "IQ1_M", data, n_per_row)
