"""Helpers shared by the plain references: ggml-quants.c's small functions, one to one.

Every function is plain Numba (``@plain``: no parallel loops, no fast-math, division by zero gives
inf/nan as in C) and keeps C's float32 order: ints are turned into ``np.float32`` before they meet
a float (a Numba ``float32 * int`` is float64), and literals are ``np.float32``. Weights arrays
may be empty, meaning C's NULL.
"""

import numba
import numpy as np

from ..numeric import FP16_TO_FP32, fp32_to_fp16_bits, get_fp16, nearest_int, put_fp16, roundf  # noqa: F401
from ..search import make_qp_quants  # noqa: F401  (already a plain transcription; L is uint8 as in C)

plain = numba.njit(cache=True, error_model="numpy")

F0 = np.float32(0.0)
F1 = np.float32(1.0)
GROUP_MAX_EPS = np.float32(1e-15)
QK_K = 256


@plain
def fp16_round(value):
    """``GGML_FP16_TO_FP32(GGML_FP32_TO_FP16(value))``: the value as an fp16 field stores it."""
    return FP16_TO_FP32[np.int64(fp32_to_fp16_bits(np.float32(value)))]


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
def make_qx_quants(n, nmax, x, L, qw):
    """``make_qx_quants(n, nmax, x, L, rmse_type=1, qw)``: symmetric levels L in [0, 2*nmax), returns the scale.

    Weights are qw (or x^2 when qw is empty); tries iscale = -(nmax + 0.1*is)/max, is = -9..9, and
    keeps the best weighted least-squares fit sumlx^2/suml2.
    """
    mx, amax = abs_max_signed(x[:n])
    if amax < GROUP_MAX_EPS:
        L[:n] = 0
        return F0
    iscale = np.float32(-nmax) / mx
    sumlx = F0
    suml2 = F0
    for i in range(n):
        l = max(-nmax, min(nmax - 1, nearest_int(iscale * x[i])))
        L[i] = l + nmax
        w = qw[i] if qw.size else x[i] * x[i]
        fl = np.float32(l)
        sumlx += w * x[i] * fl
        suml2 += w * fl * fl
    scale = sumlx / suml2 if suml2 != F0 else F0
    best = scale * sumlx
    for step in range(-9, 10):
        if step == 0:
            continue
        iscale = -(np.float32(nmax) + np.float32(0.1) * np.float32(step)) / mx
        sumlx = F0
        suml2 = F0
        for i in range(n):
            l = max(-nmax, min(nmax - 1, nearest_int(iscale * x[i])))
            w = qw[i] if qw.size else x[i] * x[i]
            fl = np.float32(l)
            sumlx += w * x[i] * fl
            suml2 += w * fl * fl
        if suml2 > 0 and sumlx * sumlx > best * suml2:
            for i in range(n):
                L[i] = nmax + max(-nmax, min(nmax - 1, nearest_int(iscale * x[i])))
            scale = sumlx / suml2
            best = scale * sumlx
    return scale


@plain
def make_q3_quants(n, nmax, x, L):
    """``make_q3_quants(..., do_rmse=true)``: levels in [0, 2*nmax) refined one coordinate at a time
    (weights x^2) while sumlx^2/suml2 grows, at most 5 rounds; returns the scale."""
    mx, amax = abs_max_signed(x[:n])
    if amax < GROUP_MAX_EPS:
        L[:n] = 0
        return F0
    iscale = np.float32(-nmax) / mx
    sumlx = F0
    suml2 = F0
    for i in range(n):
        l = max(-nmax, min(nmax - 1, nearest_int(iscale * x[i])))
        L[i] = l
        w = x[i] * x[i]
        sumlx += w * x[i] * np.float32(l)
        suml2 += w * np.float32(l) * np.float32(l)
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
                        L[i] = new_l
                        sumlx = slx
                        suml2 = sl2
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
        if x[i] < mn:
            mn = x[i]
        if x[i] > mx:
            mx = x[i]
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


def quantize_rows(rows, imatrix, row_bytes, quantize_row):
    """Run ``quantize_row(x, qw, y)`` on every row; ``qw`` is the imatrix or an empty array (C's NULL)."""
    rows = np.ascontiguousarray(rows, dtype=np.float32)
    qw = np.empty(0, np.float32) if imatrix is None else np.ascontiguousarray(imatrix, dtype=np.float32)
    out = np.zeros((rows.shape[0], row_bytes), dtype=np.uint8)
    for r in range(rows.shape[0]):
        quantize_row(rows[r], qw, out[r])
    return out
