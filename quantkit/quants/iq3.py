"""IQ3_XXS and IQ3_S: groups of 4 magnitudes from a 256- or 512-entry grid, signs apart.

Block layouts (256 weights, little-endian, as llama.cpp's ``block_iq3_xxs`` / ``block_iq3_s``):

- IQ3_XXS, 98 bytes: ``d`` (fp16) | ``qs[64]`` (one grid index per group of 4) |
  8 x u32 ``scales_and_signs``: for each sub-block of 32, four 7-bit sign patterns (the 8th sign
  of each 8 is implied by even parity, see ``ksigns_iq2xs``) and a 4-bit scale in bits 28-31;
  sub-block scale ``d * (0.5 + s) * 0.5``.
- IQ3_S, 110 bytes: ``d`` (fp16) | ``qs[64]`` (low 8 bits of the grid indices) | ``qh[8]`` (9th
  bits: bit k of qh[ib] for group k of sub-block ib) | ``signs[32]`` (one bit per weight) |
  ``scales[4]`` (two 4-bit scales per byte; sub-block scale ``d * (1 + 2 s)``).

The quantizer is ``quantize_row_iq3_xxs_impl`` / ``quantize_row_iq3_s_impl`` of ggml-quants.c:
per sub-block of 32, signs are split off, 31 (IQ3_XXS) or 19 (IQ3_S) trial scales are tried;
a group of 4 levels that is not a grid point goes to its best neighbour in the tables that
``iq3xs_init_impl`` builds (:func:`neighbour_tables`). Every float32 value that reaches the
bytes is computed as C computes it; the neighbour search first discards, with a proven error
bound, the candidates that cannot be C's pick (:func:`_snap`), and evaluates the rest in C's order.

One quirk reproduced on purpose: in IQ3_S an all-zero sub-block of 32 does not advance the
``qs``/``signs`` write position, so the following sub-blocks' indices and signs are stored one
slot earlier (llama.cpp's output, which its own dequantizer reads differently; it only
matters for exact-zero runs of 32 weights).
"""

from __future__ import annotations

import functools

import numba
import numpy as np

from ..errors import NonFiniteError
from ..types import QK_K
from .codebooks import grid, ksigns
from .iq2 import _signs_with_parity, bound_sums, flip_signs, largest, plain_signs, scale_code
from .numeric import FP16_TO_FP32, nearest_int, put_fp16

_GRID_SIZE = {"IQ3_XXS": 256, "IQ3_S": 512}
_KMAP_SIZE = 4096  # 4 levels of 3 bits
_GROUP_MAX_EPS_IQ3_XXS = np.float32(1e-8)


@functools.cache
def neighbour_tables(type_name: str):
    """llama.cpp's ``iq3xs_init_impl`` tables for IQ3_XXS (256-entry grid) or IQ3_S (512).

    Returns ``(levels, kmap, neighbours)``:

    - ``levels``: int8 (grid_size, 4), the 3-bit level (0..7) of each element of each grid entry
      (llama.cpp's grid value ``2*level + 1``);
    - ``kmap``: int32 (4096,), for the 12-bit code ``sum(level_i << 3i)`` of any 4 levels: the grid
      index if the point is on the grid, else ``-(offset + 1)``;
    - ``neighbours``: uint16, at ``offset`` the count n, then n grid indices: all entries at the
      2 (IQ3_XXS) or 3 (IQ3_S) smallest squared distances from the point, sorted by distance then
      index (llama.cpp's qsort order).

    Built on first use from the grid in ``gguf`` and cached; read-only.
    """
    magnitudes = grid(type_name)
    levels = np.searchsorted(np.unique(magnitudes), magnitudes).astype(np.int8)  # 8 magnitudes -> 0..7
    grid_size = levels.shape[0]
    assert grid_size == _GRID_SIZE[type_name] and np.unique(magnitudes).size == 8
    nwant = 2 if grid_size == 256 else 3
    shifts = 3 * np.arange(4)
    codes = (levels.astype(np.int64) << shifts).sum(axis=1)
    kmap = np.full(_KMAP_SIZE, -1, dtype=np.int32)
    kmap[codes] = np.arange(grid_size, dtype=np.int32)

    off_grid = np.flatnonzero(kmap < 0)
    points = 2 * ((off_grid[:, None] >> shifts) & 7) + 1  # (m, 4) odd values 1..15
    pos = 2 * levels.astype(np.int64) + 1  # (grid_size, 4)
    dist2 = ((pos[None, :, :] - points[:, None, :]) ** 2).sum(axis=2)  # (m, grid_size)
    order = np.argsort(dist2, axis=1, kind="stable")  # by distance, then index
    sorted_d2 = np.take_along_axis(dist2, order, axis=1)
    chunks = []
    offset = 0
    for row, i in enumerate(off_grid):
        distinct = np.unique(sorted_d2[row])[:nwant]
        n = int(np.searchsorted(sorted_d2[row], distinct[-1], side="right"))
        kmap[i] = -(offset + 1)
        chunks.append(np.concatenate(([n], order[row, :n])))
        offset += 1 + n
    neighbours = np.concatenate(chunks).astype(np.uint16)
    for a in (levels, kmap, neighbours):
        a.setflags(write=False)
    return levels, kmap, neighbours


