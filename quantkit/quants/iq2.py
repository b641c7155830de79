"""IQ2_XXS, IQ2_XS and IQ2_S: 2-bit "lattice" quants on codebooks of 8-value entries.

Every group of 8 weights is stored as an index into a codebook (256, 512 or 1024 entries of 8
magnitudes, each from {1, 3, 5} in units of the group scale, stored by llama.cpp as 8/25/43) plus 8
sign bits (7 for IQ2_XXS/IQ2_XS, the 8th implied by even parity). The search puts the weights on the
grid of odd levels, looks the resulting point up in a map of the codebook and, when the point is not
in the codebook, picks the best among its nearest codebook entries.

That map and the nearest-entry lists are what llama.cpp's ``iq2xs_init_impl`` builds at start-up;
:func:`grid_tables` builds the same tables (for the 256/512/1024/2048-entry grids, the last one used
by IQ1_S/IQ1_M) with numpy, once per grid, cached for the process.

Layout and search details: docs/iquants-iq2-iq1.md.
"""

from __future__ import annotations

import functools
from typing import NamedTuple

import numpy as np
from numba import njit, prange

from ..types import QK_K, known_type
from .codebooks import grid as codebook
from .codebooks import ksigns
from .numeric import FP16_TO_FP32, fp32_to_fp16_bits, nearest_int
from .search import GROUP_MAX_EPS, make_qp_quants

KMAP_SIZE = 43692  # 2 bits per element of an 8-element point, levels 0..2: max index 0xAAAA, + 2

FLT_MAX = np.float32(np.finfo(np.float32).max)
F0 = np.float32(0.0)
F1 = np.float32(1.0)
FHALF = np.float32(0.5)
GROUP_MAX_EPS_IQ2_S = np.float32(1e-8)

# where a neighbour code keeps element i's distance-term index (8*level + i, 5 bits)
_TERM_SHIFT = (28, 33, 38, 43, 8, 13, 18, 23)

# grid size -> (type whose codebook it is, nearest distances kept per off-grid point)
_GRIDS = {256: ("IQ2_XXS", 2), 512: ("IQ2_XS", 2), 1024: ("IQ2_S", 1), 2048: ("IQ1_S", 3)}


class GridTables(NamedTuple):
    """llama.cpp's iq2xs_init_impl tables for one codebook, in the layout the kernels read.

    levels: (G, 8) int8, each element's level 0..2 (the grid value is 2*level + 1).
    kmap: (KMAP_SIZE,) int32, point index (2 bits per element, element 0 lowest) -> codebook entry
    when the point is in the codebook; otherwise -(offset + 1) of its neighbour list in
    ``nbr_list`` (as in llama.cpp). Points with a level-3 element are never looked up.
    nbr_list: int64, per off-grid point its neighbour count, then one code per neighbour: the
    codebook entries whose squared distance to the point is among its ``nwant`` smallest distinct
    distances, ordered by (distance, entry) as llama.cpp orders them. A code packs the entry's levels
    for the kernels: bits 0-6 the first four levels as one base-3 number (index into a search's 81
    running sums of its first four distance terms); for elements 4..7 then 0..3, 5 bits each from
    bit 8, the index 8*level + element of the element's distance term; bits 48-58 the entry.
    """

    levels: np.ndarray
    kmap: np.ndarray
    nbr_list: np.ndarray

    def kernel_args(self):
        """The arrays the Numba kernels take, in their order."""
        return self.kmap, self.nbr_list, self.levels

    def neighbours(self, u: int) -> np.ndarray:
        """The codebook entries listed for off-grid point ``u``, in llama.cpp's order."""
        off = -int(self.kmap[u]) - 1
        n = int(self.nbr_list[off])
        return (self.nbr_list[off + 1:off + 1 + n] >> 48).astype(np.int64)


def _codebook_levels(grid_size: int) -> np.ndarray:
    type_name, _ = _GRIDS[grid_size]
    values = codebook(type_name)
    if values.shape != (grid_size, 8):
        raise RuntimeError(f"{type_name} codebook has shape {values.shape}, expected ({grid_size}, 8)")
    distinct = np.unique(values)  # IQ2: 8 < 25 < 43; IQ1: -1 < 0 < 1
    if distinct.size != 3:
        raise RuntimeError(f"{type_name} codebook has {distinct.size} distinct values, expected 3")
    return np.searchsorted(distinct, values).astype(np.int8)


