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

from ..errors import ImatrixError
from .codebooks import grid as codebook
from .iq2 import F0, F1, FHALF, FLT_MAX, QK_K, grid_tables, nearest_int
from .numeric import FP16_TO_FP32, fp32_to_fp16_bits

IQ1S_DELTA = np.float32(0.125)
IQ1M_DELTA = np.float32(0.125)
GROUP_MAX_EPS_IQ1_S = np.float32(1e-12)
GROUP_MAX_EPS_IQ1_M = np.float32(1e-7)


# ------------------------------------------------------------------------------------------------
# Numba kernels


@njit(cache=True)
def _sort_index(xb, n, idx):
    """idx = positions of xb[0:n] in ascending order, ties in index order (glibc's stable qsort)."""
    for j in range(n):
        v = xb[j]
        p = j
        while p > 0 and xb[idx[p - 1]] > v:
            idx[p] = idx[p - 1]
            p -= 1
        idx[p] = j


@njit(cache=True)
def _best_neighbour2(u, nbr_start, nbr_count, nbr, levels, xval, weight, off, scale, xg, L):
    """iq1_find_best_neighbour2: the neighbour of point ``u`` minimizing sum w*(scale*xg[l] - x)^2."""
    s = nbr_start[u]
    best = FLT_MAX
    gi = -1
    for j in range(nbr_count[u]):
        g = nbr[s + j]
        d2 = F0
        for i in range(8):
            q = xg[levels[g, i]]
            w = weight[off + i]
            diff = scale * q - xval[off + i]
            d2 += w * diff * diff
        if d2 < best:
            best = d2
            gi = g
    if gi < 0:  # only with non-finite distances (llama.cpp then scans the whole grid, reading past x)
        gi = nbr[s]
    for i in range(8):
        L[off + i] = levels[gi, i]
    return gi


@njit(cache=True)
def _point(L, off):
    u = 0
    for i in range(8):
        u |= np.int32(L[off + i]) << (2 * i)
    return u


@njit(cache=True)
def _sigma2(xbl):
    sumx2 = F0
    for i in range(QK_K):
        sumx2 += xbl[i] * xbl[i]
    return np.float32(2.0) * sumx2 / np.float32(QK_K)


