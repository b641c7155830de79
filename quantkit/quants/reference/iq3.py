"""Plain references of IQ3_XXS and IQ3_S (``quantize_row_iq3_xxs_impl`` / ``quantize_row_iq3_s_impl``).

Per sub-block of 32: split off the signs (IQ3_XXS keeps an even count of minus signs, flipping
the least important value), then try scales (15 + 0.2*is)/max, is = -15..15 (IQ3_XXS) or -9..9
(IQ3_S): each group of 4 gets 3-bit levels; a group that is no grid point goes to its best
neighbour (``iq3xs_init_impl``'s tables, built in ``quants/iq3.py``). The best weighted fit wins;
off-grid groups are then snapped again at that scale. Sub-block scales become 4 bits against an
fp16 super-scale. Layouts: ``quants/iq3.py`` (including IQ3_S's all-zero sub-block quirk).
"""

import numpy as np

from ..iq3 import neighbour_tables
from .common import F0, F1, QK_K, imatrix_weights, nearest_int, plain, put_fp16, put_u32, quantize_rows, row_sigma2

FLT_MAX = np.float32(3.4028234663852886e38)


@plain
def _best_neighbour(levels, neighbours, start, xval, waux, scale, L):
    """``iq3_find_best_neighbour``: of the grid entries listed at ``start``, the one nearest to xval
    (weights waux) at ``scale``; writes its levels to L and returns its index."""
    best_d2 = FLT_MAX
    grid_index = -1
    for j in range(1, neighbours[start] + 1):
        g = neighbours[start + j]
        d2 = F0
        for i in range(4):
            diff = scale * np.float32(2 * levels[g, i] + 1) - xval[i]
            d2 += waux[i] * diff * diff
        if d2 < best_d2:
            best_d2 = d2
            grid_index = g
    for i in range(4):
        L[i] = levels[grid_index, i]
    return grid_index


@plain
def _code(L):
    """The kmap key of 4 levels: sum L[i] << 3i."""
    return L[0] | (L[1] << 3) | (L[2] << 6) | (L[3] << 9)


@plain
def _snap(xval, waux, inv, scale, L, levels, kmap, neighbours):
    """Levels of one group of 4 at inverse scale ``inv``; off-grid: the best neighbour at ``scale``.
    Returns whether the rounded point was on the grid."""
    for i in range(4):
        L[i] = max(0, min(7, nearest_int(np.float32(0.5) * (inv * xval[i] - F1))))
    if kmap[_code(L)] >= 0:
        return True
    _best_neighbour(levels, neighbours, -kmap[_code(L)] - 1, xval, waux, scale, L)
    return False


@plain
def _fit(weight, xval, L):
    """(sum w*x*q, sum w*q^2) for grid values q = 2L + 1."""
    sumqx = F0
    sumq2 = F0
    for i in range(32):
        q = np.float32(2 * L[i] + 1)
        sumqx += weight[i] * xval[i] * q
        sumq2 += weight[i] * q * q
    return sumqx, sumq2


@plain
def _subblock_scale(xval, weight, waux, mx, L, nsteps, xxs, levels, kmap, neighbours):
    """The scale search of one sub-block of 32 (levels into L); nsteps 15 for IQ3_XXS, 9 for IQ3_S."""
    Laux = np.zeros(32, np.int32)
    on_grid = np.full(8, xxs)
    on_grid_aux = np.zeros(8, np.bool_)
    best = F0
    scale = mx / np.float32(15.0)
    for step in range(-nsteps, nsteps + 1):
        inv = (np.float32(15.0) + np.float32(step) * np.float32(0.2)) / mx
        for k in range(8):
            on_grid_aux[k] = _snap(xval[4 * k:], waux[4 * k:], inv, F1 / inv, Laux[4 * k:], levels, kmap, neighbours)
        sumqx, sumq2 = _fit(weight, xval, Laux)
        if sumq2 > 0 and sumqx * sumqx > best * sumq2:
            scale = sumqx / sumq2
            best = scale * sumqx
            L[:] = Laux
            on_grid[:] = on_grid_aux
    if not on_grid.all() and scale > 0:
        for k in range(8):  # IQ3_XXS re-snaps the off-grid groups only, IQ3_S all of them
            if xxs and on_grid[k]:
                continue
            _snap(xval[4 * k:], waux[4 * k:], F1 / scale, scale, L[4 * k:], levels, kmap, neighbours)
        sumqx, sumq2 = _fit(weight, xval, L)
        if sumq2 > 0:
            scale = sumqx / sumq2
    return scale


@plain
def _prepare(xb, qw, sigma2, weight, waux, xval):
    """Weights (imatrix-based or x^2), their square roots, and |x| (C's ``x >= 0 ? x : -x``)."""
    if qw.size:
        imatrix_weights(xb, qw, sigma2, weight)
    else:
        for i in range(32):
            weight[i] = xb[i] * xb[i]
    for i in range(32):
        waux[i] = np.sqrt(weight[i])
        xval[i] = xb[i] if xb[i] >= 0 else -xb[i]


@plain
def _max(xval):
    """C's ``max = MAX(max, xval[i])`` loop."""
    mx = xval[0]
    for i in range(1, 32):
        mx = mx if mx > xval[i] else xval[i]
    return mx