@functools.cache
def grid_tables(grid_size: int) -> GridTables:
    """The map and neighbour lists of the ``grid_size``-entry codebook (256, 512, 1024 or 2048).

    Built once per process (about a second for the 2048-entry grid), then cached.
    """
    _, nwant = _GRIDS[grid_size]
    levels = _codebook_levels(grid_size)
    shifts = 2 * np.arange(8)
    index = (levels.astype(np.int32) << shifts).sum(axis=1)
    kmap = np.full(KMAP_SIZE, -1, dtype=np.int32)
    kmap[index] = np.arange(grid_size, dtype=np.int32)

    # only points whose 8 levels are all 0..2 are ever looked up (levels are clamped to 0..2)
    digits = np.indices((3,) * 8).reshape(8, -1).T[:, ::-1]  # (6561, 8), element 0 first
    points = (digits << shifts).sum(axis=1).astype(np.int32)
    off_grid = kmap[points] < 0
    points, digits = points[off_grid], digits[off_grid]

    gpos = (2 * levels + 1).astype(np.float64)
    gnorm = (gpos * gpos).sum(axis=1)
    lists = []
    chunk = 1024
    for c0 in range(0, len(points), chunk):
        ppos = (2 * digits[c0:c0 + chunk] + 1).astype(np.float64)
        d2 = (ppos * ppos).sum(axis=1)[:, None] + gnorm[None, :] - 2.0 * (ppos @ gpos.T)
        d2 = np.rint(d2).astype(np.int32)
        keys = np.sort(d2 * grid_size + np.arange(grid_size, dtype=np.int32)[None, :], axis=1)
        dist = keys // grid_size
        rank = np.zeros(keys.shape, dtype=np.int16)
        np.cumsum(dist[:, 1:] != dist[:, :-1], axis=1, dtype=np.int16, out=rank[:, 1:])
        keep = rank < nwant  # a prefix of each sorted row
        entries = (keys % grid_size).astype(np.int64)
        counts = keep.sum(axis=1)
        # each point's block: [count, entry_1, ..., entry_count] (entries as -1 - entry for now)
        block = np.where(keep, -1 - entries, 0)
        lists.append((counts, block, keep))
    pieces = []
    kmap_off = []
    total = 0
    for counts, block, keep in lists:
        rows = np.concatenate([counts[:, None], block], axis=1)
        mask = np.concatenate([np.ones((len(counts), 1), dtype=bool), keep], axis=1)
        flat = rows[mask]
        sizes = counts + 1
        kmap_off.append(total + np.cumsum(sizes) - sizes)
        total += int(sizes.sum())
        pieces.append(flat)
    flat = np.concatenate(pieces)
    kmap[points] = -(np.concatenate(kmap_off) + 1).astype(np.int32)
    is_entry = flat < 0
    entry = -1 - flat[is_entry]
    lv = levels[entry].astype(np.int64)
    code = lv[:, 0] * 27 + lv[:, 1] * 9 + lv[:, 2] * 3 + lv[:, 3]
    for i in range(8):
        code |= (8 * lv[:, i] + i) << _TERM_SHIFT[i]
    code |= entry << 48
    nbr_list = flat.copy()
    nbr_list[is_entry] = code
    tables = GridTables(levels, kmap, nbr_list)
    for a in tables:
        a.setflags(write=False)
    return tables


# ------------------------------------------------------------------------------------------------
# Numba kernels
#
# Kernels compiled with ``_nrt=False`` only borrow arrays from their caller (they allocate none and
# return none), so they need no reference counting; with it, Numba increfs and decrefs every array
# argument on each call (atomic operations that took a third of IQ2_S's time). The row drivers
# allocate the work arrays (:class:`Work`) and keep them alive.


@njit(inline="always", cache=True, error_model="numpy")
def nn_search(off, nbr_list, t, t4):
    """The code of the entry of a neighbour list with the smallest distance, first on ties.

    ``off`` is where the list starts in ``nbr_list`` (its count, then the codes). ``t[8*l + i]`` is
    the distance term of element i at level l; a candidate's distance is the float32 sum of its 8
    terms in element order, as llama.cpp accumulates it, and the first strict minimum wins, as in
    llama.cpp's scan. For long lists the running sums of the first four terms are tabulated first
    (``t4``, 81 floats: the same additions in the same order, shared by the candidates), so that a
    candidate costs 5 loads instead of 8.
    """
    n = nbr_list[off]
    first = off + 1
    best_d2 = FLT_MAX
    cbest = nbr_list[first]  # kept only if every distance is NaN (llama.cpp aborts there)
    if n >= 16:
        for a in range(3):
            ta = t[8 * a]
            for b in range(3):
                tab = ta + t[8 * b + 1]
                for c in range(3):
                    tabc = tab + t[8 * c + 2]
                    o = 27 * a + 9 * b + 3 * c
                    t4[o] = tabc + t[3]
                    t4[o + 1] = tabc + t[11]
                    t4[o + 2] = tabc + t[19]
        for j in range(first, first + n):
            c = nbr_list[j]
            d2 = t4[c & 127]
            d2 += t[(c >> 8) & 31]
            d2 += t[(c >> 13) & 31]
            d2 += t[(c >> 18) & 31]
            d2 += t[(c >> 23) & 31]
            if d2 < best_d2:
                best_d2 = d2
                cbest = c
    else:
        for j in range(first, first + n):
            c = nbr_list[j]
            d2 = t[(c >> 28) & 31]
            d2 += t[(c >> 33) & 31]
            d2 += t[(c >> 38) & 31]
            d2 += t[(c >> 43) & 31]
            d2 += t[(c >> 8) & 31]
            d2 += t[(c >> 13) & 31]
            d2 += t[(c >> 18) & 31]
            d2 += t[(c >> 23) & 31]
            if d2 < best_d2:
                best_d2 = d2
                cbest = c
    return cbest


@njit(inline="always", cache=True, error_model="numpy")
def code_levels(c, L, loff, step):
    """Write the 8 levels packed in a neighbour code to L[loff + i*step], i = 0..7; return its
    codebook entry."""
    for i in range(4):
        L[loff + i * step] = ((c >> (28 + 5 * i)) & 31) >> 3
        L[loff + (4 + i) * step] = ((c >> (8 + 5 * i)) & 31) >> 3
    return np.int32(c >> 48)