@njit(cache=True)
def _quantize_row_iq1_s(x, qw, out, kmap, nbr_start, nbr_count, nbr, levels):
    bs = 32
    nbl = x.shape[0] // QK_K
    x_p = np.array([-F1 + IQ1S_DELTA, IQ1S_DELTA, F1 + IQ1S_DELTA], dtype=np.float32)
    x_m = np.array([-F1 - IQ1S_DELTA, -IQ1S_DELTA, F1 - IQ1S_DELTA], dtype=np.float32)
    scales = np.zeros(QK_K // bs, dtype=np.float32)
    shifts = np.zeros(QK_K // bs, dtype=np.int32)
    weight = np.zeros(bs, dtype=np.float32)
    sumx = np.zeros(bs + 1, dtype=np.float32)
    sumw = np.zeros(bs + 1, dtype=np.float32)
    idx = np.zeros(bs, dtype=np.int32)
    L = np.zeros(bs, dtype=np.int32)
    index = np.zeros(bs // 8, dtype=np.int32)
    qh = np.zeros(QK_K // bs, dtype=np.int32)
    for ibl in range(nbl):
        o = ibl * 50
        for i in range(50):
            out[o + i] = 0
        qh[:] = 0
        max_scale = F0
        xbl = x[QK_K * ibl:QK_K * (ibl + 1)]
        sigma2 = _sigma2(xbl)
        for ib in range(QK_K // bs):
            xb = xbl[bs * ib:bs * ib + bs]
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
            _sort_index(xb, bs, idx)
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
            for i1 in range(bs + 1):
                for i2 in range(i1, bs + 1):
                    a0 = sumx[i1] - sumx[0]
                    a1 = sumx[i2] - sumx[i1]
                    a2 = sumx[bs] - sumx[i2]
                    b0 = sumw[i1] - sumw[0]
                    b1 = sumw[i2] - sumw[i1]
                    b2 = sumw[bs] - sumw[i2]
                    sumqx = a0 * x_p[0] + a1 * x_p[1] + a2 * x_p[2]
                    sumq2 = b0 * x_p[0] * x_p[0] + b1 * x_p[1] * x_p[1] + b2 * x_p[2] * x_p[2]
                    if sumq2 > F0 and sumqx * sumqx > best_score * sumq2:
                        scale = sumqx / sumq2
                        best_score = scale * sumqx
                        besti1 = i1
                        besti2 = i2
                        best_shift = 1
                    sumqx = a0 * x_m[0] + a1 * x_m[1] + a2 * x_m[2]
                    sumq2 = b0 * x_m[0] * x_m[0] + b1 * x_m[1] * x_m[1] + b2 * x_m[2] * x_m[2]
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
                u = _point(L, 8 * k)
                gi = kmap[u]
                if gi < 0:
                    all_on_grid = False
                    gi = _best_neighbour2(u, nbr_start, nbr_count, nbr, levels, xb, weight, 8 * k, scale, xx, L)
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
        if max_scale == F0:
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


@njit(cache=True)
def _iq1m_weights(xb, qw, off, has_qw, sigma2, weight):
    if has_qw:
        for i in range(16):
            weight[i] = qw[off + i] * np.sqrt(sigma2 + xb[i] * xb[i])
    else:
        for i in range(16):
            weight[i] = xb[i] * xb[i]


@njit(cache=True)
def _quantize_row_iq1_m(x, qw, has_qw, out, kmap, nbr_start, nbr_count, nbr, levels):
    bs = 16
    nbl = x.shape[0] // QK_K
    x_p = np.array([-F1 + IQ1M_DELTA, IQ1M_DELTA, F1 + IQ1M_DELTA], dtype=np.float32)
    x_m = np.array([-F1 - IQ1M_DELTA, -IQ1M_DELTA, F1 - IQ1M_DELTA], dtype=np.float32)
    masks = np.array([0x00, 0x80, 0x08, 0x88], dtype=np.int32)
    scales = np.zeros(QK_K // bs, dtype=np.float32)
    shifts = np.zeros(QK_K // bs, dtype=np.int32)
    weight = np.zeros(bs, dtype=np.float32)
    idx = np.zeros(bs, dtype=np.int32)
    L = np.zeros(bs, dtype=np.int32)
    index = np.zeros(2, dtype=np.int32)
    px = np.zeros((2, bs + 1), dtype=np.float32)
    pw = np.zeros((2, bs + 1), dtype=np.float32)
    sumqx = np.zeros(4, dtype=np.float32)
    sumq2 = np.zeros(4, dtype=np.float32)
    qx_p = np.zeros(2, dtype=np.float32)
    qx_m = np.zeros(2, dtype=np.float32)
    q2_p = np.zeros(2, dtype=np.float32)
    q2_m = np.zeros(2, dtype=np.float32)
    sc = np.zeros(4, dtype=np.int32)
    qh = np.zeros(QK_K // bs, dtype=np.int32)
    p2 = x_p[2]
    m2 = x_m[2]
    cp1 = x_p[0] * x_p[0] - x_p[1] * x_p[1]
    cp2 = x_p[1] * x_p[1] - x_p[2] * x_p[2]
    cm1 = x_m[0] * x_m[0] - x_m[1] * x_m[1]
    cm2 = x_m[1] * x_m[1] - x_m[2] * x_m[2]
    for ibl in range(nbl):
        o = ibl * 56
        for i in range(56):
            out[o + i] = 0
        qh[:] = 0
        sc[:] = 0
        max_scale = F0
        xbl = x[QK_K * ibl:QK_K * (ibl + 1)]
        sigma2 = _sigma2(xbl)
        for ib in range(QK_K // bs):
            xb = xbl[bs * ib:bs * ib + bs]
            _iq1m_weights(xb, qw, QK_K * ibl + bs * ib, has_qw, sigma2, weight)
            vmax = np.abs(xb[0])
            for i in range(1, bs):
                a = np.abs(xb[i])
                vmax = vmax if vmax > a else a
            if vmax < GROUP_MAX_EPS_IQ1_M:
                scales[ib] = F0
                shifts[ib] = 0
                continue
            _sort_index(xb, bs, idx)
            best_score = -FLT_MAX
            scale = vmax
            besti1 = -1
            besti2 = -1
            best_k = -1
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
            txs0 = px[0, bs]
            txs1 = px[1, bs]
            tws0 = pw[0, bs]
            tws1 = pw[1, bs]
            for i1 in range(bs + 1):
                for i2 in range(i1, bs + 1):
                    for h in range(2):
                        txs = txs0 if h == 0 else txs1
                        tws = tws0 if h == 0 else tws1
                        sx = px[h, i1] + px[h, i2]
                        qx_p[h] = txs * p2 - sx
                        qx_m[h] = txs * m2 - sx
                        q2_p[h] = tws * p2 * p2 + pw[h, i1] * cp1 + pw[h, i2] * cp2
                        q2_m[h] = tws * m2 * m2 + pw[h, i1] * cm1 + pw[h, i2] * cm2
                    sumqx[0] = qx_p[0] + qx_p[1]
                    sumqx[1] = qx_p[0] + qx_m[1]
                    sumqx[2] = qx_m[0] + qx_p[1]
                    sumqx[3] = qx_m[0] + qx_m[1]
                    sumq2[0] = q2_p[0] + q2_p[1]
                    sumq2[1] = q2_p[0] + q2_m[1]
                    sumq2[2] = q2_m[0] + q2_p[1]
                    sumq2[3] = q2_m[0] + q2_m[1]
                    for k in range(4):
                        if sumq2[k] > F0 and sumqx[k] * sumqx[k] > best_score * sumq2[k]:
                            scale = sumqx[k] / sumq2[k]
                            best_score = scale * sumqx[k]
                            besti1 = i1
                            besti2 = i2
                            best_k = k
            if besti1 < 0 or besti2 < 0 or best_k < 0:
                scales[ib] = F0
                shifts[ib] = 0
                continue
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
                u = _point(L, 8 * k)
                gi = kmap[u]
                if gi < 0:
                    all_on_grid = False
                    gi = _best_neighbour2(u, nbr_start, nbr_count, nbr, levels, xb, weight, 8 * k, scale, xx, L)
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
        if max_scale == F0:
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
            xb = xbl[bs * ib:bs * ib + bs]
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


@njit(parallel=True, cache=True)
def _quantize_iq1_s_rows(rows, imatrix, out, kmap, nbr_start, nbr_count, nbr, levels):
    for r in prange(rows.shape[0]):
        _quantize_row_iq1_s(rows[r], imatrix, out[r], kmap, nbr_start, nbr_count, nbr, levels)


@njit(parallel=True, cache=True)
def _quantize_iq1_m_rows(rows, imatrix, has_imatrix, out, kmap, nbr_start, nbr_count, nbr, levels):
    for r in prange(rows.shape[0]):
        _quantize_row_iq1_m(rows[r], imatrix, has_imatrix, out[r], kmap, nbr_start, nbr_count, nbr, levels)


@njit(parallel=True, cache=True)
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


@njit(parallel=True, cache=True)
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


def quantize_rows(qt, rows: np.ndarray, imatrix) -> np.ndarray:
    """ggml_quantize_chunk for IQ1_S / IQ1_M of float32 rows (n_per_row % 256 == 0)."""
    nrows, n_per_row = rows.shape
    out = np.zeros((nrows, qt.row_bytes(n_per_row)), dtype=np.uint8)
    name = qt.name
    if name == "IQ1_S" and imatrix is None:
        raise ImatrixError("IQ1_S needs an importance matrix; pass imatrix= (quantkit imatrix makes one)")
    qw = np.zeros(1, dtype=np.float32) if imatrix is None else np.ascontiguousarray(imatrix, dtype=np.float32)
    t = grid_tables(2048)
    tabs = (t.kmap, t.nbr_start, t.nbr_count, t.nbr, t.levels)
    if name == "IQ1_S":
        _quantize_iq1_s_rows(rows, qw, out, *tabs)
    elif name == "IQ1_M":
        _quantize_iq1_m_rows(rows, qw, imatrix is not None, out, *tabs)
    else:
        raise ValueError(f"iq1 does not implement {name}")
    return out


def dequantize_rows(qt, data: np.ndarray, n_per_row: int) -> np.ndarray:
    """dequantize_row_iq1_s / _m of uint8 rows."""
    out = np.empty((data.shape[0], n_per_row), dtype=np.float32)
    data = np.ascontiguousarray(data)
    grid = codebook(qt.name).astype(np.int32)
    if qt.name == "IQ1_S":
        _dequantize_iq1_s_rows(data, out, grid, FP16_TO_FP32)
    elif qt.name == "IQ1_M":
        _dequantize_iq1_m_rows(data, out, grid, FP16_TO_FP32)
    else:
        raise ValueError(f"iq1 does not implement {qt.name}")
    return out
