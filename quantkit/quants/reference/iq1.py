"""Plain references of IQ1_S and IQ1_M (``quantize_row_iq1_s_impl`` / ``quantize_row_iq1_m_impl``).

Per sub-block (32 values for IQ1_S, 16 for IQ1_M): sort the values, and try every pair of split
points (i1, i2) that puts the sorted values on levels -1/0/+1, shifted by +-IQ1S_DELTA (one shift
per sub-block for IQ1_S, one per half for IQ1_M); prefix sums make each split's weighted fit
O(1). Each group of 8 levels is then looked up in the 2048-entry grid (``iq2xs_init_impl``'s
tables, as for IQ2), an off-grid group taking its best neighour, and the scale is refitted.
Sub-block scales are 3 bits. Layouts: ``quants/iq1.py`` and docs/iquants-iq2-iq1.md.
"""

import numpy as np

from .common import (
    F0,
    F1,
    FLT_MAX,
    block_sigma2,
    fp32_to_fp16_bits,
    imatrix_weights,
    iq2_grid_tables,
    lattice_code,
    nearest_int,
    plain,
    put_fp16,
    put_u16,
    quantize_blocks,
)

DELTA = np.float32(0.125)  # IQ1S_DELTA == IQ1M_DELTA


@plain
def _sub_block(xs, qw, ib, n, sigma2, weight):
    """Sub-block ib of n values and its max |x|; its weights into ``weight``: qw * sqrtf(sigma2 + x^2)
    with an imatrix, else x^2 (IQ1_M only: IQ1_S requires one)."""
    xb = xs[n * ib:n * (ib + 1)]
    if qw.size:
        imatrix_weights(xb, qw[n * ib:n * (ib + 1)], sigma2, weight)
    else:
        for i in range(n):
            weight[i] = xb[i] * xb[i]
    mx = np.abs(xb[0])
    for i in range(1, n):
        mx = max(np.abs(xb[i]), mx)
    return xb, mx


@plain
def _split_levels(idx, i1, i2, scale, L):
    """Sorted positions below i1 get level 0 (-1), below i2 level 1 (0), the rest level 2 (+1); for a
    negative scale the levels are mirrored (2 - level). Returns whether they were."""
    for j in range(idx.size):
        L[idx[j]] = 0 if j < i1 else (1 if j < i2 else 2)
        if scale < 0:
            L[idx[j]] = 2 - L[idx[j]]
    return scale < 0


@plain
def _best_neighbour2(levels, neighbours, start, xb, weight, scale, xx, L):
    """``iq1_find_best_neighbour2``: the listed entry with the least sum w*(scale*xx[level] - x)^2.
    (C's fallback scan of the whole grid, reached only when no distance is < FLT_MAX, is left out.)"""
    best_score = FLT_MAX
    grid_index = -1
    for j in range(1, np.int64(neighbours[start]) + 1):
        g = np.int64(neighbours[start + j])
        d2 = F0
        for i in range(8):
            diff = scale * xx[levels[g, i]] - xb[i]
            d2 += weight[i] * diff * diff
        if d2 < best_score:
            best_score = d2
            grid_index = g
    if grid_index < 0:
        raise ValueError("IQ1 reference: no grid neighbour at a finite distance")
    for i in range(8):
        L[i] = levels[grid_index, i]
    return grid_index


@plain
def _grid_index(L, xb, weight, scale, xx, levels, kmap, neighbours):
    """(entry, on grid) for one group of 8 levels."""
    u = lattice_code(L, 8)
    if kmap[u] >= 0:
        return kmap[u], True
    return _best_neighbour2(levels, neighbours, -kmap[u] - 1, xb, weight, scale, xx, L), False


@plain
def _accumulate_fit(sumqx, sumq2, xb, weight, levels, g, xx, mult):
    """The running sums w*q*x and w*q^2 over one more group of 8, q = xx[level of entry g] * mult."""
    for j in range(8):
        q = xx[levels[g, j]] * mult
        sumqx += weight[j] * q * xb[j]
        sumq2 += weight[j] * q * q
    return sumqx, sumq2


