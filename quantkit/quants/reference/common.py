"""Helpers shared by the plain references: ggml-quants.c's small functions, one to one.

Every function is plain Numba (``@plain``: no parallel loops, no fast-math, division by zero gives
inf/nan as in C) and keeps C's float32 order: ints are turned into ``np.float32`` before they meet
a float (a Numba ``float32 * int`` is float64), and literals are ``np.float32``. Weights arrays
may be empty, meaning C's NULL. Reused from the fast side, being plain already or tables:
``make_qp_quants`` (quants/search.py), the sign helpers and the IQ grids' neighbour tables
(quants/iq2.py, iq3.py).
"""

import functools

import numba
import numpy as np
from gguf import QK_K  # noqa: F401  (256 values per super-block)

from ...types import quant_type
from ..iq2 import _signs_with_parity as signs_with_parity  # plain already
from ..iq2 import flip_signs, grid_tables, plain_signs  # noqa: F401  (flip_signs re-exported)
from ..numeric import fp32_to_fp16_bits, nearest_int, put_fp16, roundf  # noqa: F401  (re-exported)
from ..search import make_qp_quants  # noqa: F401  (already a plain transcription; L is uint8 as in C)

plain = numba.njit(cache=True, error_model="numpy")

F0 = np.float32(0.0)
F1 = np.float32(1.0)
GROUP_MAX_EPS = np.float32(1e-15)
FLT_MAX = np.float32(3.4028234663852886e38)


@plain
def put_u16(y, pos, value):
    y[pos] = np.uint8(value & 0xFF)
    y[pos + 1] = np.uint8((value >> 8) & 0xFF)


@plain
def put_u32(y, pos, value):
    for k in range(4):
        y[pos + k] = np.uint8((value >> (8 * k)) & 0xFF)


@plain
def row_sigma2(x):
    """sum of x^2 over ``x``, in order (C's ``sum_x2``)."""
    s = F0
    for v in x:
        s += v * v
    return s


@plain
def block_sigma2(xs, factor):
    """factor * sum x^2 / n over a block (C's ``sigma2``: factor 1 or 2)."""
    return factor * row_sigma2(xs) / np.float32(xs.size)


@plain
def imatrix_weights(x, qw, sigma2, weight):
    """weight[j] = qw[j] * sqrtf(sigma2 + x[j]^2): the imatrix weight of every ``*_impl``; returns their sum."""
    total = F0
    for j in range(x.size):
        weight[j] = qw[j] * np.sqrt(sigma2 + x[j] * x[j])
        total += weight[j]
    return total


@plain
def abs_max_signed(x):
    """The first value of largest magnitude and that magnitude (C's ``if (ax > amax)`` loop)."""
    mx = F0
    amax = F0
    for v in x:
        ax = np.abs(v)
        if ax > amax:
            amax = ax
            mx = v
    return mx, amax


@plain
def symmetric_fit(n, nmax, x, L, qw, iscale, offset):
    """Levels l = clamp(nearest_int(iscale*x), -nmax, nmax-1), stored as l + offset; returns
    (sum w*x*l, sum w*l^2) with weights qw, or x^2 when qw is empty."""
    sumlx = F0
    suml2 = F0
    for i in range(n):
        l = max(-nmax, min(nmax - 1, nearest_int(iscale * x[i])))
        L[i] = l + offset
        w = qw[i] if qw.size else x[i] * x[i]
        fl = np.float32(l)
        sumlx += w * x[i] * fl
        suml2 += w * fl * fl
    return sumlx, suml2


@plain
def symmetric_start(n, nmax, x, L, qw, offset):
    """The start of make_qx_quants and make_q3_quants: ``symmetric_fit`` at iscale -nmax/max. Returns
    (the value of largest magnitude, sumlx, suml2); all 0, with L zeroed, when max|x| < GROUP_MAX_EPS."""
    mx, amax = abs_max_signed(x[:n])
    if amax < GROUP_MAX_EPS:
        L[:n] = 0
        return F0, F0, F0
    sumlx, suml2 = symmetric_fit(n, nmax, x, L, qw, np.float32(-nmax) / mx, offset)
    return mx, sumlx, suml2


@plain
def make_qx_quants(n, nmax, x, L, qw):
    """``make_qx_quants(n, nmax, x, L, rmse_type=1, qw)``: symmetric levels L in [0, 2*nmax), returns the scale.

    Weights are qw (or x^2 when qw is empty); tries iscale = -(nmax + 0.1*is)/max, is = -9..9, and
    keeps the best weighted least-squares fit sumlx^2/suml2.
    """
    mx, sumlx, suml2 = symmetric_start(n, nmax, x, L, qw, nmax)
    if mx == F0:
        return F0
    scale = sumlx / suml2 if suml2 != F0 else F0
    best = scale * sumlx
    Laux = np.empty(n, np.int32)
    for step in range(-9, 10):
        if step == 0:
            continue
        iscale = -(np.float32(nmax) + np.float32(0.1) * np.float32(step)) / mx
        sumlx, suml2 = symmetric_fit(n, nmax, x, Laux, qw, iscale, nmax)
        if suml2 > 0 and sumlx * sumlx > best * suml2:
            L[:n] = Laux
            scale = sumlx / suml2
            best = scale * sumlx
    return scale


