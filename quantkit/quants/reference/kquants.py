"""Plain references of the k-quants Q2_K..Q6_K: super-blocks of 256 in groups of 16 or 32.

Without an imatrix: ``quantize_row_q*_K_ref``; with one: ``quantize_row_q*_K_impl``. Either way
each group gets a scale (and a min, Q2_K/Q4_K/Q5_K) by a search, the group scales are quantized
to 4/6/8 bits against one fp16 super-scale, and the levels are recomputed from the stored scales.
Byte layouts: see ``quants/kquants.py`` and llama.cpp's ``block_q*_K``.
"""

import numpy as np

from .common import (
    F0, F1, GROUP_MAX_EPS, QK_K, block_sigma2, imatrix_weights, make_q3_quants, make_qkx_quants, make_qp_quants,
    make_qx_quants, nearest_int, plain, put_fp16, quantize_blocks, row_sigma2,
)


@plain
def _imatrix_groups(xs, qw, factor, n):
    """The ``*_impl`` weights of each group of n values (sigma2 = factor * mean x^2 of the block) and their sums."""
    sigma2 = block_sigma2(xs, factor)
    weights = np.empty((xs.size // n, n), np.float32)
    sums = np.empty(xs.size // n, np.float32)
    for j in range(xs.size // n):
        sums[j] = imatrix_weights(xs[n * j:n * (j + 1)], qw[n * j:n * (j + 1)], sigma2, weights[j])
    return weights, sums


@plain
def _scales_mins(xs, weights, n, nmax, L, rmin, rdelta, nstep, use_mad):
    """make_qkx_quants on each group of n values (levels into L): their (scales, mins)."""
    scales = np.empty(xs.size // n, np.float32)
    mins = np.empty(xs.size // n, np.float32)
    Laux = np.zeros(n, np.int32)
    for j in range(xs.size // n):
        scales[j], mins[j] = make_qkx_quants(n, nmax, xs[n * j:], weights[j], L[n * j:], Laux, rmin, rdelta, nstep,
                                             use_mad)
    return scales, mins


@plain
def _abs_weights(xs, n, with_rms):
    """The ``*_ref`` weights: |x|, plus the group's rms sqrt(sum x^2 / n) when ``with_rms`` (Q4_K, Q5_K)."""
    weights = np.empty((xs.size // n, n), np.float32)
    for j in range(xs.size // n):
        xg = xs[n * j:n * (j + 1)]
        av_x = np.sqrt(row_sigma2(xg) / np.float32(n)) if with_rms else F0
        for i in range(n):
            weights[j, i] = av_x + np.abs(xg[i])
    return weights


@plain
def _pack_2bit(L, y, pos):
    """qs[32c + l] = L[128c + l] | L[128c + l + 32] << 2 | ... << 4 | ... << 6 (Q2_K, Q3_K)."""
    for j in range(0, QK_K, 128):
        for l in range(32):
            y[pos + j // 4 + l] = np.uint8(L[j + l] | (L[j + l + 32] << 2) | (L[j + l + 64] << 4) | (L[j + l + 96] << 6))


@plain
def _q2_K_block(xs, qw, y8):
    """Q2_K (84 bytes): scales[16] (low nibble scale, high nibble min) | qs[64] | d | dmin."""
    L = np.zeros(QK_K, np.int32)
    Ls = np.zeros(16, np.uint8)
    Lm = np.zeros(16, np.uint8)
    q4scale = np.float32(15.0)
    if qw.size:  # quantize_row_q2_K_impl
        weights, sw = _imatrix_groups(xs, qw, F1, 16)
        scales, mins = _scales_mins(xs, weights, 16, 3, L, np.float32(-0.9), np.float32(0.05), 36, False)
        dm = make_qp_quants(16, 15, scales, Ls, sw)
        mm = make_qp_quants(16, 15, mins, Lm, sw)
        for j in range(16):
            y8[j] = np.uint8(Ls[j] | (Lm[j] << 4))
    else:  # quantize_row_q2_K_ref
        scales, mins = _scales_mins(xs, _abs_weights(xs, 16, False), 16, 3, L, np.float32(-0.5), np.float32(0.1), 15,
                                    True)
        max_scale = max(F0, scales.max())
        max_min = max(F0, mins.max())
        dm = F0
        mm = F0
        if max_scale > 0:
            iscale = q4scale / max_scale
            for j in range(16):
                y8[j] = np.uint8(nearest_int(iscale * scales[j]) & 0xFF)
            dm = max_scale / q4scale
        if max_min > 0:
            iscale = q4scale / max_min
            for j in range(16):
                y8[j] |= np.uint8((nearest_int(iscale * mins[j]) << 4) & 0xFF)
            mm = max_min / q4scale
    dm = put_fp16(y8, 80, dm)
    mm = put_fp16(y8, 82, mm)
    for j in range(16):  # levels again, from the stored scales and mins
        d = dm * np.float32(np.int64(y8[j]) & 0xF)
        if d == F0:
            continue
        m = mm * np.float32(np.int64(y8[j]) >> 4)
        for ii in range(16):
            L[16 * j + ii] = max(0, min(3, nearest_int((xs[16 * j + ii] + m) / d)))
    _pack_2bit(L, y8, 16)


@plain
def _q3_K_block(xs, qw, y8):
    """Q3_K (110 bytes): hmask[32] (3rd bit) | qs[64] (low 2 bits) | scales[12] (16 x 6 bits) | d."""
    L = np.zeros(QK_K, np.int32)
    scales = np.empty(16, np.float32)
    Ls = np.zeros(16, np.int32)
    if qw.size:  # quantize_row_q3_K_impl: 6-bit scales by make_qx_quants on the 16 group scales
        weights, sw = _imatrix_groups(xs, qw, np.float32(2.0), 16)
        for j in range(16):
            scales[j] = make_qx_quants(16, 4, xs[16 * j:], L[16 * j:], weights[j])
        d_block = make_qx_quants(16, 32, scales, Ls, sw)
    else:  # quantize_row_q3_K_ref: 6-bit scales against the largest-magnitude group scale
        max_scale = F0
        amax = F0
        for j in range(16):
            scales[j] = make_q3_quants(16, 4, xs[16 * j:], L[16 * j:])
            if np.abs(scales[j]) > amax:
                amax = np.abs(scales[j])
                max_scale = scales[j]
        d_block = F0
        Ls[:] = 0  # all-zero scales bytes, as C's memset
        if max_scale != F0:
            iscale = np.float32(-32.0) / max_scale
            for j in range(16):
                Ls[j] = max(-32, min(31, np.int32(np.int8(nearest_int(iscale * scales[j]))))) + 32
            d_block = F1 / iscale
    for j in range(16):  # low nibbles in scales[0:8], top 2 bits in scales[8:12]
        l = Ls[j]
        if j < 8:
            y8[96 + j] = np.uint8(l & 0xF)
        else:
            y8[96 + j - 8] |= np.uint8((l & 0xF) << 4)
        y8[96 + 8 + j % 4] |= np.uint8((l >> 4) << (2 * (j // 4)))
    d_all = put_fp16(y8, 108, d_block)
    for j in range(16):
        packed = np.int64(y8[96 + j]) & 0xF if j < 8 else np.int64(y8[96 + j - 8]) >> 4
        sc = (packed | (((np.int64(y8[96 + 8 + j % 4]) >> (2 * (j // 4))) & 3) << 4)) - 32
        d = d_all * np.float32(sc)
        if d == F0:
            continue
        for ii in range(16):
            L[16 * j + ii] = max(-4, min(3, nearest_int(xs[16 * j + ii] / d))) + 4
    m = 0
    hm = 1
    for j in range(QK_K):  # the 3rd bit of level j goes to hmask[j % 32], bit j // 32
        if L[j] > 3:
            y8[m] |= np.uint8(hm)
            L[j] -= 4
        m += 1
        if m == 32:
            m = 0
            hm <<= 1
    _pack_2bit(L, y8, 32)


@plain
def _put_scales_k4(y, pos, Ls, Lm):
    """Eight 6-bit scales and mins in 12 bytes (llama.cpp's ``get_scale_min_k4`` reads them)."""
    for j in range(8):
        ls = Ls[j]
        lm = Lm[j]
        if j < 4:
            y[pos + j] = np.uint8(ls)
            y[pos + j + 4] = np.uint8(lm)
        else:
            y[pos + j + 4] = np.uint8((ls & 0xF) | ((lm & 0xF) << 4))
            y[pos + j - 4] |= np.uint8((ls >> 4) << 6)
            y[pos + j] |= np.uint8((lm >> 4) << 6)


@plain
def _get_scale_min_k4(j, y, pos):
    q = y[pos:pos + 12].astype(np.int64)
    if j < 4:
        return q[j] & 63, q[j + 4] & 63
    return (q[j + 4] & 0xF) | ((q[j - 4] >> 6) << 4), (q[j + 4] >> 4) | ((q[j] >> 6) << 4)


@plain
def _q4_5_K_block(xs, qw, y8, nmax):
    """Q4_K (nmax 15, 144 bytes: d | dmin | scales[12] | qs[128]) and
    Q5_K (nmax 31, 176 bytes: d | dmin | scales[12] | qh[32] | qs[128]): 8 groups of 32, scale and min each."""
    L = np.zeros(QK_K, np.int32)
    Ls = np.zeros(8, np.uint8)
    Lm = np.zeros(8, np.uint8)
    if qw.size:  # quantize_row_q{4,5}_K_impl: make_qkx3_quants, then make_qp_quants on scales and mins
        weights, sw = _imatrix_groups(xs, qw, np.float32(2.0), 32)
        scales, mins = _scales_mins(xs, weights, 32, nmax, L, np.float32(-0.9), np.float32(0.05), 36, False)
        d_block = make_qp_quants(8, 63, scales, Ls, sw)
        m_block = make_qp_quants(8, 63, mins, Lm, sw)
    else:  # quantize_row_q{4,5}_K_ref: make_qkx2_quants with weights av_x + |x|, 6 bits against the max
        rmin, nstep = (np.float32(-1.0), 20) if nmax == 15 else (np.float32(-0.5), 15)
        scales, mins = _scales_mins(xs, _abs_weights(xs, 32, True), 32, nmax, L, rmin, np.float32(0.1), nstep, False)
        max_scale = max(F0, scales.max())
        max_min = max(F0, mins.max())
        inv_scale = np.float32(63.0) / max_scale if max_scale > 0 else F0
        inv_min = np.float32(63.0) / max_min if max_min > 0 else F0
        for j in range(8):  # (uint8_t)nearest_int(...), then MIN(63, ...)
            Ls[j] = min(63, nearest_int(inv_scale * scales[j]) & 0xFF)
            Lm[j] = min(63, nearest_int(inv_min * mins[j]) & 0xFF)
        d_block = max_scale / np.float32(63.0)
        m_block = max_min / np.float32(63.0)
    _put_scales_k4(y8, 4, Ls, Lm)
    d_all = put_fp16(y8, 0, d_block)
    m_all = put_fp16(y8, 2, m_block)
    for j in range(8):
        sc, m = _get_scale_min_k4(j, y8, 4)
        d = d_all * np.float32(sc)
        if d == F0:
            continue
        dm = m_all * np.float32(m)
        for ii in range(32):
            L[32 * j + ii] = max(0, min(nmax, nearest_int((xs[32 * j + ii] + dm) / d)))
    qs = 16 if nmax == 15 else 48
    for n in range(0, QK_K, 64):  # qs: L[n + j] in the low nibble, L[n + j + 32] in the high one
        for j in range(32):
            l1 = L[n + j]
            l2 = L[n + j + 32]
            if nmax == 31:  # qh[j]: 5th bits, 2 per 64 values
                if l1 > 15:
                    l1 -= 16
                    y8[16 + j] |= np.uint8(1 << (n // 32))
                if l2 > 15:
                    l2 -= 16
                    y8[16 + j] |= np.uint8(2 << (n // 32))
            y8[qs + n // 2 + j] = np.uint8(l1 | (l2 << 4))


@plain
def _q6_K_block(xs, qw, y8):
    """Q6_K (210 bytes): ql[128] (low 4 bits) | qh[64] (high 2 bits) | scales[16] int8 | d.
    The imatrix, when given, is make_qx_quants' weights directly (no sigma2 term)."""
    L = np.zeros(QK_K, np.int32)
    scales = np.empty(16, np.float32)
    max_scale = F0
    max_abs_scale = F0
    for ib in range(16):
        qw_group = qw[16 * ib:16 * ib + 16]
        scales[ib] = make_qx_quants(16, 32, xs[16 * ib:], L[16 * ib:], qw_group)
        if np.abs(scales[ib]) > max_abs_scale:
            max_abs_scale = np.abs(scales[ib])
            max_scale = scales[ib]
    if max_abs_scale < GROUP_MAX_EPS:
        return  # an all-zero block
    iscale = np.float32(-128.0) / max_scale
    d_all = put_fp16(y8, 208, F1 / iscale)
    for ib in range(16):
        y8[192 + ib] = np.uint8(min(127, nearest_int(iscale * scales[ib])) & 0xFF)
    for j in range(16):
        d = d_all * np.float32(np.int8(y8[192 + j]))
        if d == F0:
            continue
        for ii in range(16):
            L[16 * j + ii] = max(-32, min(31, nearest_int(xs[16 * j + ii] / d))) + 32
    for j in range(0, QK_K, 128):
        for l in range(32):
            ql = j // 2 + l
            y8[ql] = np.uint8((L[j + l] & 0xF) | ((L[j + l + 64] & 0xF) << 4))
            y8[ql + 32] = np.uint8((L[j + l + 32] & 0xF) | ((L[j + l + 96] & 0xF) << 4))
            y8[128 + j // 4 + l] = np.uint8((L[j + l] >> 4) | ((L[j + l + 32] >> 4) << 2)
                                            | ((L[j + l + 64] >> 4) << 4) | ((L[j + l + 96] >> 4) << 6))


def quantize_q2_k(rows, imatrix=None):
    return quantize_blocks("Q2_K", rows, imatrix, _q2_K_block)


def quantize_q3_k(rows, imatrix=None):
    return quantize_blocks("Q3_K", rows, imatrix, _q3_K_block)


def quantize_q4_k(rows, imatrix=None):
    return quantize_blocks("Q4_K", rows, imatrix, _q4_5_K_block, 15)


def quantize_q5_k(rows, imatrix=None):
    return quantize_blocks("Q5_K", rows, imatrix, _q4_5_K_block, 31)


def quantize_q6_k(rows, imatrix=None):
    return quantize_blocks("Q6_K", rows, imatrix, _q6_K_block)