@plain
def _iq3_xxs_row(x, qw, y, levels, kmap, neighbours):
    """IQ3_XXS (98 bytes): d | qs[64] grid indices | 8 x u32 (4 x 7 sign bits, 4-bit scale << 28)."""
    weight = np.empty(32, np.float32)
    waux = np.empty(32, np.float32)
    xval = np.empty(32, np.float32)
    L = np.zeros(32, np.int32)
    scales = np.zeros(8, np.float32)
    signs_and_scales = np.zeros(8, np.uint32)
    signs = np.zeros(4, np.int64)
    for ibl in range(x.size // QK_K):
        xs = x[ibl * QK_K:(ibl + 1) * QK_K]
        y8 = y[ibl * 98:(ibl + 1) * 98]
        y8[:] = 0
        signs_and_scales[:] = 0
        sigma2 = np.float32(2.0) * row_sigma2(xs) / np.float32(QK_K)
        max_scale = F0
        for ib in range(8):
            xb = xs[32 * ib:32 * ib + 32]
            _prepare(xb, qw[ibl * QK_K + 32 * ib:ibl * QK_K + 32 * ib + 32] if qw.size else qw, sigma2, weight, waux,
                     xval)
            for k in range(4):  # 7 stored signs per 8: an odd count flips the least important value
                s = 0
                for i in range(8):
                    if xb[8 * k + i] < 0:
                        s |= 1 << i
                nflip = 0
                for i in range(8):
                    nflip += (s >> i) & 1
                if nflip % 2:
                    imin = 0
                    least = weight[8 * k] * xb[8 * k] * xb[8 * k]
                    for i in range(1, 8):
                        ax = weight[8 * k + i] * xb[8 * k + i] * xb[8 * k + i]
                        if ax < least:
                            least = ax
                            imin = i
                    xval[8 * k + imin] = -xval[8 * k + imin]
                    s ^= 1 << imin
                signs[k] = s & 127
            mx = _max(xval)
            L[:] = 0
            if mx < np.float32(1e-8):  # GROUP_MAX_EPS_IQ3_XXS
                scales[ib] = F0
                continue
            scale = _subblock_scale(xval, weight, waux, mx, L, 15, True, levels, kmap, neighbours)
            if scale < 0:
                scale = -scale
                for k in range(4):
                    signs[k] = ~signs[k] & 127
            for k in range(8):
                y8[2 + 8 * ib + k] = np.uint8(kmap[_code(L[4 * k:])] & 0xFF)
            signs_and_scales[ib] = np.uint32(signs[0] | (signs[1] << 7) | (signs[2] << 14) | (signs[3] << 21))
            scales[ib] = scale
            max_scale = max(max_scale, scale)
        if max_scale == F0:
            y8[:] = 0
            continue
        d = max_scale / np.float32(31.0)
        put_fp16(y8, 0, d * np.float32(1.0125))
        inv = F1 / d
        for ib in range(8):
            l = max(0, min(15, nearest_int(np.float32(0.5) * (inv * scales[ib] - F1))))
            put_u32(y8, 66 + 4 * ib, signs_and_scales[ib] | np.uint32(l << 28))


@plain
def _iq3_s_row(x, qw, y, levels, kmap, neighbours):
    """IQ3_S (110 bytes): d | qs[64] (low 8 index bits) | qh[8] (9th bits) | signs[32] | scales[4]."""
    weight = np.empty(32, np.float32)
    waux = np.empty(32, np.float32)
    xval = np.empty(32, np.float32)
    L = np.zeros(32, np.int32)
    scales = np.zeros(8, np.float32)
    for ibl in range(x.size // QK_K):
        xs = x[ibl * QK_K:(ibl + 1) * QK_K]
        y8 = y[ibl * 110:(ibl + 1) * 110]
        y8[:] = 0
        qs = 2
        signs = 74
        sigma2 = np.float32(2.0) * row_sigma2(xs) / np.float32(QK_K)
        max_scale = F0
        for ib in range(8):
            xb = xs[32 * ib:32 * ib + 32]
            _prepare(xb, qw[ibl * QK_K + 32 * ib:ibl * QK_K + 32 * ib + 32] if qw.size else qw, sigma2, weight, waux,
                     xval)
            mx = _max(xval)
            L[:] = 0
            if mx == F0:  # qs and signs do not advance: later sub-blocks are stored one slot early
                scales[ib] = F0
                continue
            scale = _subblock_scale(xval, weight, waux, mx, L, 9, False, levels, kmap, neighbours)
            flip = 0
            if scale < 0:
                scale = -scale
                flip = 0xFF
            for k in range(8):
                grid_index = kmap[_code(L[4 * k:])]
                y8[qs + k] = np.uint8(grid_index & 255)
                y8[66 + ib] |= np.uint8((grid_index >> 8) << k)
            qs += 8
            for k in range(4):
                s = 0
                for i in range(8):
                    if xb[8 * k + i] < 0:
                        s |= 1 << i
                y8[signs + k] = np.uint8(s ^ flip)
            signs += 4
            scales[ib] = scale
            max_scale = max(max_scale, scale)
        if max_scale == F0:
            continue
        d = max_scale / np.float32(31.0)
        put_fp16(y8, 0, d * np.float32(1.033))
        inv = F1 / d
        for ib in range(0, 8, 2):
            l1 = max(0, min(15, nearest_int(np.float32(0.5) * (inv * scales[ib] - F1))))
            l2 = max(0, min(15, nearest_int(np.float32(0.5) * (inv * scales[ib + 1] - F1))))
            y8[106 + ib // 2] = np.uint8(l1 | (l2 << 4))


def quantize_iq3_xxs(rows, imatrix=None):
    tables = neighbour_tables("IQ3_XXS")
    return quantize_rows(rows, imatrix, rows.shape[1] // QK_K * 98, lambda x, qw, y: _iq3_xxs_row(x, qw, y, *tables))


def quantize_iq3_s(rows, imatrix=None):
    tables = neighbour_tables("IQ3_S")
    return quantize_rows(rows, imatrix, rows.shape[1] // QK_K * 110, lambda x, qw, y: _iq3_s_row(x, qw, y, *tables))