@plain
def make_q3_quants(n, nmax, x, L):
    """``make_q3_quants(..., do_rmse=true)``: levels in [0, 2*nmax) refined one coordinate at a time
    (weights x^2) while sumlx^2/suml2 grows, at most 5 rounds; returns the scale."""
    mx, sumlx, suml2 = symmetric_start(n, nmax, x, L, np.empty(0, np.float32), 0)
    if mx == F0:
        return F0
    for _ in range(5):
        n_changed = 0
        for i in range(n):
            w = x[i] * x[i]
            fl = np.float32(L[i])
            slx = sumlx - w * x[i] * fl
            if slx > 0:
                sl2 = suml2 - w * fl * fl
                new_l = max(-nmax, min(nmax - 1, nearest_int(x[i] * sl2 / slx)))
                if new_l != L[i]:
                    slx += w * x[i] * np.float32(new_l)
                    sl2 += w * np.float32(new_l) * np.float32(new_l)
                    if sl2 > 0 and slx * slx * suml2 > sumlx * sumlx * sl2:
                        L[i], sumlx, suml2 = new_l, slx, sl2
                        n_changed += 1
        if n_changed == 0:
            break
    for i in range(n):
        L[i] += nmax
    return sumlx / suml2 if suml2 > 0 else F0


@plain
def make_qkx_quants(n, nmax, x, weights, L, Laux, rmin, rdelta, nstep, use_mad):
    """``make_qkx2_quants`` (= ``make_qkx3_quants`` with weights given: for finite x, max >= min
    after min is clamped to <= 0, so their ``max == min`` and ``max <= min`` tests agree).

    Levels L in [0, nmax] for x ~ scale*L - the_min; tries iscale = (rmin + rdelta*is + nmax)/(max - min),
    is = 0..nstep, refitting scale and min by weighted least squares; returns (scale, the_min).
    """
    mn = x[0]
    mx = x[0]
    sum_w = weights[0]
    sum_x = sum_w * x[0]
    for i in range(1, n):
        mn = min(mn, x[i])
        mx = max(mx, x[i])
        w = weights[i]
        sum_w += w
        sum_x += w * x[i]
    if mn > 0:
        mn = F0
    if mx == mn:
        L[:n] = 0
        return F0, -mn
    iscale = np.float32(nmax) / (mx - mn)
    scale = F1 / iscale
    best_error = F0
    for i in range(n):
        L[i] = max(0, min(nmax, nearest_int(iscale * (x[i] - mn))))
        diff = scale * np.float32(L[i]) + mn - x[i]
        diff = np.abs(diff) if use_mad else diff * diff
        best_error += weights[i] * diff
    for step in range(nstep + 1):
        iscale = (rmin + rdelta * np.float32(step) + np.float32(nmax)) / (mx - mn)
        sum_l = F0
        sum_l2 = F0
        sum_xl = F0
        for i in range(n):
            l = max(0, min(nmax, nearest_int(iscale * (x[i] - mn))))
            Laux[i] = l
            w = weights[i]
            fl = np.float32(l)
            sum_l += w * fl
            sum_l2 += w * fl * fl
            sum_xl += w * fl * x[i]
        D = sum_w * sum_l2 - sum_l * sum_l
        if D > 0:
            this_scale = (sum_w * sum_xl - sum_x * sum_l) / D
            this_min = (sum_l2 * sum_x - sum_l * sum_xl) / D
            if this_min > 0:
                this_min = F0
                this_scale = sum_xl / sum_l2
            cur_error = F0
            for i in range(n):
                diff = this_scale * np.float32(Laux[i]) + this_min - x[i]
                diff = np.abs(diff) if use_mad else diff * diff
                cur_error += weights[i] * diff
            if cur_error < best_error:
                L[:n] = Laux[:n]
                best_error = cur_error
                scale = this_scale
                mn = this_min
    return scale, -mn


@plain
def best_index_int8(values, x):
    """``best_index_int8``: index of the level in the sorted int8 ``values`` nearest to x (bisection)."""
    n = values.size
    if x <= np.float32(values[0]):
        return 0
    if x >= np.float32(values[n - 1]):
        return n - 1
    lo = 0
    hi = n - 1
    while hi - lo > 1:
        mid = (lo + hi) // 2
        if x < np.float32(values[mid]):
            hi = mid
        else:
            lo = mid
    return hi - 1 if x - np.float32(values[hi - 1]) < np.float32(values[hi]) - x else hi