@functools.cache
def _candidate_slots(type_name: str) -> np.ndarray:
    """uint8 (len(neighbours), 4): for the entry listed at each position of ``neighbours``, its level
    of element i plus 8*i, the slot of (element, level) in :func:`_snap`'s per-group tables
    (garbage at the count positions). Unsigned, so Numba indexes without a negative-index check."""
    levels, _, neighbours = neighbour_tables(type_name)
    slots = levels[neighbours.astype(np.int64) % levels.shape[0]].astype(np.uint8) + 8 * np.arange(4, dtype=np.uint8)
    slots.setflags(write=False)
    return slots


_MAX_LISTED = 64  # longest neighbour list is 38 (IQ3_S)
_QB = _MAX_LISTED  # layout of the float64 scratch: qa, qb, per-group terms, per-group sums
_TERMS = 2 * _MAX_LISTED
_GROUP_SUMS = _TERMS + 8 * 64
# Prefilter bound (see _snap): C's float32 distance is within 9u * sum w*(15*scale + |x|)^2
# (u = 2^-24) of the exact one; _BOUND_REL = 32u also covers the float64 roundings of the
# prefilter, _BOUND_ABS the float32 underflows. Used only while the scale is at least _SCALE_MIN
# and the sums are at most _SUM_MAX (no float32 overflow, no subnormal scale*q).
_BOUND_REL = 32.0 * 2.0**-24
_BOUND_ABS = 2.0**-140
_SCALE_MIN = 2.0**-100
_SUM_MAX = 2.0**100


@numba.njit(inline="always", cache=True)
def _columns(ntrials):
    """Columns of the trial table: the trials, the final pass, padding to a multiple of 8 so that
    the loops over columns vectorize without a scalar remainder."""
    return (ntrials + 1 + 7) // 8 * 8


@numba.njit(cache=True)
def _scratch(ntrials):
    """Per-thread scratch of :func:`_subblock` for ntrials trial scales plus the final pass:
    levels (32 x columns, element-major), on-grid flags (8 x columns), 1/scales, scales, sums
    w*x*q and w*q*q per column, and float64 qa, qb of one off-grid point's candidates, the per-group
    terms and sums (at 0, _QB, _TERMS, _GROUP_SUMS)."""
    ncol = _columns(ntrials)
    return (np.zeros(32 * ncol, dtype=np.int32), np.zeros(8 * ncol, dtype=np.bool_),
            np.zeros(ncol, dtype=np.float32), np.zeros(ncol, dtype=np.float32),
            np.zeros(ncol, dtype=np.float32), np.zeros(ncol, dtype=np.float32),
            np.zeros(_GROUP_SUMS + 32, dtype=np.float64))


@numba.njit(inline="always", cache=True)
def _distance(levels, gi, xval, waux, o, scale):
    """C's float32 distance of grid entry gi from xval[o:o+4]: sum of waux*(scale*q - x)^2, q = 2*level+1,
    in C's order."""
    d2 = np.float32(0.0)
    for i in range(4):
        diff = scale * np.float32(2 * levels[gi, i] + 1) - xval[o + i]
        d2 += waux[o + i] * diff * diff
    return d2


