"""Plain references of IQ3_XXS and IQ3_S (``quantize_row_iq3_xxs_impl`` / ``quantize_row_iq3_s_impl``).

Per sub-block of 32: split off the signs (IQ3_XXS keeps an even count of minus signs), then
``lattice_search`` (common.py) over groups of 4 three-bit levels on the 256/512-entry grid
(``iq3xs_init_impl``'s tables, built in ``quants/iq3.py``). Sub-block scales become 4 bits
against an fp16 super-scale. Layouts: ``quants/iq3.py`` (including IQ3_S's all-zero sub-block quirk).
"""

import numpy as np

from ..iq3 import neighbour_tables
from .common import (
    F0, F1, block_sigma2, group_signs, first_max, flip_signs, lattice_code, lattice_prepare, lattice_search, plain, put_u32,
    quantize_blocks, scale_nibble, super_scale,
)


@plain
def _iq3_xxs_block(xs, qw, y8, levels, kmap, neighbours):
    """IQ3_XXS (98 bytes): d | qs[64] grid indices | 8 x u32 (4 x 7 sign bits, 4-bit scale << 28)."""
    L = np.zeros(32, np.int32)
    scales = np.zeros(8, np.float32)
    signs_and_scales = np.zeros(8, np.uint32)
    sigma2 = block_sigma2(xs, np.float32(2.0))
    for ib in range(8):
        xb, weight, waux, xval = lattice_prepare(xs, qw, ib, 32, sigma2, F0)
        signs = group_signs(xb, weight, xval, True)
        mx = first_max(xval)
        L[:] = 0
        if mx < np.float32(1e-8):  # GROUP_MAX_EPS_IQ3_XXS
            continue
        scale = lattice_search(xval, weight, waux, L, mx, mx / np.float32(15.0), 15, np.float32(0.2), 0,
                               levels, kmap, neighbours)
        if scale < 0:
            scale = -scale
            flip_signs(signs, 4, 127)
        for k in range(8):
            y8[2 + 8 * ib + k] = np.uint8(kmap[lattice_code(L[4 * k:], 4)] & 0xFF)
        signs_and_scales[ib] = np.uint32(signs[0] | (signs[1] << 7) | (signs[2] << 14) | (signs[3] << 21))
        scales[ib] = scale
    max_scale = scales.max()
    d = super_scale(y8, max_scale, np.float32(1.0125), True)  # C's fudge factor
    if max_scale == F0:
        return
    for ib in range(8):
        put_u32(y8, 66 + 4 * ib, signs_and_scales[ib] | np.uint32(scale_nibble(F1 / d, scales[ib]) << 28))


@plain
def _iq3_s_block(xs, qw, y8, levels, kmap, neighbours):
    """IQ3_S (110 bytes): d | qs[64] (low 8 index bits) | qh[8] (9th bits) | signs[32] | scales[4]."""
    L = np.zeros(32, np.int32)
    scales = np.zeros(8, np.float32)
    qs = 2
    signs_at = 74
    sigma2 = block_sigma2(xs, np.float32(2.0))
    for ib in range(8):
        xb, weight, waux, xval = lattice_prepare(xs, qw, ib, 32, sigma2, F0)
        mx = first_max(xval)
        L[:] = 0
        if mx == F0:  # qs and signs do not advance: later sub-blocks are stored one slot early
            continue
        scale = lattice_search(xval, weight, waux, L, mx, mx / np.float32(15.0), 9, np.float32(0.2), 1,
                               levels, kmap, neighbours)
        flip = 0
        if scale < 0:
            scale = -scale
            flip = 0xFF
        for k in range(8):
            grid_index = kmap[lattice_code(L[4 * k:], 4)]
            y8[qs + k] = np.uint8(grid_index & 255)
            y8[66 + ib] |= np.uint8((grid_index >> 8) << k)
        qs += 8
        for k, s in enumerate(group_signs(xb, weight, xval, False)):
            y8[signs_at + k] = np.uint8(s ^ flip)
        signs_at += 4
        scales[ib] = scale
    max_scale = scales.max()
    d = super_scale(y8, max_scale, np.float32(1.033), False)
    if max_scale == F0:
        return
    for ib in range(0, 8, 2):
        y8[106 + ib // 2] = np.uint8(scale_nibble(F1 / d, scales[ib]) | (scale_nibble(F1 / d, scales[ib + 1]) << 4))


def quantize_iq3_xxs(rows, imatrix=None):
    return quantize_blocks("IQ3_XXS", rows, imatrix, _iq3_xxs_block, *neighbour_tables("IQ3_XXS"))


def quantize_iq3_s(rows, imatrix=None):
    return quantize_blocks("IQ3_S", rows, imatrix, _iq3_s_block, *neighbour_tables("IQ3_S"))