@njit(inline="always", cache=True, error_model="numpy")
def _best_neighbour(u, kmap, nbr_list, xval, w, off, scale, L, loff, step, t, t4):
    """iq2_find_best_neighbour: the neighbour of off-grid point ``u`` nearest to xval/scale; its
    levels go to L[loff + i*step].

    Each element's term w*(scale*q - x)^2 takes one of 3 values (q = 1, 3, 5): computed once into
    ``t`` with C's float32 operations, then :func:`nn_search` scans the candidates.
    """
    for l in range(3):
        sq = scale * np.float32(2 * l + 1)
        for i in range(8):
            diff = sq - xval[off + i]
            t[8 * l + i] = w[off + i] * diff * diff
    c = nn_search(-kmap[u] - 1, nbr_list, t, t4)
    return code_levels(c, L, loff, step)


@njit(cache=True, error_model="numpy", _nrt=False)
def grid_point(L, off):
    """The index of 8 levels (2 bits each, level i at bits 2i) in the 3^8-point lattice map."""
    u = 0
    for i in range(8):
        u |= np.int32(L[off + i]) << (2 * i)
    return u


@njit(cache=True, error_model="numpy", _nrt=False)
def _levels_at(id_, xval, off, L):
    """Level 0..2 nearest to id*x (odd grid 1,3,5) of 8 values; returns the point index."""
    u = 0
    for i in range(8):
        l = nearest_int(FHALF * (id_ * xval[off + i] - F1))
        if l > 2:
            l = 2
        if l < 0:
            l = 0
        L[off + i] = l
        u |= l << (2 * i)
    return u


@njit(cache=True, error_model="numpy", _nrt=False)
def _sums(weight, xval, L, n):
    sumqx = F0
    sumq2 = F0
    for i in range(n):
        w = weight[i]
        q = np.float32(2 * L[i] + 1)
        sumqx += w * xval[i] * q
        sumq2 += w * q * q
    return sumqx, sumq2


class Work(NamedTuple):
    """A row kernel's work arrays (sub-blocks of n values, trial scales in ``lanes`` lanes), allocated per row."""

    lv: np.ndarray  # (n*lanes) int32: level of element i in trial s at i*lanes + s
    ongrid: np.ndarray  # (n/8*lanes) bool: group k of trial s on the grid, at k*lanes + s
    us: np.ndarray  # (n/8*lanes) int32: grid point of group k in trial s, at k*lanes + s
    ids: np.ndarray  # (lanes) float32: the trials' inverse scales
    scl: np.ndarray  # (lanes) float32: the trials' scales
    sqx: np.ndarray  # (lanes) float32: the trials' sum w*x*q
    sq2: np.ndarray  # (lanes) float32: the trials' sum w*q*q
    ab: np.ndarray  # float64 scratch of _run_neighbours
    kept: np.ndarray  # int64 scratch of _run_neighbours
    weight: np.ndarray  # (n) float32
    waux: np.ndarray  # (n) float32: sqrt(weight)
    xval: np.ndarray  # (n) float32: |x| (parity flip applied)
    L: np.ndarray  # (n) int32: the kept levels
    Lqp: np.ndarray  # (n) uint8: make_qp_quants' levels
    on_grid: np.ndarray  # (n/8) bool
    t: np.ndarray  # (24) float32: distance terms
    t4: np.ndarray  # (81) float32: running sums of the first four terms
    signs: np.ndarray  # (n/8) int32
    scales: np.ndarray  # (QK_K/16) float32: the sub-block scales
    q2: np.ndarray  # (QK_K/8) uint32: packed indices and signs