@numba.njit(inline="always", cache=True)
def _group_terms(xval, waux, cand):
    """The scale-free parts of the neighbour distances, per group k of 4 (float64, products exact):
    w*q^2 and 2*w*x*q for each element i and level l (q = 2*l + 1) at _TERMS + 64k + 8i + l and
    + 32 more; sum w, sum w*|x|, sum w*x^2, sum |x| (for the error bound) at _GROUP_SUMS + 4k."""
    for k in range(8):
        sw, swax, swx2, sax = bound_sums(waux, xval, 4 * k, 4)
        for i in range(4):
            w = np.float64(waux[4 * k + i])
            x = np.float64(xval[4 * k + i])
            for l in range(8):
                q = np.float64(2 * l + 1)
                cand[_TERMS + 64 * k + 8 * i + l] = w * q * q
                cand[_TERMS + 64 * k + 32 + 8 * i + l] = 2.0 * w * x * q
        cand[_GROUP_SUMS + 4 * k] = sw
        cand[_GROUP_SUMS + 4 * k + 1] = swax
        cand[_GROUP_SUMS + 4 * k + 2] = swx2
        cand[_GROUP_SUMS + 4 * k + 3] = sax


@numba.njit(inline="always", cache=True)
def _snap(lv, ncol, col0, col1, ids, scl, ongrid, xval, waux, levels, kmap, neighbours, slots, cand):
    """Columns col0..col1-1 of lv (levels lv[i*ncol + c] at scale scl[c]): every group of 4 that is not
    a grid point goes to the neighbour C's iq3_find_best_neighbour picks (the first listed entry at
    the smallest float32 distance sum waux*(scale*q - x)^2); ongrid[k*ncol + c] tells which groups
    were on the grid. Returns False where C aborts (every distance inf/NaN). Needs :func:`_group_terms`.

    Per run of columns on the same off-grid point, candidate j gets (float64, products exact)
    qa = sum w*q^2 and qb = 2*sum w*x*q, so its exact distance is s*(s*qa - qb) + sum w*x^2. With
    M_i = 15*s + |x_i|, C's float32 distance is within 9u*sum w*M^2 of the exact one; with the
    float64 roundings and underflow, h = s*qa - qb is within E/s of C's (distance - sum w*x^2)/s,
    E = 32u*sum w*M^2 + 2^-140*(4 + sum M). A candidate whose h exceeds the smallest h by more than 2E/s is
    strictly farther in C's arithmetic too. The others are evaluated exactly in list order with
    strict <, so the pick is C's. Where the bound is not valid (tiny scale, sums near float32
    overflow) every candidate is evaluated exactly.
    """
    for k in range(8):
        o = 4 * k
        terms = _TERMS + 64 * k
        sw = cand[_GROUP_SUMS + 4 * k]
        swax = cand[_GROUP_SUMS + 4 * k + 1]
        swx2 = cand[_GROUP_SUMS + 4 * k + 2]
        sax = cand[_GROUP_SUMS + 4 * k + 3]
        expanded = -1  # the off-grid point whose qa, qb are in cand
        for c in range(col0, col1):
            u = (lv[o * ncol + c] | (lv[(o + 1) * ncol + c] << 3) | (lv[(o + 2) * ncol + c] << 6)
                 | (lv[(o + 3) * ncol + c] << 9))
            gi = np.int64(kmap[np.uint64(u)])
            ongrid[k * ncol + c] = gi >= 0
            if gi >= 0:
                continue
            start = -gi - 1
            count = np.int64(neighbours[start])
            if u != expanded:
                for j in range(count):
                    p = np.uint64(start + 1 + j)
                    s0, s1, s2, s3 = slots[p, 0], slots[p, 1], slots[p, 2], slots[p, 3]
                    cand[j] = cand[terms + s0] + cand[terms + s1] + cand[terms + s2] + cand[terms + s3]
                    cand[_QB + j] = (cand[terms + 32 + s0] + cand[terms + 32 + s1] + cand[terms + 32 + s2]
                                     + cand[terms + 32 + s3])
                expanded = u
            scale = scl[c]
            s = np.float64(scale)
            sum_m2 = s * (225.0 * s * sw + 30.0 * swax) + swx2
            sum_m = 60.0 * s + sax
            exact_all = not (s >= _SCALE_MIN and sum_m2 <= _SUM_MAX and sum_m <= _SUM_MAX)
            threshold = np.inf
            hnext = np.inf  # the second smallest h (equal to the smallest on a tie)
            if not exact_all:
                hmin = np.inf  # the smallest h, at jmin
                jmin = 0
                for j in range(count):
                    hj = s * cand[j] - cand[_QB + j]
                    hnext = min(hnext, max(hmin, hj))
                    if hj < hmin:
                        hmin = hj
                        jmin = j
                # 2E/s, with ids[c] = 1/s up to one float32 rounding (well inside the bound's slack)
                threshold = hmin + 2.0 * (_BOUND_REL * sum_m2 + _BOUND_ABS * (4.0 + sum_m)) * np.float64(ids[c])
                gi = np.int64(neighbours[start + 1 + jmin])
            if exact_all or hnext <= threshold:
                best_d2 = np.float32(3.4028234663852886e38)  # FLT_MAX
                gi = -1
                for j in range(count):
                    if exact_all or s * cand[j] - cand[_QB + j] <= threshold:
                        g = np.int64(neighbours[start + 1 + j])
                        d2 = _distance(levels, g, xval, waux, o, scale)
                        if d2 < best_d2:
                            best_d2 = d2
                            gi = g
                if gi < 0:
                    return False
            for i in range(4):
                lv[(o + i) * ncol + c] = levels[gi, i]
    return True