@plain
def _snap_groups(L, xb, weight, scale, group_shifts, x_p, x_m, levels, kmap, neighbours, index):
    """The grid entry of each group of 8 levels into ``index`` (group k's values x_p or x_m by the sign
    of group_shifts[k]; an off-grid group takes its best neighbour at ``scale``). If one was off the
    grid, returns the refitted scale, else ``scale``."""
    all_on_grid = True
    for k in range(index.size):
        xx = x_p if group_shifts[k] > 0 else x_m
        index[k], on_grid = _grid_index(L[8 * k:], xb[8 * k:], weight[8 * k:], scale, xx, levels, kmap, neighbours)
        all_on_grid = all_on_grid and on_grid
    if all_on_grid:
        return scale
    sumqx = F0
    sumq2 = F0
    for k in range(index.size):
        xx = x_p if group_shifts[k] > 0 else x_m
        sumqx, sumq2 = _accumulate_fit(sumqx, sumq2, xb[8 * k:], weight[8 * k:], levels, index[k], xx, F1)
    return sumqx / sumq2 if sumqx > 0 and sumq2 > 0 else scale


@plain
def _half_shifts(k):
    """IQ1_M's shifts of the two halves of a sub-block, by k: 0 (+, +), 1 (+, -), 2 (-, +), 3 (-, -)."""
    return np.array([1 if k < 2 else -1, 1 if k % 2 == 0 else -1])


@plain
def _iq1_s_block(xs, qw, y8, levels, kmap, neighbours):
    """IQ1_S (50 bytes): d | qs[32] low index bits | qh[8] u16: 3 high bits per group, 3-bit scale << 12, shift sign << 15."""
    x_p = np.array([-F1 + DELTA, DELTA, F1 + DELTA], np.float32)
    x_m = np.array([-F1 - DELTA, -DELTA, F1 - DELTA], np.float32)
    weight = np.empty(32, np.float32)
    sumx = np.zeros(33, np.float32)
    sumw = np.zeros(33, np.float32)
    L = np.zeros(32, np.int32)
    index = np.zeros(4, np.int64)
    scales = np.zeros(8, np.float32)
    shifts = np.ones(8, np.int64)  # +1 for a skipped sub-block
    qh = np.zeros(8, np.int64)
    sigma2 = block_sigma2(xs, np.float32(2.0))
    for ib in range(8):
        xb, mx = _sub_block(xs, qw, ib, 32, sigma2, weight)
        if mx < np.float32(1e-12):  # GROUP_MAX_EPS_IQ1_S
            continue
        idx = np.argsort(xb, kind="mergesort")  # glibc's qsort here is stable
        for j in range(32):
            sumx[j + 1] = sumx[j] + weight[idx[j]] * xb[idx[j]]
            sumw[j + 1] = sumw[j] + weight[idx[j]]
        best_score = -FLT_MAX
        scale = mx
        besti1 = -1
        besti2 = -1
        best_shift = 0
        for i1 in range(33):
            for i2 in range(i1, 33):
                for shift in (1, -1):
                    xx = x_p if shift == 1 else x_m
                    sumqx = (sumx[i1] - sumx[0]) * xx[0] + (sumx[i2] - sumx[i1]) * xx[1] + (sumx[32] - sumx[i2]) * xx[2]
                    sumq2 = ((sumw[i1] - sumw[0]) * xx[0] * xx[0] + (sumw[i2] - sumw[i1]) * xx[1] * xx[1]
                             + (sumw[32] - sumw[i2]) * xx[2] * xx[2])
                    if sumq2 > 0 and sumqx * sumqx > best_score * sumq2:
                        scale = sumqx / sumq2
                        best_score = scale * sumqx
                        besti1 = i1
                        besti2 = i2
                        best_shift = shift
        if besti1 < 0 or besti2 < 0 or best_shift == 0:
            continue
        if _split_levels(idx, besti1, besti2, scale, L):
            scale, best_shift = -scale, -best_shift
        scale = _snap_groups(L, xb, weight, scale, np.full(4, best_shift), x_p, x_m, levels, kmap, neighbours, index)
        for k in range(4):
            y8[2 + 4 * ib + k] = np.uint8(index[k] & 255)
            qh[ib] |= (index[k] >> 8) << (3 * k)
        scales[ib] = scale
        shifts[ib] = best_shift
    max_scale = scales.max()
    if max_scale != F0:
        d = max_scale / np.float32(15.0)
        put_fp16(y8, 0, d * np.float32(1.125))
        for ib in range(8):
            l = max(0, min(7, nearest_int(np.float32(0.5) * (F1 / d * scales[ib] - F1))))
            if shifts[ib] == -1:
                l |= 8
            qh[ib] |= l << 12
    for ib in range(8):
        put_u16(y8, 34 + 2 * ib, qh[ib])


