"""Plain references of IQ2_XXS, IQ2_XS and IQ2_S (``quantize_row_iq2_*_impl``).

Per sub-block (32 values for IQ2_XXS, 16 for IQ2_XS/IQ2_S): split off the signs (7 stored per 8
and an even count for IQ2_XXS/IQ2_XS, all 8 for IQ2_S), then ``lattice_search`` (common.py) over
groups of 8 two-bit levels on the 256/512/1024-entry grid (``iq2xs_init_impl``'s tables, built in
``quants/iq2.py``). IQ2_XXS starts from a ``make_qp_quants`` scale. Sub-block scales become 4 bits
against an fp16 super-scale. Layouts: ``quants/iq2.py`` and docs/iquants-iq2-iq1.md.
"""

import numpy as np

from .common import (
    F0, F1, GROUP_MAX_EPS, block_sigma2, group_signs, first_max, flip_signs, iq2_grid_tables, lattice_code, lattice_prepare,
    lattice_search, make_qp_quants, plain, put_u16, put_u32, quantize_blocks, scale_nibble, super_scale,
)


@plain
def _iq2_xxs_block(xs, qw, y8, levels, kmap, neighbours):
    """IQ2_XXS (66 bytes): d | per sub-block of 32: u32 of 4 grid indices, u32 of 4 x 7 signs | scale << 28."""
    L = np.zeros(32, np.int32)
    Lqp = np.zeros(32, np.uint8)
    scales = np.zeros(8, np.float32)
    q2 = np.zeros(16, np.uint32)
    sigma2 = block_sigma2(xs, F1)
    for ib in range(8):
        xb, weight, waux, xval = lattice_prepare(xs, qw, ib, 32, sigma2, F0)
        signs = group_signs(xb, weight, xval, True)
        if first_max(xval) < GROUP_MAX_EPS:
            continue
        scale = make_qp_quants(32, 4, xval, Lqp, weight)
        eff_max = scale * np.float32(3.0)
        if eff_max <= 0:
            continue
        scale = lattice_search(xval, weight, waux, L, eff_max, scale, 6, np.float32(0.1), 2, levels, kmap, neighbours)
        if scale < 0:
            scale = -scale
            flip_signs(signs, 4, 127)
        for k in range(4):
            q2[2 * ib] |= np.uint32(kmap[lattice_code(L[8 * k:], 8)] << (8 * k))
            q2[2 * ib + 1] |= np.uint32(signs[k] << (7 * k))
        scales[ib] = scale
    max_scale = scales.max()
    d = super_scale(y8, max_scale, F1, False)
    if max_scale == F0:
        return
    for ib in range(8):
        q2[2 * ib + 1] |= np.uint32(scale_nibble(F1 / d, scales[ib]) << 28)
    for j in range(16):
        put_u32(y8, 2 + 4 * j, q2[j])


@plain
def _iq2_xs_s_block(xs, qw, y8, levels, kmap, neighbours):
    """Sub-blocks of 16. IQ2_XS (74 bytes, grid of 512): d | qs[32] u16 (index | 7 signs << 9) | scales[8].
    IQ2_S (82 bytes, grid of 1024): d | qs[32] low index bits | signs[32] | qh[8] (2 high bits each) | scales[8]."""
    xs_type = levels.shape[0] == 512
    L = np.zeros(16, np.int32)
    scales = np.zeros(16, np.float32)
    sigma2 = block_sigma2(xs, F1 if xs_type else np.float32(2.0))
    for ib in range(16):
        # without an imatrix (IQ2_S only): weights 0.25*sigma2 + x^2
        xb, weight, waux, xval = lattice_prepare(xs, qw, ib, 16, sigma2, np.float32(0.25) * sigma2)
        signs = group_signs(xb, weight, xval, xs_type)
        mx = first_max(xval)
        L[:] = 0
        if mx < (GROUP_MAX_EPS if xs_type else np.float32(1e-8)):
            continue
        scale = lattice_search(xval, weight, waux, L, mx, mx / np.float32(5.0), 9, np.float32(0.1), 0,
                               levels, kmap, neighbours)
        if scale < 0:
            scale = -scale
            flip_signs(signs, 2, 127 if xs_type else 255)
        for k in range(2):
            grid_index = kmap[lattice_code(L[8 * k:], 8)]
            i8 = 2 * ib + k
            if xs_type:
                put_u16(y8, 2 + 2 * i8, grid_index | (signs[k] << 9))
            else:
                y8[2 + i8] = np.uint8(grid_index & 255)
                y8[66 + i8 // 4] |= np.uint8((grid_index >> 8) << (2 * (i8 % 4)))
                y8[2 + 32 + i8] = np.uint8(signs[k])
        scales[ib] = scale
    max_scale = scales.max()
    d = super_scale(y8, max_scale, F1 if xs_type else np.float32(0.9875), True)
    if max_scale == F0:
        return
    for ib in range(0, 16, 2):
        y8[y8.size - 8 + ib // 2] = np.uint8(scale_nibble(F1 / d, scales[ib]) | (scale_nibble(F1 / d, scales[ib + 1]) << 4))


def quantize_iq2_xxs(rows, imatrix):
    return quantize_blocks("IQ2_XXS", rows, imatrix, _iq2_xxs_block, *iq2_grid_tables(256))


def quantize_iq2_xs(rows, imatrix):
    return quantize_blocks("IQ2_XS", rows, imatrix, _iq2_xs_s_block, *iq2_grid_tables(512))


def quantize_iq2_s(rows, imatrix=None):
    return quantize_blocks("IQ2_S", rows, imatrix, _iq2_xs_s_block, *iq2_grid_tables(1024))