def quantize_rows(type_name, rows, imatrix, quantize_row):
    """Run ``quantize_row(x, qw, y)`` on every row into zeroed bytes (the type's row size from the
    type table); ``qw`` is the imatrix or an empty array (C's NULL)."""
    rows = np.ascontiguousarray(rows, dtype=np.float32)
    qw = np.empty(0, np.float32) if imatrix is None else np.ascontiguousarray(imatrix, dtype=np.float32)
    out = np.zeros((rows.shape[0], quant_type(type_name).row_bytes(rows.shape[1])), dtype=np.uint8)
    for r in range(rows.shape[0]):
        quantize_row(rows[r], qw, out[r])
    return out


def quantize_blocks(type_name, rows, imatrix, quantize_block, *params):
    """Run ``quantize_block(xs, qw, y8, *params)`` on every block of every row (C's loop over ``nb``):
    its values, its part of the imatrix (empty without one: C's NULL) and its bytes, zeroed (C's memset)."""
    qt = quant_type(type_name)
    n, nbytes = qt.block_size, qt.type_size

    def quantize_row(x, qw, y):
        for b in range(x.size // n):
            quantize_block(x[b * n:(b + 1) * n], qw[b * n:(b + 1) * n], y[b * nbytes:(b + 1) * nbytes], *params)

    return quantize_rows(type_name, rows, imatrix, quantize_row)


# ----------------------------------------------------------------------------------- IQ2 / IQ3 lattices
# A codebook ("grid") entry is a group of 8 (IQ2) or 4 (IQ3) levels, grid value 2*level + 1.
# ``levels`` (entries, group) holds them; ``kmap[code]`` (code: level i at bits 2i or 3i) is the
# entry of an on-grid point or -(offset + 1) of its list in ``neighbours``: count, then entries
# (iq2xs_init_impl / iq3xs_init_impl).



@plain
def lattice_code(L, group):
    """kmap key of one group's levels."""
    bits = 3 if group == 4 else 2
    u = 0
    for i in range(group):
        u |= L[i] << (bits * i)
    return u


@plain
def best_neighbour(levels, neighbours, start, xval, waux, scale, L):
    """``iq2_find_best_neighbour`` / ``iq3_find_best_neighbour``: of the entries listed at ``start``,
    the first with the least sum waux*(scale*q - x)^2; writes its levels to L, returns it."""
    best_d2 = FLT_MAX
    grid_index = -1
    for j in range(1, np.int64(neighbours[start]) + 1):
        g = np.int64(neighbours[start + j])
        d2 = F0
        for i in range(levels.shape[1]):
            diff = scale * np.float32(2 * levels[g, i] + 1) - xval[i]
            d2 += waux[i] * diff * diff
        if d2 < best_d2:
            best_d2 = d2
            grid_index = g
    for i in range(levels.shape[1]):
        L[i] = levels[grid_index, i]
    return grid_index


@plain
def lattice_snap(xval, waux, inv, scale, L, levels, kmap, neighbours):
    """One group's levels nearest_int(0.5*(inv*x - 1)), clamped; an off-grid point is replaced by
    its best neighbour at ``scale``. Returns whether the rounded point was on the grid."""
    group = levels.shape[1]
    kmax = 8 if group == 4 else 3
    for i in range(group):
        L[i] = max(0, min(kmax - 1, nearest_int(np.float32(0.5) * (inv * xval[i] - F1))))
    u = lattice_code(L, group)
    if kmap[u] >= 0:
        return True
    best_neighbour(levels, neighbours, -kmap[u] - 1, xval, waux, scale, L)
    return False


@plain
def lattice_fit(weight, xval, L):
    """(sum w*x*q, sum w*q^2) for grid values q = 2L + 1."""
    sumqx = F0
    sumq2 = F0
    for i in range(xval.size):
        q = np.float32(2 * L[i] + 1)
        sumqx += weight[i] * xval[i] * q
        sumq2 += weight[i] * q * q
    return sumqx, sumq2


@plain
def lattice_search(xval, weight, waux, L, ref_max, scale, nsteps, step, resnap, levels, kmap, neighbours):
    """The scale search of one sub-block of |x| values (levels into L; returns the scale).

    Tries inv = (2*kMaxQ - 1 + is*step)/ref_max, is = -nsteps..nsteps, keeping the best weighted fit
    (starting from ``scale``, best 0). Then, if the scale is > 0, snaps groups again at the chosen
    scale and refits: resnap 0 the off-grid groups only, 1 all groups when one is off-grid,
    2 all groups always.
    """
    group = levels.shape[1]
    ngroups = xval.size // group
    center = np.float32(15.0) if group == 4 else np.float32(5.0)
    Laux = np.zeros(xval.size, np.int32)
    on_grid = np.full(ngroups, resnap == 0)
    on_grid_aux = np.zeros(ngroups, np.bool_)
    best = F0
    for s in range(-nsteps, nsteps + 1):
        inv = (center + np.float32(s) * step) / ref_max
        for k in range(ngroups):
            g = group * k
            on_grid_aux[k] = lattice_snap(xval[g:], waux[g:], inv, F1 / inv, Laux[g:], levels, kmap, neighbours)
        sumqx, sumq2 = lattice_fit(weight, xval, Laux)
        if sumq2 > 0 and sumqx * sumqx > best * sumq2:
            scale = sumqx / sumq2
            best = scale * sumqx
            L[:] = Laux
            on_grid[:] = on_grid_aux
    if (resnap == 2 or not on_grid.all()) and scale > 0:
        for k in range(ngroups):
            if resnap == 0 and on_grid[k]:
                continue
            g = group * k
            lattice_snap(xval[g:], waux[g:], F1 / scale, scale, L[g:], levels, kmap, neighbours)
        sumqx, sumq2 = lattice_fit(weight, xval, L)
        if sumq2 > 0:
            scale = sumqx / sumq2
    return scale


@plain
def lattice_prepare(xs, qw, ib, n, sigma2, bias):
    """Sub-block ib of n values of a block: (x, weight, sqrt(weight), |x|); weight qw * sqrtf(sigma2 +
    x^2) with an imatrix, else bias + x^2 (bias 0.25*sigma2 for IQ2_S, 0 for IQ3); |x| as C's
    ``x >= 0 ? x : -x``."""
    xb = xs[n * ib:n * (ib + 1)]
    weight = np.empty(n, np.float32)
    waux = np.empty(n, np.float32)
    xval = np.empty(n, np.float32)
    if qw.size:
        imatrix_weights(xb, qw[n * ib:n * (ib + 1)], sigma2, weight)
    else:
        for i in range(n):
            weight[i] = bias + xb[i] * xb[i]
    for i in range(n):
        waux[i] = np.sqrt(weight[i])
        xval[i] = xb[i] if xb[i] >= 0 else -xb[i]
    return xb, weight, waux, xval


@plain
def super_scale(y8, max_scale, fudge, clear):
    """An IQ2/IQ3 block's d = max_scale / 31, stored at y8[0] as fp16 d * fudge. For max_scale 0:
    nothing stored, the block's bytes zeroed when ``clear`` (IQ2_XS, IQ2_S, IQ3_XXS), returns 0."""
    if max_scale == F0:
        if clear:
            y8[:] = 0
        return F0
    d = max_scale / np.float32(31.0)
    put_fp16(y8, 0, d * fudge)
    return d


@plain
def group_signs(xb, weight, xval, even):
    """Sign bits of each group of 8 values, |x| into xval (``quants/iq2.py``'s plain helpers). With
    ``even`` (IQ2_XXS/XS, IQ3_XXS store 7 of 8), an odd count of minus signs flips the value with the
    least weight*x^2 (its xval becomes -|x|) and the 7 low bits are kept."""
    signs = np.zeros(xb.size // 8, np.int64)
    for k in range(signs.size):
        signs[k] = signs_with_parity(xb, 8 * k, weight, xval) if even else plain_signs(xb, 8 * k, xval)
    return signs


@plain
def scale_nibble(inv, scale):
    """The 4-bit code of an IQ sub-block scale: nearest_int(0.5*(inv*scale - 1)) in [0, 15]."""
    return max(0, min(15, nearest_int(np.float32(0.5) * (inv * scale - F1))))


@plain
def first_max(xval):
    """C's ``max = MAX(max, xval[i])`` loop."""
    mx = xval[0]
    for i in range(1, xval.size):
        mx = max(xval[i], mx)
    return mx


@functools.cache
def iq2_grid_tables(grid_size):
    """(levels, kmap, neighbours) of the 256/512/1024 (IQ2) or 2048 (IQ1) entry grid, in C's plain
    layout; from ``quants/iq2.py``'s ``grid_tables``, whose lists keep the entry in bits 48+ of a code."""
    tables = grid_tables(grid_size)
    neighbours = tables.nbr_list.copy()
    pos = 0
    while pos < neighbours.size:
        count = int(neighbours[pos])
        neighbours[pos + 1:pos + 1 + count] >>= 48
        pos += 1 + count
    return tables.levels, tables.kmap, neighbours