@plain
def _split_terms(xx):
    """(x2, c1, c2) = (xx[2], xx[0]^2 - xx[1]^2, xx[1]^2 - xx[2]^2): a split (i1, i2) of a half with
    prefix sums pw and total tw has sum q^2 = tw*x2^2 + pw[i1]*c1 + pw[i2]*c2."""
    return xx[2], xx[0] * xx[0] - xx[1] * xx[1], xx[1] * xx[1] - xx[2] * xx[2]


@plain
def _iq1_m_block(xs, qw, y8, levels, kmap, neighbours):
    """IQ1_M (56 bytes): qs[32] low index bits | qh[16] (3 high bits and a shift bit per group) |
    scales: 4 u16, 3-bit sub-block scales in bits 0-11, the fp16 super-scale's 4 nibbles in bits 12-15."""
    x_p = np.array([-F1 + DELTA, DELTA, F1 + DELTA], np.float32)
    x_m = np.array([-F1 - DELTA, -DELTA, F1 - DELTA], np.float32)
    masks = (0x00, 0x80, 0x08, 0x88)  # shift bits of the two halves, by best_k
    weight = np.empty(16, np.float32)
    px = np.zeros((2, 17), np.float32)
    pw = np.zeros((2, 17), np.float32)
    txs = np.zeros(2, np.float32)
    tws = np.zeros(2, np.float32)
    qx_p = np.zeros(2, np.float32)
    qx_m = np.zeros(2, np.float32)
    q2_p = np.zeros(2, np.float32)
    q2_m = np.zeros(2, np.float32)
    sumqx = np.zeros(4, np.float32)
    sumq2 = np.zeros(4, np.float32)
    L = np.zeros(16, np.int32)
    index = np.zeros(2, np.int64)
    scales = np.zeros(16, np.float32)
    shifts = np.zeros(16, np.int64)
    sc = np.zeros(4, np.int64)
    p2, cp1, cp2 = _split_terms(x_p)
    m2, cm1, cm2 = _split_terms(x_m)
    sigma2 = block_sigma2(xs, np.float32(2.0))
    for ib in range(16):
        xb, mx = _sub_block(xs, qw, ib, 16, sigma2, weight)
        if mx < np.float32(1e-7):  # GROUP_MAX_EPS_IQ1_M
            continue
        idx = np.argsort(xb, kind="mergesort")
        for j in range(16):  # prefix sums per half (each half has its own shift)
            i = idx[j]
            h = 0 if i < 8 else 1
            px[h, j + 1] = px[h, j] + weight[i] * xb[i]
            px[1 - h, j + 1] = px[1 - h, j]
            pw[h, j + 1] = pw[h, j] + weight[i]
            pw[1 - h, j + 1] = pw[1 - h, j]
        for h in range(2):
            txs[h] = px[h, 16]
            tws[h] = pw[h, 16]
        best_score = -FLT_MAX
        scale = mx
        besti1 = -1
        besti2 = -1
        best_k = -1
        for i1 in range(17):
            for i2 in range(i1, 17):
                for h in range(2):
                    sx = px[h, i1] + px[h, i2]
                    qx_p[h] = txs[h] * p2 - sx
                    qx_m[h] = txs[h] * m2 - sx
                    q2_p[h] = tws[h] * p2 * p2 + pw[h, i1] * cp1 + pw[h, i2] * cp2
                    q2_m[h] = tws[h] * m2 * m2 + pw[h, i1] * cm1 + pw[h, i2] * cm2
                # k = 0..3: the halves' shifts (_half_shifts)
                sumqx[0] = qx_p[0] + qx_p[1]
                sumqx[1] = qx_p[0] + qx_m[1]
                sumqx[2] = qx_m[0] + qx_p[1]
                sumqx[3] = qx_m[0] + qx_m[1]
                sumq2[0] = q2_p[0] + q2_p[1]
                sumq2[1] = q2_p[0] + q2_m[1]
                sumq2[2] = q2_m[0] + q2_p[1]
                sumq2[3] = q2_m[0] + q2_m[1]
                for k in range(4):
                    if sumq2[k] > 0 and sumqx[k] * sumqx[k] > best_score * sumq2[k]:
                        scale = sumqx[k] / sumq2[k]
                        best_score = scale * sumqx[k]
                        besti1 = i1
                        besti2 = i2
                        best_k = k
        if besti1 < 0 or besti2 < 0 or best_k < 0:
            continue
        if _split_levels(idx, besti1, besti2, scale, L):
            scale, best_k = -scale, 3 - best_k
        scale = _snap_groups(L, xb, weight, scale, _half_shifts(best_k), x_p, x_m, levels, kmap, neighbours, index)
        y8[2 * ib] = np.uint8(index[0] & 255)
        y8[2 * ib + 1] = np.uint8(index[1] & 255)
        y8[32 + ib] = np.uint8((index[0] >> 8) | ((index[1] >> 8) << 4))
        scales[ib] = scale
        shifts[ib] = best_k
    max_scale = scales.max()
    if max_scale == F0:
        return
    d = max_scale / np.float32(15.0)
    inv = F1 / d
    sumqx_f = F0
    sumq2_f = F0
    for ib in range(16):  # the super-scale: a weighted fit over the stored entries and sub-block scales
        l = max(0, min(7, nearest_int(np.float32(0.5) * (inv * scales[ib] - F1))))
        sc[ib // 4] |= l << (3 * (ib % 4))
        y8[32 + ib] |= np.uint8(masks[shifts[ib]])
        xb, _ = _sub_block(xs, qw, ib, 16, sigma2, weight)
        half_shifts = _half_shifts(shifts[ib])
        for k in range(2):
            xx = x_p if half_shifts[k] > 0 else x_m
            g = np.int64(y8[2 * ib + k]) + ((np.int64(y8[32 + ib]) << (8 - 4 * k)) & 0x700)
            sumqx_f, sumq2_f = _accumulate_fit(sumqx_f, sumq2_f, xb[8 * k:], weight[8 * k:], levels, g, xx,
                                               np.float32(2 * l + 1))
    if sumq2_f > 0:
        d = sumqx_f / sumq2_f
    s = np.int64(fp32_to_fp16_bits(d * np.float32(1.1125)))
    for i in range(4):  # the fp16 super-scale's nibble i in bits 12-15 of sc[i]
        put_u16(y8, 48 + 2 * i, sc[i] | (((s >> (4 * i)) & 0xF) << 12))


def quantize_iq1_s(rows, imatrix):
    return quantize_blocks("IQ1_S", rows, imatrix, _iq1_s_block, *iq2_grid_tables(2048))


def quantize_iq1_m(rows, imatrix=None):
    return quantize_blocks("IQ1_M", rows, imatrix, _iq1_m_block, *iq2_grid_tables(2048))
