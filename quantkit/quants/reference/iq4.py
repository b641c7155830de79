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
    QK_K,
    abs_max_signed,
    best_index_int8,
    block_views,
    imatrix_weights,
    nearest_int,
    plain,
    put_fp16,
    put_u16,
    quantize_rows,
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
def _iq4_row(x, qw, y, super_block, values):
    """super_block 32: IQ4_NL (18 bytes: d | qs[16]); 256: IQ4_XS (136 bytes: d | scales_h u16 |
    scales_l[4] | qs[128]). qs[16i + j] = L[32i + j] | L[32i + 16 + j] << 4."""
    nb = super_block // 32
    block_bytes = 18 if nb == 1 else 136
    qs = 2 if nb == 1 else 8
    L = np.zeros(super_block, np.int32)
    weight = np.empty(32, np.float32)
    scales = np.empty(nb, np.float32)
    for ibl in range(x.size // super_block):
        xs, y8 = block_views(x, y, ibl, super_block, block_bytes)
        sigma2 = F0
        for v in xs:
            sigma2 += v * v
        sigma2 *= np.float32(2.0) / np.float32(super_block)
        max_scale = F0
        amax_scale = F0
        for ib in range(nb):
            xb = xs[32 * ib:32 * ib + 32]
            if qw.size:
                imatrix_weights(xb, qw[ibl * super_block + 32 * ib:ibl * super_block + 32 * ib + 32], sigma2, weight)
            else:
                for j in range(32):
                    weight[j] = xb[j] * xb[j]
            scales[ib] = _group_scale(xb, weight, values)
            if np.abs(scales[ib]) > amax_scale:
                amax_scale = np.abs(scales[ib])
                max_scale = scales[ib]
        if nb == 1:
            put_fp16(y8, 0, scales[0])
            inv = F1 / scales[0] if scales[0] != F0 else F0
            for j in range(32):
                L[j] = best_index_int8(values, inv * xs[j])
        else:
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
        for i in range(super_block // 32):
            for j in range(16):
                y8[qs + 16 * i + j] = np.uint8(L[32 * i + j] | (L[32 * i + 16 + j] << 4))


def quantize_iq4_nl(rows, imatrix=None):
    return quantize_rows("IQ4_NL", rows, imatrix, lambda x, qw, y: _iq4_row(x, qw, y, 32, iq4nl_values()))


def quantize_iq4_xs(rows, imatrix=None):
    return quantize_rows("IQ4_XS", rows, imatrix,
                         lambda x, qw, y: _iq4_row(x, qw, y, QK_K, iq4nl_values()))
