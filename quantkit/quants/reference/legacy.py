"""Plain references of Q8_0, Q4_0, Q4_1, Q5_0, Q5_1 (blocks of 32; layouts in ``quants/legacy.py``).

Without an imatrix: ``quantize_row_*_ref`` (scale from the block's max). With one:
``quantize_row_*_impl``, weights ``qw[j] * sqrt(sigma2 + x[j]^2)`` with sigma2 the row's mean
square, then ``make_qx_quants`` (Q4_0, Q5_0) or ``make_qkx3_quants`` (Q4_1, Q5_1). Q8_0 ignores it.
"""

import numpy as np

from .common import (
    F0,
    F1,
    FLT_MAX,
    abs_max_signed,
    imatrix_weights,
    make_qkx_quants,
    make_qx_quants,
    plain,
    put_fp16,
    put_u32,
    quantize_blocks,
    quantize_rows,
    roundf,
    row_sigma2,
)

QK = 32


@plain
def _put_levels(y, pos, L, five_bits):
    """qs[j] = L[j] | L[j+16] << 4 at ``pos`` (after a 4-byte qh of the 5th bits when ``five_bits``)."""
    if five_bits:
        qh = 0
        for j in range(QK):
            qh |= ((L[j] >> 4) & 1) << j
        put_u32(y, pos, qh)
        pos += 4
    for j in range(QK // 2):
        y[pos + j] = np.uint8((L[j] & 0x0F) | ((L[j + 16] & 0x0F) << 4))


@plain
def _q8_0_block(xb, qw, y8):
    """Q8_0 (34 bytes): d = max|x| / 127 | qs[32] = roundf(x / d)."""
    amax = F0
    for v in xb:
        amax = max(amax, np.abs(v))
    d = amax / np.float32(127.0)
    inv = F1 / d if d != F0 else F0
    put_fp16(y8, 0, d)
    for j in range(QK):
        y8[2 + j] = np.uint8(np.int32(roundf(xb[j] * inv)) & 0xFF)


@plain
def _symmetric_block(xb, weight, L, nmax):
    """Q4_0, Q5_0: make_qx_quants with imatrix weights, else d = max / -nmax; returns d."""
    if weight.size:
        return make_qx_quants(QK, nmax, xb, L, weight)
    mx, _ = abs_max_signed(xb)
    d = mx / np.float32(-nmax)
    inv = F1 / d if d != F0 else F0
    for j in range(QK):  # (int8)(x*id + nmax + 0.5): truncation toward zero
        L[j] = min(2 * nmax - 1, np.int32(np.int8(np.int32(xb[j] * inv + np.float32(nmax + 0.5)))))
    return d


@plain
def _asymmetric_block(xb, weight, L, nmax):
    """Q4_1, Q5_1: make_qkx3_quants with imatrix weights, else d = (max - min)/nmax; returns (d, min)."""
    if weight.size:
        d, the_min = make_qkx_quants(QK, nmax, xb, weight, L, np.zeros(QK, np.int32), np.float32(-0.9),
                                     np.float32(0.05), 36, False)
        return d, -the_min
    mn = FLT_MAX
    mx = -FLT_MAX
    for v in xb:
        mn = min(mn, v)
        mx = max(mx, v)
    d = (mx - mn) / np.float32(nmax)
    inv = F1 / d if d != F0 else F0
    for j in range(QK):  # (uint8)((x - min)*id + 0.5); Q4_1 also caps at 15
        L[j] = min(nmax if nmax == 15 else 255, np.int32((xb[j] - mn) * inv + np.float32(0.5)) & 0xFF)
    return d, mn


@plain
def _row(x, qw, y, nmax, with_min):
    """Q4_0 (nmax 8), Q5_0 (16): d | qs; Q4_1 (15), Q5_1 (31): d | m | qs (a 4-byte qh first in qs for
    5 bits). With an imatrix, weights qw * sqrt(sigma2 + x^2), sigma2 the row's mean square."""
    five_bits = nmax in (16, 31)
    block_bytes = (4 if with_min else 2) + (4 if five_bits else 0) + QK // 2
    L = np.zeros(QK, np.int32)
    weight = np.empty(QK if qw.size else 0, np.float32)
    sigma2 = row_sigma2(x) / np.float32(x.size)
    for b in range(x.size // QK):
        xb = x[b * QK:(b + 1) * QK]
        yb = y[b * block_bytes:(b + 1) * block_bytes]
        if qw.size:
            imatrix_weights(xb, qw[b * QK:(b + 1) * QK], sigma2, weight)
        if with_min:
            d, mn = _asymmetric_block(xb, weight, L, nmax)
            put_fp16(yb, 2, mn)
        else:
            d = _symmetric_block(xb, weight, L, nmax)
        put_fp16(yb, 0, d)
        _put_levels(yb, 4 if with_min else 2, L, five_bits)


def quantize_q8_0(rows, imatrix=None):
    return quantize_blocks("Q8_0", rows, None, _q8_0_block)


def quantize_q4_0(rows, imatrix=None):
    return quantize_rows("Q4_0", rows, imatrix, lambda x, qw, y: _row(x, qw, y, 8, False))


def quantize_q5_0(rows, imatrix=None):
    return quantize_rows("Q5_0", rows, imatrix, lambda x, qw, y: _row(x, qw, y, 16, False))


def quantize_q4_1(rows, imatrix=None):
    return quantize_rows("Q4_1", rows, imatrix, lambda x, qw, y: _row(x, qw, y, 15, True))


def quantize_q5_1(rows, imatrix=None):
    return quantize_rows("Q5_1", rows, imatrix, lambda x, qw, y: _row(x, qw, y, 31, True))