@njit(cache=True, error_model="numpy")
def _work(lanes, n):
    return Work(np.zeros(lanes * n, dtype=np.int32), np.zeros(lanes * n // 8, dtype=np.bool_),
                np.zeros(lanes * n // 8, dtype=np.int32),
                np.zeros(lanes, dtype=np.float32), np.zeros(lanes, dtype=np.float32),
                np.zeros(lanes, dtype=np.float32), np.zeros(lanes, dtype=np.float32),
                np.zeros(5 * 1024 + 64, dtype=np.float64), np.zeros(1024, dtype=np.int64),
                np.zeros(n, dtype=np.float32), np.zeros(n, dtype=np.float32), np.zeros(n, dtype=np.float32),
                np.zeros(n, dtype=np.int32), np.zeros(n, dtype=np.uint8), np.zeros(n // 8, dtype=np.bool_),
                np.zeros(24, dtype=np.float32), np.zeros(81, dtype=np.float32), np.zeros(n // 8, dtype=np.int32),
                np.zeros(QK_K // 16, dtype=np.float32), np.zeros(QK_K // 8, dtype=np.uint32))


# Bound on |C's float32 distance - the exact real distance| relative to sum w_i (10 s + |x_i|)^2
# (about 11 float32 roundings: 4 per term, 7 for the sum; see docs/iquants-iq2-iq1.md), with margin
D2_REL_ERR = 2.0**-19
# the same for results in float32's subnormal range (absolute error 2^-150 per rounding)
D2_ABS_ERR = 2.0**-148
# above this, a float32 distance could overflow: the run search defers to the exact scan
D2_SAFE_MAX = 1e36


@njit(cache=True, error_model="numpy", _nrt=False)
def _c_distance(c, xval, w, off, scale):
    """llama.cpp's float32 distance sum w*(scale*q - x)^2 of the entry packed in code c."""
    d2 = F0
    for i in range(8):
        sh = 28 + 5 * i if i < 4 else 5 * i - 12
        diff = scale * np.float32(2 * (((c >> sh) & 31) >> 3) + 1) - xval[off + i]
        d2 += w[off + i] * diff * diff
    return d2


@njit(inline="always", cache=True)
def bound_sums(w, xval, off, n):
    """float64 sum w, sum w*|x|, sum w*x^2 and sum |x| over n elements: the inputs of a distance error bound."""
    wsum = 0.0
    wxabs = 0.0
    wx2 = 0.0
    xabs = 0.0
    for i in range(n):
        wi = np.float64(w[off + i])
        xi = np.float64(xval[off + i])
        wsum += wi
        wxabs += wi * abs(xi)
        wx2 += wi * xi * xi
        xabs += abs(xi)
    return wsum, wxabs, wx2, xabs


@njit(inline="always", cache=True, error_model="numpy")
def _margin(sc, wsum, wxabs, wx2, xabs):
    """2E(s)/s: twice the bound on |C's float32 distance - real distance| at scale s, over s."""
    err = D2_REL_ERR * (100.0 * sc * sc * wsum + 20.0 * sc * wxabs + wx2)
    err += D2_ABS_ERR * (8.0 + 80.0 * sc + xabs + 2.0 * (10.0 * sc * wsum + wxabs))
    return 2.0 * err / sc


@njit(cache=True, error_model="numpy", _nrt=False)
def _run_neighbours(u, kmap, nbr_list, xval, w, off, scl, s0, s1, lv, lanes, ab, kept, t, t4):
    """Best neighbours of off-grid point ``u`` for trials s0..s1-1 (scale scl[s]), as C picks them.

    For entry c the real distance is s*g_c(s) + const, g_c(s) = s*A_c - 2*B_c with A_c = sum w q_c^2
    and B_c = sum w x q_c (float64, once for the run). C's float32 distance is within E(s) of the
    real one, so C's pick (the first entry with the smallest float32 distance) lies among the entries
    with g_c(s) <= min g(s) + 2E(s)/s. An entry that exceeds that margin over another entry m at
    both ends of the run's scale range does so at every scale between (g_c - g_m is linear in s):
    it is dropped for the whole run, with m the best entry at either end. Per trial the kept entries
    within the margin are compared, in list order, with C's float32 distance (none is computed
    when one entry is left). Levels go to lv[(off + i)*lanes + s]. Scratch ``ab``: 5*1024 + 64.
    """
    first = -kmap[u]
    cnt = nbr_list[first - 1]
    wsum, wxabs, wx2, xabs = bound_sums(w, xval, off, 8)
    for i in range(8):
        wi = np.float64(w[off + i])
        xi = np.float64(xval[off + i])
        for l in range(3):
            q = np.float64(2 * l + 1)
            ab[8 * l + i] = wi * q * q
            ab[24 + 8 * l + i] = wi * xi * q
    lo = np.float64(scl[s0])
    hi = lo
    for s in range(s0 + 1, s1):
        lo = min(lo, np.float64(scl[s]))
        hi = max(hi, np.float64(scl[s]))
    if not 100.0 * hi * hi * wsum + 20.0 * hi * wxabs + wx2 < D2_SAFE_MAX:
        for s in range(s0, s1):
            _best_neighbour(u, kmap, nbr_list, xval, w, off, scl[s], lv, off * lanes + s, lanes, t, t4)
        return
    # 2E(s)/s is convex in s > 0: its largest value on the run is at an end
    margin = max(_margin(lo, wsum, wxabs, wx2, xabs), _margin(hi, wsum, wxabs, wx2, xabs))
    glo_min = np.inf
    ghi_min = np.inf
    m1_hi = np.inf
    m2_lo = np.inf
    for j in range(cnt):
        c = nbr_list[first + j]
        a = 0.0
        b = 0.0
        for i in range(4):
            k = (c >> (28 + 5 * i)) & 31
            a += ab[k]
            b += ab[24 + k]
        for i in range(4):
            k = (c >> (8 + 5 * i)) & 31
            a += ab[k]
            b += ab[24 + k]
        glo = lo * a - 2.0 * b
        ghi = hi * a - 2.0 * b
        ab[64 + j] = a
        ab[1088 + j] = b
        ab[2112 + j] = glo
        ab[3136 + j] = ghi
        if glo < glo_min:
            glo_min = glo
            m1_hi = ghi
        if ghi < ghi_min:
            ghi_min = ghi
            m2_lo = glo
    nkept = 0
    for j in range(cnt):
        glo = ab[2112 + j]
        ghi = ab[3136 + j]
        near1 = (glo - glo_min <= margin) | (ghi - m1_hi <= margin)
        near2 = (glo - m2_lo <= margin) | (ghi - ghi_min <= margin)
        kept[nkept] = j
        nkept += np.int64(near1 & near2)
    for s in range(s0, s1):
        cbest = nbr_list[first + kept[0]]
        if nkept > 1:
            scale = scl[s]
            sc = np.float64(scale)
            vmin = np.inf
            for r in range(nkept):
                j = kept[r]
                v = sc * ab[64 + j] - 2.0 * ab[1088 + j]
                ab[4160 + r] = v
                vmin = min(vmin, v)
            thr = vmin + margin
            best_d2 = FLT_MAX
            nsurv = 0
            for r in range(nkept):
                if ab[4160 + r] <= thr:
                    nsurv += 1
                    c = nbr_list[first + kept[r]]
                    if nsurv == 1:
                        cbest = c
                    else:
                        if nsurv == 2:
                            best_d2 = _c_distance(cbest, xval, w, off, scale)
                        d2 = _c_distance(c, xval, w, off, scale)
                        if d2 < best_d2:
                            best_d2 = d2
                            cbest = c
        code_levels(cbest, lv, off * lanes + s, lanes)


@njit(inline="always", cache=True, error_model="numpy")
def _trial_scales(nis, lanes, denom, n, work, kmap, nbr_list):
    """The levels and weighted sums of C's trial scales, all trials at once.

    Trial s (is = s - nis//2) uses id = (5 + is*0.1)/denom: levels nearest_int(0.5*(id*x - 1))
    clamped to 0..2, each group of 8 snapped to its best neighbour (at scale 1/id) when off the
    grid; then sum w*x*q and sum w*q*q (q = 2*level + 1) in element order, as C accumulates them.
    The trials are the inner, contiguous dimension (``lanes`` >= nis, a multiple of 8: the loops
    over trials have a constant width and vectorize; lanes past nis are computed and ignored).
    Results: work.lv[i*lanes + s] (levels), work.ongrid[k*lanes + s], work.scl, work.sqx,
    work.sq2 (see :class:`Work`).
    """
    lv, ongrid, us, ids, scl, sqx, sq2 = work.lv, work.ongrid, work.us, work.ids, work.scl, work.sqx, work.sq2
    xval, weight, waux, t, t4, ab, kept = work.xval, work.weight, work.waux, work.t, work.t4, work.ab, work.kept
    half = nis // 2
    for s in range(lanes):
        id_ = (np.float32(5.0) + np.float32(s - half) * np.float32(0.1)) / denom
        ids[s] = id_
        scl[s] = F1 / id_
    ng = n // 8
    for k in range(ng):
        for s in range(lanes):
            us[k * lanes + s] = 0
        for i in range(8):
            xi = xval[8 * k + i]
            for s in range(lanes):
                l = min(max(nearest_int(FHALF * (ids[s] * xi - F1)), 0), 2)
                lv[(8 * k + i) * lanes + s] = l
                us[k * lanes + s] |= l << (2 * i)
    for k in range(ng):
        s0 = 0
        while s0 < nis:
            u = us[k * lanes + s0]
            s1 = s0 + 1
            while s1 < nis and us[k * lanes + s1] == u:
                s1 += 1
            on = kmap[u] >= 0
            for s in range(s0, s1):
                ongrid[k * lanes + s] = on
            if not on:
                if s1 - s0 == 1:
                    _best_neighbour(u, kmap, nbr_list, xval, waux, 8 * k, scl[s0], lv, 8 * k * lanes + s0, lanes, t, t4)
                else:
                    _run_neighbours(u, kmap, nbr_list, xval, waux, 8 * k, scl, s0, s1, lv, lanes, ab, kept, t, t4)
            s0 = s1
    for s in range(lanes):
        sqx[s] = F0
        sq2[s] = F0
    for i in range(n):
        w = weight[i]
        wx = w * xval[i]
        for s in range(lanes):
            q = np.float32(2 * lv[i * lanes + s] + 1)
            sqx[s] += wx * q
            sq2[s] += w * q * q


@njit(cache=True, error_model="numpy", _nrt=False)
def _search16(work, kmap, nbr_list):
    """IQ2_XS / IQ2_S scale search over 16 values (two groups of 8); fills work.L, returns the scale."""
    xval, weight, waux, L, on_grid, t, t4 = work.xval, work.weight, work.waux, work.L, work.on_grid, work.t, work.t4
    vmax = largest(xval, 16)
    for i in range(16):
        L[i] = 0
    best = F0
    scale = vmax / np.float32(5.0)
    on_grid[0] = True
    on_grid[1] = True
    _trial_scales(19, 24, vmax, 16, work, kmap, nbr_list)
    lv, ongrid, sqx, sq2 = work.lv, work.ongrid, work.sqx, work.sq2
    sbest = -1
    for s in range(19):
        sumqx = sqx[s]
        sumq2 = sq2[s]
        if sumq2 > F0 and sumqx * sumqx > best * sumq2:
            scale = sumqx / sumq2
            best = scale * sumqx
            sbest = s
    if sbest >= 0:
        for i in range(16):
            L[i] = lv[i * 24 + sbest]
        on_grid[0] = ongrid[sbest]
        on_grid[1] = ongrid[24 + sbest]
    if (not on_grid[0] or not on_grid[1]) and scale > F0:
        id_ = F1 / scale
        for k in range(2):
            if on_grid[k]:
                continue
            u = _levels_at(id_, xval, 8 * k, L)
            if kmap[u] < 0:
                _best_neighbour(u, kmap, nbr_list, xval, waux, 8 * k, scale, L, 8 * k, 1, t, t4)
        sumqx, sumq2 = _sums(weight, xval, L, 16)
        if sumq2 > F0:
            scale = sumqx / sumq2
    return scale


@njit(cache=True, error_model="numpy", _nrt=False)
def _signs_with_parity(xb, off, weight, xval):
    """Absolute values of 8 weights; an odd number of negatives flips the least important one."""
    nflip = 0
    s = 0
    for i in range(8):
        v = xb[off + i]
        if v >= F0:
            xval[off + i] = v
        else:
            xval[off + i] = -v
            nflip += 1
            s |= 1 << i
    if nflip % 2 == 1:
        imin = 0
        vmin = weight[off] * xb[off] * xb[off]
        for i in range(1, 8):
            ax = weight[off + i] * xb[off + i] * xb[off + i]
            if ax < vmin:
                vmin = ax
                imin = i
        xval[off + imin] = -xval[off + imin]
        s ^= 1 << imin
    return s & 127


@njit(inline="always", cache=True)
def plain_signs(xb, off, xval):
    """Absolute values of 8 weights into xval; returns their 8 sign bits (IQ2_S, IQ3_S)."""
    s = 0
    for i in range(8):
        v = xb[off + i]
        if v >= F0:
            xval[off + i] = v
        else:
            xval[off + i] = -v
            s |= 1 << i
    return s


@njit(inline="always", cache=True)
def flip_signs(signs, n, mask):
    """Invert the sign fields signs[0:n] (``mask``: their bits) for a negative scale."""
    for k in range(n):
        signs[k] = (~signs[k]) & mask


@njit(inline="always", cache=True)
def largest(xval, n):
    """max(xval[0:n]) in C's loop order (``max = max > x ? max : x``)."""
    vmax = xval[0]
    for i in range(1, n):
        vmax = vmax if vmax > xval[i] else xval[i]
    return vmax


@njit(inline="always", cache=True)
def scale_code(id_, scale):
    """The 4-bit sub-block scale of IQ2/IQ3: nearest_int(0.5*(scale/d - 1)) clamped to 0..15 (id_ = 1/d)."""
    return max(0, min(15, nearest_int(FHALF * (id_ * scale - F1))))


@njit(inline="always", cache=True)
def _weights(xb, qw, qoff, has_qw, sigma2, n, weight, waux):
    """weight = imatrix * sqrt(sigma2 + x^2) (without an imatrix 0.25*sigma2 + x^2), waux = sqrt(weight)."""
    if has_qw:
        for i in range(n):
            weight[i] = qw[qoff + i] * np.sqrt(sigma2 + xb[i] * xb[i])
    else:
        for i in range(n):
            weight[i] = np.float32(0.25) * sigma2 + xb[i] * xb[i]
    for i in range(n):
        waux[i] = np.sqrt(weight[i])


@njit(cache=True, error_model="numpy", _nrt=False)
def _put_u16(out, p, v):
    out[p] = np.uint8(v & 255)
    out[p + 1] = np.uint8((v >> 8) & 255)


@njit(cache=True, error_model="numpy", _nrt=False)
def _sigma2(xbl, factor):
    sumx2 = F0
    for i in range(QK_K):
        sumx2 += xbl[i] * xbl[i]
    return factor * sumx2 / np.float32(QK_K)


@njit(cache=True, error_model="numpy", _nrt=False)
def _quantize_row_iq2_xs(x, qw, out, tabs, work):
    nbl = x.shape[0] // QK_K
    scales, weight, waux, xval, L, signs, q2 = work.scales, work.weight, work.waux, work.xval, work.L, work.signs, work.q2
    kmap, nbr_list, _ = tabs
    for ibl in range(nbl):
        o = ibl * 74
        xbl = x[QK_K * ibl:QK_K * (ibl + 1)]
        for i in range(74):
            out[o + i] = 0
        q2[:] = 0
        max_scale = F0
        sigma2 = _sigma2(xbl, F1)
        for ib in range(QK_K // 16):
            xb = xbl[16 * ib:16 * ib + 16]
            _weights(xb, qw, QK_K * ibl + 16 * ib, True, sigma2, 16, weight, waux)
            for k in range(2):
                signs[k] = _signs_with_parity(xb, 8 * k, weight, xval)
            if largest(xval, 16) < GROUP_MAX_EPS:
                scales[ib] = F0
                continue
            scale = _search16(work, kmap, nbr_list)
            if scale < F0:
                scale = -scale
                flip_signs(signs, 2, 127)
            for k in range(2):
                q2[2 * ib + k] = kmap[grid_point(L, 8 * k)] | (signs[k] << 9)
            scales[ib] = scale
            max_scale = max_scale if max_scale > scale else scale
        if max_scale == F0:
            continue
        d = max_scale / np.float32(31.0)
        _put_u16(out, o, fp32_to_fp16_bits(d))
        id_ = F1 / d
        for ib in range(QK_K // 16):
            out[o + 66 + ib // 2] |= np.uint8(scale_code(id_, scales[ib]) << (4 * (ib % 2)))
        for j in range(QK_K // 8):
            _put_u16(out, o + 2 + 2 * j, q2[j])


@njit(cache=True, error_model="numpy", _nrt=False)
def _quantize_row_iq2_s(x, qw, has_qw, out, tabs, work):
    nbl = x.shape[0] // QK_K
    scales, weight, waux, xval, L, signs = work.scales, work.weight, work.waux, work.xval, work.L, work.signs
    kmap, nbr_list, _ = tabs
    for ibl in range(nbl):
        o = ibl * 82
        xbl = x[QK_K * ibl:QK_K * (ibl + 1)]
        for i in range(82):
            out[o + i] = 0
        max_scale = F0
        sigma2 = _sigma2(xbl, np.float32(2.0))
        for ib in range(QK_K // 16):
            xb = xbl[16 * ib:16 * ib + 16]
            _weights(xb, qw, QK_K * ibl + 16 * ib, has_qw, sigma2, 16, weight, waux)
            for k in range(2):
                signs[k] = plain_signs(xb, 8 * k, xval)
            if largest(xval, 16) < GROUP_MAX_EPS_IQ2_S:
                scales[ib] = F0
                continue
            scale = _search16(work, kmap, nbr_list)
            if scale < F0:
                scale = -scale
                flip_signs(signs, 2, 255)
            for k in range(2):
                gi = kmap[grid_point(L, 8 * k)]
                i8 = 2 * ib + k
                out[o + 2 + i8] = np.uint8(gi & 255)
                out[o + 66 + i8 // 4] |= np.uint8((gi >> 8) << (2 * (i8 % 4)))
                out[o + 2 + 32 + i8] = np.uint8(signs[k])
            scales[ib] = scale
            max_scale = max_scale if max_scale > scale else scale
        if max_scale == F0:
            continue
        d = max_scale / np.float32(31.0)
        _put_u16(out, o, fp32_to_fp16_bits(d * np.float32(0.9875)))
        id_ = F1 / d
        for ib in range(QK_K // 16):
            out[o + 74 + ib // 2] |= np.uint8(scale_code(id_, scales[ib]) << (4 * (ib % 2)))


@njit(cache=True, error_model="numpy", _nrt=False)
def _quantize_row_iq2_xxs(x, qw, out, tabs, work):
    nbl = x.shape[0] // QK_K
    scales, weight, waux, xval, L, signs, q2 = work.scales, work.weight, work.waux, work.xval, work.L, work.signs, work.q2
    Lqp = work.Lqp  # uint8 as in C: a negative level wraps to 256 + l
    t, t4, lv, sqx, sq2 = work.t, work.t4, work.lv, work.sqx, work.sq2
    kmap, nbr_list, _ = tabs
    for ibl in range(nbl):
        o = ibl * 66
        xbl = x[QK_K * ibl:QK_K * (ibl + 1)]
        for i in range(66):
            out[o + i] = 0
        q2[:] = 0
        max_scale = F0
        sigma2 = _sigma2(xbl, F1)
        for ib in range(QK_K // 32):
            xb = xbl[32 * ib:32 * ib + 32]
            _weights(xb, qw, QK_K * ibl + 32 * ib, True, sigma2, 32, weight, waux)
            for k in range(4):
                signs[k] = _signs_with_parity(xb, 8 * k, weight, xval)
            if largest(xval, 32) < GROUP_MAX_EPS:
                scales[ib] = F0
                continue
            scale = make_qp_quants(32, 4, xval, Lqp, weight)
            for i in range(32):
                L[i] = Lqp[i]
            eff_max = scale * np.float32(3.0)
            if eff_max <= F0:
                scales[ib] = F0
                continue
            best = F0
            _trial_scales(13, 16, eff_max, 32, work, kmap, nbr_list)
            sbest = -1
            for s in range(13):
                sumqx = sqx[s]
                sumq2 = sq2[s]
                if sumq2 > F0 and sumqx * sumqx > best * sumq2:
                    scale = sumqx / sumq2
                    best = scale * sumqx
                    sbest = s
            if sbest >= 0:
                for i in range(32):
                    L[i] = lv[i * 16 + sbest]
            if scale > F0:
                id_ = F1 / scale
                for k in range(4):
                    u = _levels_at(id_, xval, 8 * k, L)
                    if kmap[u] < 0:
                        _best_neighbour(u, kmap, nbr_list, xval, waux, 8 * k, scale, L, 8 * k, 1, t, t4)
                sumqx, sumq2 = _sums(weight, xval, L, 32)
                if sumq2 > F0:
                    scale = sumqx / sumq2
            if scale < F0:
                scale = -scale
                flip_signs(signs, 4, 127)
            for k in range(4):
                gi = kmap[grid_point(L, 8 * k)]
                q2[2 * ib] |= np.uint32(gi) << np.uint32(8 * k)
                q2[2 * ib + 1] |= np.uint32(signs[k]) << np.uint32(7 * k)
            scales[ib] = scale
            max_scale = max_scale if max_scale > scale else scale
        if max_scale == F0:
            continue
        d = max_scale / np.float32(31.0)
        _put_u16(out, o, fp32_to_fp16_bits(d))
        id_ = F1 / d
        for ib in range(QK_K // 32):
            q2[2 * ib + 1] |= np.uint32(scale_code(id_, scales[ib])) << np.uint32(28)
        for j in range(QK_K // 16):
            v = q2[j]
            for b in range(4):
                out[o + 2 + 4 * j + b] = np.uint8((v >> np.uint32(8 * b)) & np.uint32(255))


@njit(parallel=True, cache=True, error_model="numpy")
def _quantize_iq2_xs_rows(rows, imatrix, out, tabs):
    for r in prange(rows.shape[0]):
        _quantize_row_iq2_xs(rows[r], imatrix, out[r], tabs, _work(24, 16))


@njit(parallel=True, cache=True, error_model="numpy")
def _quantize_iq2_xxs_rows(rows, imatrix, out, tabs):
    for r in prange(rows.shape[0]):
        _quantize_row_iq2_xxs(rows[r], imatrix, out[r], tabs, _work(16, 32))


@njit(parallel=True, cache=True, error_model="numpy")
def _quantize_iq2_s_rows(rows, imatrix, has_imatrix, out, tabs):
    for r in prange(rows.shape[0]):
        _quantize_row_iq2_s(rows[r], imatrix, has_imatrix, out[r], tabs, _work(24, 16))


@njit(parallel=True, cache=True, error_model="numpy")
def _dequantize_iq2_xxs_rows(data, out, grid, signs_tab, fp16):
    nb = out.shape[1] // QK_K
    for r in prange(data.shape[0]):
        q = data[r]
        y = out[r]
        for i in range(nb):
            o = 66 * i
            d = fp16[np.int32(q[o]) | (np.int32(q[o + 1]) << 8)]
            for ib32 in range(8):
                p = o + 2 + 8 * ib32
                aux1 = np.uint32(0)
                for b in range(4):
                    aux1 |= np.uint32(q[p + 4 + b]) << np.uint32(8 * b)
                db = d * (FHALF + np.float32(aux1 >> np.uint32(28))) * np.float32(0.25)
                for l in range(4):
                    g = np.int32(q[p + l])
                    s = signs_tab[(aux1 >> np.uint32(7 * l)) & np.uint32(127)]
                    for j in range(8):
                        v = db * np.float32(grid[g, j])
                        y[QK_K * i + 32 * ib32 + 8 * l + j] = -v if (s >> j) & 1 else v


@njit(parallel=True, cache=True, error_model="numpy")
def _dequantize_iq2_xs_rows(data, out, grid, signs_tab, fp16):
    nb = out.shape[1] // QK_K
    for r in prange(data.shape[0]):
        q = data[r]
        y = out[r]
        for i in range(nb):
            o = 74 * i
            d = fp16[np.int32(q[o]) | (np.int32(q[o + 1]) << 8)]
            for ib32 in range(8):
                sc = np.int32(q[o + 66 + ib32])
                db0 = d * (FHALF + np.float32(sc & 15)) * np.float32(0.25)
                db1 = d * (FHALF + np.float32(sc >> 4)) * np.float32(0.25)
                for l in range(4):
                    p = o + 2 + 2 * (4 * ib32 + l)
                    v16 = np.int32(q[p]) | (np.int32(q[p + 1]) << 8)
                    g = v16 & 511
                    s = signs_tab[v16 >> 9]
                    db = db0 if l < 2 else db1
                    for j in range(8):
                        v = db * np.float32(grid[g, j])
                        y[QK_K * i + 32 * ib32 + 8 * l + j] = -v if (s >> j) & 1 else v


@njit(parallel=True, cache=True, error_model="numpy")
def _dequantize_iq2_s_rows(data, out, grid, fp16):
    nb = out.shape[1] // QK_K
    for r in prange(data.shape[0]):
        q = data[r]
        y = out[r]
        for i in range(nb):
            o = 82 * i
            d = fp16[np.int32(q[o]) | (np.int32(q[o + 1]) << 8)]
            for ib32 in range(8):
                sc = np.int32(q[o + 74 + ib32])
                db0 = d * (FHALF + np.float32(sc & 15)) * np.float32(0.25)
                db1 = d * (FHALF + np.float32(sc >> 4)) * np.float32(0.25)
                qh = np.int32(q[o + 66 + ib32])
                for l in range(4):
                    g = np.int32(q[o + 2 + 4 * ib32 + l]) | ((qh << (8 - 2 * l)) & 0x300)
                    s = np.int32(q[o + 34 + 4 * ib32 + l])
                    db = db0 if l < 2 else db1
                    for j in range(8):
                        v = db * np.float32(grid[g, j])
                        y[QK_K * i + 32 * ib32 + 8 * l + j] = -v if (s >> j) & 1 else v


# ------------------------------------------------------------------------------------------------
# Python entry points (the family-module contract)




def _sign_table() -> np.ndarray:
    return ksigns().astype(np.int32)


def weights_or_zero(imatrix) -> np.ndarray:
    return np.zeros(1, dtype=np.float32) if imatrix is None else imatrix


def zeroed_rows(name: str, rows: np.ndarray) -> np.ndarray:
    return np.zeros((rows.shape[0], known_type(name).row_bytes(rows.shape[1])), dtype=np.uint8)


def quantize_iq2_xxs(rows: np.ndarray, imatrix) -> np.ndarray:
    out = zeroed_rows("IQ2_XXS", rows)
    _quantize_iq2_xxs_rows(rows, weights_or_zero(imatrix), out, grid_tables(256).kernel_args())
    return out


def quantize_iq2_xs(rows: np.ndarray, imatrix) -> np.ndarray:
    out = zeroed_rows("IQ2_XS", rows)
    _quantize_iq2_xs_rows(rows, weights_or_zero(imatrix), out, grid_tables(512).kernel_args())
    return out


def quantize_iq2_s(rows: np.ndarray, imatrix) -> np.ndarray:
    out = zeroed_rows("IQ2_S", rows)
    _quantize_iq2_s_rows(rows, weights_or_zero(imatrix), imatrix is not None, out, grid_tables(1024).kernel_args())
    return out


def dequantize_on_grid(kernel, name: str, data: np.ndarray, n_per_row: int, *tables) -> np.ndarray:
    out = np.empty((data.shape[0], n_per_row), dtype=np.float32)
    kernel(data, out, codebook(name).astype(np.int32), *tables, FP16_TO_FP32)
    return out


def dequantize_iq2_xxs(data: np.ndarray, n_per_row: int) -> np.ndarray:
    return dequantize_on_grid(_dequantize_iq2_xxs_rows, "IQ2_XXS", data, n_per_row, _sign_table())


def dequantize_iq2_xs(data: np.ndarray, n_per_row: int) -> np.ndarray:
    return dequantize_on_grid(_dequantize_iq2_xs_rows, "IQ2_XS", data, n_per_row, _sign_table())


def dequantize_iq2_s(data: np.ndarray, n_per_row: int) -> np.ndarray:
    return dequantize_on_grid(_dequantize_iq2_s_rows, "IQ2_S", data, n_per_row)
