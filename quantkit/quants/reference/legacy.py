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
    imatrix_weights,
    make_qkx_quants,
    make_qx_quants,
    plain,
    put_fp16,
    put_u32,
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
def _q8_0_row(x, qw, y):
    for b in range(x.size // QK):
        xb = x[b * QK:(b + 1) * QK]
        amax = F0
        for v in xb:
            amax = max(amax, np.abs(v))
        d = amax / np.float32(127.0)
        inv = F1 / d if d != F0 else F0
        put_fp16(y, 34 * b, d)
        for j in range(QK):
            y[34 * b + 2 + j] = np.uint8(np.int32(roundf(xb[j] * inv)) & 0xFF)


@plain
def _symmetric_row(x, qw, y, nmax, block_bytes):
    """Q4_0 (nmax 8) and Q5_0 (nmax 16): d = max / -nmax, or make_qx_quants with an imatrix."""
    L = np.zeros(QK, np.int32)
    weight = np.empty(QK, np.float32)
    sigma2 = row_sigma2(x) / np.float32(x.size)
    for b in range(x.size // QK):
        xb = x[b * QK:(b + 1) * QK]
        if qw.size:
            imatrix_weights(xb, qw[b * QK:(b + 1) * QK], sigma2, weight)
            d = make_qx_quants(QK, nmax, xb, L, weight)
        else:
            amax = F0
            mx = F0
            for v in xb:
                if amax < np.abs(v):
                    amax = np.abs(v)
                    mx = v
            d = mx / np.float32(-nmax)
            inv = F1 / d if d != F0 else F0
            for j in range(QK):  # (int8)(x*id + nmax + 0.5): truncation toward zero
                L[j] = min(2 * nmax - 1, np.int32(np.int8(np.int32(xb[j] * inv + np.float32(nmax + 0.5)))))
        put_fp16(y, block_bytes * b, d)
        _put_levels(y, block_bytes * b + 2, L, nmax == 16)


@plain
def _asymmetric_row(x, qw, y, nmax, block_bytes):
    """Q4_1 (nmax 15) and Q5_1 (nmax 31): d = (max - min)/nmax, m = min, or make_qkx3_quants."""
    L = np.zeros(QK, np.int32)
    Laux = np.zeros(QK, np.int32)
    weight = np.empty(QK, np.float32)
    sigma2 = row_sigma2(x) / np.float32(x.size)
    for b in range(x.size // QK):
        xb = x[b * QK:(b + 1) * QK]
        if qw.size:
            imatrix_weights(xb, qw[b * QK:(b + 1) * QK], sigma2, weight)
            d, the_min = make_qkx_quants(QK, nmax, xb, weight, L, Laux, np.float32(-0.9), np.float32(0.05), 36, False)
            mn = -the_min
        else:
            mn = FLT_MAX
            mx = -FLT_MAX
            for v in xb:
                mn = min(mn, v)
                mx = max(mx, v)
            d = (mx - mn) / np.float32(nmax)
            inv = F1 / d if d != F0 else F0
            for j in range(QK):  # (uint8)((x - min)*id + 0.5); Q4_1 also caps at 15
                L[j] = min(nmax if nmax == 15 else 255, np.int32((xb[j] - mn) * inv + np.float32(0.5)) & 0xFF)
        put_fp16(y, block_bytes * b, d)
        put_fp16(y, block_bytes * b + 2, mn)
        _put_levels(y, block_bytes * b + 4, L, nmax == 31)


def quantize_q8_0(rows, imatrix=None):
    return quantize_rows("Q8_0", rows, None, _q8_0_row)


def quantize_q4_0(rows, imatrix=None):
    return quantize_rows("Q4_0", rows, imatrix, lambda x, qw, y: _symmetric_row(x, qw, y, 8, 18))


def quantize_q5_0(rows, imatrix=None):
    return quantize_rows("Q5_0", rows, imatrix, lambda x, qw, y: _symmetric_row(x, qw, y, 16, 22))


def quantize_q4_1(rows, imatrix=None):
    return quantize_rows("Q4_1", rows, imatrix, lambda x, qw, y: _asymmetric_row(x, qw, y, 15, 20))


def quantize_q5_1(rows, imatrix=None):
    return quantize_rows("Q5_1", rows, imatrix, lambda x, qw, y: _asymmetric_row(x, qw, y, 31, 24))
