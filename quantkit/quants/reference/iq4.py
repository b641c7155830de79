"""Plain references of IQ4_NL (blocks of 32) and IQ4_XS (super-blocks of 256 in groups of 32):
``quantize_row_iq4_nl_impl`` as ``ggml_quantize_chunk`` calls it (ntry = 7), with or without imatrix.

Each group's 4-bit indices pick one of 16 non-linear levels (``kvalues_iq4nl``); its scale is the
best weighted fit over the start scales (itry + values[0]) / max, itry = -7..7. IQ4_XS then
stores the group scales as 6 bits against an fp16 super-scale and re-picks the indices.
"""

import numpy as np

from ..codebooks import iq4nl_values
from .common import (
    F0,
    F1,
    GROUP_MAX_EPS,
    abs_max_signed,
    best_index_int8,
    imatrix_weights,
    nearest_int,
    plain,
    put_fp16,
    put_u16,
    quantize_blocks,
    row_sigma2,
)

NTRY = 7


@plain
def _fit(xb, weight, values, inv):
    """Levels nearest to inv * x; returns (sum w*q*x, sum w*q^2) of their values q."""
    sumqx = F0
    sumq2 = F0
    for j in range(xb.size):
        q = np.float32(values[best_index_int8(values, inv * xb[j])])
        sumqx += weight[j] * q * xb[j]
        sumq2 += weight[j] * q * q
    return sumqx, sumq2


@plain
def _group_scale(xb, weight, values):
    """The scale of one group of 32 (0 when its max |x| < GROUP_MAX_EPS)."""
    mx, amax = abs_max_signed(xb)
    if amax < GROUP_MAX_EPS:
        return F0
    v0 = np.float32(values[0])
    d = -mx / v0
    sumqx, sumq2 = _fit(xb, weight, values, F1 / d)
    d = sumqx / sumq2 if sumq2 > 0 else F0
    best = d * sumqx
    for itry in range(-NTRY, NTRY + 1):
        sumqx, sumq2 = _fit(xb, weight, values, np.float32(itry + values[0]) / mx)
        if sumq2 > 0 and sumqx * sumqx > best * sumq2:
            d = sumqx / sumq2
            best = d * sumqx
    return d


@plain
def _iq4_block(xs, qw, y8, values):
    """32 values: IQ4_NL (18 bytes: d | qs[16]); 256: IQ4_XS (136 bytes: d | scales_h u16 | scales_l[4] |
    qs[128]). qs[16i + j] = L[32i + j] | L[32i + 16 + j] << 4."""
    nb = xs.size // 32
    L = np.zeros(xs.size, np.int32)
    weight = np.empty(32, np.float32)
    scales = np.empty(nb, np.float32)
    sigma2 = row_sigma2(xs) * (np.float32(2.0) / np.float32(xs.size))  # C's order
    for ib in range(nb):
        xb = xs[32 * ib:32 * ib + 32]
        if qw.size:
            imatrix_weights(xb, qw[32 * ib:32 * ib + 32], sigma2, weight)
        else:
            for j in range(32):
                weight[j] = xb[j] * xb[j]
        scales[ib] = _group_scale(xb, weight, values)
    if nb == 1:
        put_fp16(y8, 0, scales[0])
        inv = F1 / scales[0] if scales[0] != F0 else F0
        for j in range(32):
            L[j] = best_index_int8(values, inv * xs[j])
    else:
        max_scale, _ = abs_max_signed(scales)
        d = -max_scale / np.float32(32.0)
        put_fp16(y8, 0, d)
        inv = F1 / d if d != F0 else F0
        scales_h = 0
        for ib in range(nb):  # 6-bit group scale l + 32: low 4 bits in scales_l, high 2 in scales_h
            l = max(-32, min(31, nearest_int(inv * scales[ib])))
            dl = d * np.float32(l)
            idl = F1 / dl if dl != F0 else F0
            for j in range(32):
                L[32 * ib + j] = best_index_int8(values, idl * xs[32 * ib + j])
            l += 32
            if ib % 2 == 0:
                y8[4 + ib // 2] = np.uint8(l & 0xF)
            else:
                y8[4 + ib // 2] |= np.uint8((l & 0xF) << 4)
            scales_h |= (l >> 4) << (2 * ib)
        put_u16(y8, 2, scales_h)
    qs = 2 if nb == 1 else 8
    for i in range(nb):
        for j in range(16):
            y8[qs + 16 * i + j] = np.uint8(L[32 * i + j] | (L[32 * i + 16 + j] << 4))


def quantize_iq4_nl(rows, imatrix=None):
    return quantize_blocks("IQ4_NL", rows, imatrix, _iq4_block, iq4nl_values())


def quantize_iq4_xs(rows, imatrix=None):
    return quantize_blocks("IQ4_XS", rows, imatrix, _iq4_block, iq4nl_values())