@numba.njit(inline="always", cache=True)
def _sums(lv, ncol, col0, col1, weight, xval, sqx, sq2):
    """sum w*x*q and sum w*q*q (q = 2*level + 1) of columns col0..col1-1 of lv side by side, each in
    C's element order and operand order ((w*x)*q, (w*q)*q)."""
    for c in range(col0, col1):
        sqx[c] = np.float32(0.0)
        sq2[c] = np.float32(0.0)
    for i in range(32):
        w = weight[i]
        wx = w * xval[i]
        for c in range(col0, col1):
            q = np.float32(2 * lv[i * ncol + c] + 1)
            sqx[c] += wx * q
            sq2[c] += w * q * q


@numba.njit(inline="always", cache=True)
def _subblock(xval, weight, waux, L, on_grid, levels, kmap, neighbours, slots, vmax, nsteps, second_pass_all,
              start_on_grid, failed, scratch):
    """The trial-scale search of one sub-block of 32 (shared by IQ3_XXS and IQ3_S); returns scale.

    The 2*nsteps+1 trials are columns of one table: levels, then neighbours (:func:`_snap`), then
    the sums (:func:`_sums`), each trial in C's order; C's pass over the off-grid groups at the
    chosen scale is one more column. Leaves the chosen levels in L (all on the grid). Sets
    failed[0] where llama.cpp would abort (no neighbour at a finite distance).
    """
    lv, ongrid, ids, scl, sqx, sq2, cand = scratch
    zero = np.float32(0.0)
    ntr = 2 * nsteps + 1
    ncol = _columns(ntr)
    for t in range(ncol):
        inv = (np.float32(15.0) + np.float32(min(t, ntr - 1) - nsteps) * np.float32(0.2)) / vmax
        ids[t] = inv
        scl[t] = np.float32(1.0) / inv
    for i in range(32):  # all columns (the ones after the trials are scratch): vectorizes
        x = xval[i]
        for t in range(ncol):
            l = nearest_int(np.float32(0.5) * (ids[t] * x - np.float32(1.0)))
            lv[i * ncol + t] = max(0, min(7, l))
    _group_terms(xval, waux, cand)
    if not _snap(lv, ncol, 0, ntr, ids, scl, ongrid, xval, waux, levels, kmap, neighbours, slots, cand):
        failed[0] = True
        return zero
    _sums(lv, ncol, 0, ncol, weight, xval, sqx, sq2)
    best = zero
    scale = vmax / np.float32(15.0)  # max/(2*kMaxQ-1)
    chosen = -1
    for t in range(ntr):
        if sq2[t] > zero and sqx[t] * sqx[t] > best * sq2[t]:
            scale = sqx[t] / sq2[t]
            best = scale * sqx[t]
            chosen = t
    for k in range(8):
        on_grid[k] = start_on_grid if chosen < 0 else ongrid[k * ncol + chosen]
    for i in range(32):
        L[i] = 0 if chosen < 0 else lv[i * ncol + chosen]
    n_not_on_grid = 0
    for k in range(8):
        if not on_grid[k]:
            n_not_on_grid += 1
    if n_not_on_grid > 0 and scale > zero:
        inv = np.float32(1.0) / scale
        ids[ntr] = inv
        scl[ntr] = scale
        for i in range(32):
            l = L[i]
            if second_pass_all or not on_grid[i // 4]:
                l = max(0, min(7, nearest_int(np.float32(0.5) * (inv * xval[i] - np.float32(1.0)))))
            lv[i * ncol + ntr] = l
        if not _snap(lv, ncol, ntr, ntr + 1, ids, scl, ongrid, xval, waux, levels, kmap, neighbours, slots, cand):
            failed[0] = True
            return scale
        for i in range(32):
            L[i] = lv[i * ncol + ntr]
        _sums(lv, ncol, ntr, ntr + 1, weight, xval, sqx, sq2)
        if sq2[ntr] > zero:
            scale = sqx[ntr] / sq2[ntr]
    return scale


@numba.njit(inline="always", cache=True)
def _weights(xb, qw, use_w, sigma2, weight, waux):
    for i in range(32):
        if use_w:
            weight[i] = qw[i] * np.float32(np.sqrt(sigma2 + xb[i] * xb[i]))
        else:
            weight[i] = xb[i] * xb[i]
    for i in range(32):
        waux[i] = np.float32(np.sqrt(weight[i]))


@numba.njit(inline="always", cache=True)
def _sigma2(xbl):
    sumx2 = np.float32(0.0)
    for i in range(QK_K):
        sumx2 += xbl[i] * xbl[i]
    return np.float32(2.0) * sumx2 / np.float32(QK_K)


@numba.njit(inline="always", cache=True)
def _row_work(ntrials):
    """A row's work arrays: sub-block scales, weights, sqrt(weights), |x|, levels, on-grid flags, the 4
    sign fields, the failure flag, and :func:`_scratch`."""
    return (np.zeros(8, dtype=np.float32), np.zeros(32, dtype=np.float32), np.zeros(32, dtype=np.float32),
            np.zeros(32, dtype=np.float32), np.zeros(32, dtype=np.int64), np.zeros(8, dtype=np.bool_),
            np.zeros(4, dtype=np.int64), np.zeros(1, dtype=np.bool_), _scratch(ntrials))


@numba.njit(inline="always", cache=True)
def _grid_point(L, k):
    """The 12-bit code of group k's 4 levels (3 bits each, element 0 lowest)."""
    u = 0
    for i in range(4):
        u |= L[4 * k + i] << (3 * i)
    return u


@numba.njit(parallel=True, cache=True)
def _quantize_iq3_xxs(rows, imatrix, use_w, levels, kmap, neighbours, slots):
    nrows, n = rows.shape
    nbl = n // QK_K
    out = np.zeros((nrows, nbl * 98), dtype=np.uint8)
    bad = np.zeros(nrows, dtype=np.bool_)
    for r in numba.prange(nrows):
        scales, weight, waux, xval, L, on_grid, block_signs, failed, scratch = _row_work(31)
        q3 = np.zeros(64, dtype=np.uint8)
        sas = np.zeros(8, dtype=np.uint32)
        for ibl in range(nbl):
            xbl = rows[r, ibl * QK_K:(ibl + 1) * QK_K]
            y = out[r, ibl * 98:(ibl + 1) * 98]
            q3[:] = 0
            sas[:] = 0
            max_scale = np.float32(0.0)
            sigma2 = _sigma2(xbl)
            for ib in range(8):
                xb = xbl[32 * ib:32 * ib + 32]
                qw = imatrix[ibl * QK_K + 32 * ib:ibl * QK_K + 32 * ib + 32] if use_w else imatrix[0:0]
                _weights(xb, qw, use_w, sigma2, weight, waux)
                for k in range(4):
                    block_signs[k] = _signs_with_parity(xb, 8 * k, weight, xval)
                vmax = largest(xval, 32)
                L[:] = 0
                if vmax < _GROUP_MAX_EPS_IQ3_XXS:
                    scales[ib] = np.float32(0.0)
                    continue
                scale = _subblock(xval, weight, waux, L, on_grid, levels, kmap, neighbours, slots, vmax, 15, False, True,
                                  failed, scratch)
                if failed[0]:
                    break
                if scale < np.float32(0.0):
                    scale = -scale
                    flip_signs(block_signs, 4, 127)
                for k in range(8):
                    q3[8 * ib + k] = np.uint8(kmap[_grid_point(L, k)])  # on the grid by construction
                sas[ib] = np.uint32(block_signs[0] | (block_signs[1] << 7) | (block_signs[2] << 14)
                                    | (block_signs[3] << 21))
                scales[ib] = scale
                max_scale = max_scale if max_scale > scale else scale
            if failed[0]:
                bad[r] = True
                break
            if max_scale == np.float32(0.0):
                continue  # d = 0 and all-zero quants: the block stays zero
            d = max_scale / np.float32(31.0)
            put_fp16(y, 0, d * np.float32(1.0125))
            inv = np.float32(1.0) / d
            for ib in range(8):
                sas[ib] |= np.uint32(scale_code(inv, scales[ib])) << np.uint32(28)
            for j in range(64):
                y[2 + j] = q3[j]
            for ib in range(8):
                v = sas[ib]
                for b in range(4):
                    y[66 + 4 * ib + b] = np.uint8((v >> np.uint32(8 * b)) & np.uint32(0xFF))
    return out, bad


@numba.njit(parallel=True, cache=True)
def _quantize_iq3_s(rows, imatrix, use_w, levels, kmap, neighbours, slots):
    nrows, n = rows.shape
    nbl = n // QK_K
    out = np.zeros((nrows, nbl * 110), dtype=np.uint8)
    bad = np.zeros(nrows, dtype=np.bool_)
    for r in numba.prange(nrows):
        scales, weight, waux, xval, L, on_grid, block_signs, failed, scratch = _row_work(19)
        for ibl in range(nbl):
            xbl = rows[r, ibl * QK_K:(ibl + 1) * QK_K]
            y = out[r, ibl * 110:(ibl + 1) * 110]  # d 0:2, qs 2:66, qh 66:74, signs 74:106, scales 106:110
            qs = 2
            signs = 74
            max_scale = np.float32(0.0)
            sigma2 = _sigma2(xbl)
            for ib in range(8):
                xb = xbl[32 * ib:32 * ib + 32]
                qw = imatrix[ibl * QK_K + 32 * ib:ibl * QK_K + 32 * ib + 32] if use_w else imatrix[0:0]
                _weights(xb, qw, use_w, sigma2, weight, waux)
                for k in range(4):
                    block_signs[k] = plain_signs(xb, 8 * k, xval)
                vmax = largest(xval, 32)
                L[:] = 0
                if vmax == np.float32(0.0):
                    scales[ib] = np.float32(0.0)
                    continue  # llama.cpp does not advance qs/signs here
                scale = _subblock(xval, weight, waux, L, on_grid, levels, kmap, neighbours, slots, vmax, 9, True, False,
                                  failed, scratch)
                if failed[0]:
                    break
                if scale < np.float32(0.0):
                    scale = -scale
                    flip_signs(block_signs, 4, 255)
                for k in range(8):
                    gi = kmap[_grid_point(L, k)]  # on the grid by construction
                    y[qs + k] = np.uint8(gi & 255)
                    y[66 + ib] |= np.uint8((gi >> 8) << k)
                qs += 8
                for k in range(4):
                    y[signs + k] = np.uint8(block_signs[k])
                signs += 4
                scales[ib] = scale
                max_scale = max_scale if max_scale > scale else scale
            if failed[0]:
                bad[r] = True
                break
            if max_scale == np.float32(0.0):
                continue
            d = max_scale / np.float32(31.0)
            put_fp16(y, 0, d * np.float32(1.033))
            inv = np.float32(1.0) / d
            for ib in range(0, 8, 2):
                y[106 + ib // 2] = np.uint8(scale_code(inv, scales[ib]) | (scale_code(inv, scales[ib + 1]) << 4))
    return out, bad


@numba.njit(inline="always", cache=True)
def _put_signed_pair(y, o, db, gridv, g1, g2, sg):
    """8 weights at y[o:o+8]: grid entries g1 and g2 times db, negated where bits 0-7 of sg are set."""
    for j in range(4):
        s1 = np.float32(-1.0) if sg & (1 << j) else np.float32(1.0)
        s2 = np.float32(-1.0) if sg & (1 << (j + 4)) else np.float32(1.0)
        y[o + j] = db * gridv[g1, j] * s1
        y[o + 4 + j] = db * gridv[g2, j] * s2


@numba.njit(parallel=True, cache=True)
def _dequantize_blocks(data, n, gridv, signs_table, fp16, xxs):
    """float32 rows from IQ3_XXS (``xxs``: 98-byte blocks, 7-bit signs through ``signs_table``) or
    IQ3_S (110-byte blocks) bytes."""
    block_bytes = 98 if xxs else 110
    out = np.empty((data.shape[0], n), dtype=np.float32)
    for r in numba.prange(data.shape[0]):
        q = data[r]
        y = out[r]
        for ibl in range(n // QK_K):
            b = ibl * block_bytes
            d = fp16[np.int64(q[b]) | (np.int64(q[b + 1]) << 8)]
            for ib in range(8):
                aux = np.int64(0)
                qh = np.int64(0)
                if xxs:
                    for t in range(4):
                        aux |= np.int64(q[b + 66 + 4 * ib + t]) << (8 * t)
                    db = d * (np.float32(0.5) + np.float32(aux >> 28)) * np.float32(0.5)
                else:
                    sc = np.int64(q[b + 106 + ib // 2])
                    db = d * np.float32(1 + 2 * ((sc >> 4) if ib % 2 else (sc & 0xF)))
                    qh = np.int64(q[b + 66 + ib])
                for l in range(4):
                    g1 = np.int64(q[b + 2 + 8 * ib + 2 * l]) | (((qh >> (2 * l)) & 1) << 8)
                    g2 = np.int64(q[b + 2 + 8 * ib + 2 * l + 1]) | (((qh >> (2 * l + 1)) & 1) << 8)
                    sg = np.int64(signs_table[(aux >> (7 * l)) & 127]) if xxs else np.int64(q[b + 74 + 4 * ib + l])
                    _put_signed_pair(y, ibl * QK_K + 32 * ib + 8 * l, db, gridv, g1, g2, sg)
    return out


def _dequantize_iq3_xxs(data, n, gridv, signs_table, fp16):
    return _dequantize_blocks(data, n, gridv, signs_table, fp16, True)


def _dequantize_iq3_s(data, n, gridv, fp16):
    return _dequantize_blocks(data, n, gridv, ksigns(), fp16, False)


def _quantize(name: str, kernel, rows: np.ndarray, imatrix: np.ndarray | None) -> np.ndarray:
    use_w = imatrix is not None
    weights = imatrix if use_w else np.zeros(0, np.float32)
    levels, kmap, neighbours = neighbour_tables(name)
    out, bad = kernel(rows, weights, use_w, levels, kmap, neighbours, _candidate_slots(name))
    if bad.any():
        row = int(np.flatnonzero(bad)[0])
        raise NonFiniteError(
            f"{name}: row {row} (largest |value| {float(np.abs(rows[row]).max()):.3g}) overflows float32 in the "
            f"grid search (llama.cpp aborts on such input); scale the tensor down or use another type"
        )
    return out


def quantize_iq3_xxs(rows: np.ndarray, imatrix: np.ndarray | None) -> np.ndarray:
    return _quantize("IQ3_XXS", _quantize_iq3_xxs, rows, imatrix)


def quantize_iq3_s(rows: np.ndarray, imatrix: np.ndarray | None) -> np.ndarray:
    return _quantize("IQ3_S", _quantize_iq3_s, rows, imatrix)


def dequantize_iq3_xxs(data: np.ndarray, n_per_row: int) -> np.ndarray:
    return _dequantize_iq3_xxs(data, int(n_per_row), grid("IQ3_XXS").astype(np.float32), ksigns(), FP16_TO_FP32)


def dequantize_iq3_s(data: np.ndarray, n_per_row: int) -> np.ndarray:
    return _dequantize_iq3_s(data, int(n_per_row), grid("IQ3_S").astype(np.float32), FP16_TO_FP32)
