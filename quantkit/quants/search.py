"""Scale searches shared by the quant families (llama.cpp's make_q*_quants), as Numba functions.

Each works on one group of ``n`` values, writes the chosen integer levels into ``L`` and returns
the scale. Arithmetic is float32 in the C order so that results match llama.cpp bit for bit.
"""

import numpy as np
from numba import njit

from .numeric import nearest_int

GROUP_MAX_EPS = np.float32(1e-15)


@njit(inline="always", cache=True)
def _qx_weight(x, qw, i, rmse_type):
    if qw.size > 0:
        return qw[i]
    if rmse_type == 1:
        return x[i] * x[i]
    if rmse_type == 2:
        return np.float32(1.0)
    if rmse_type == 3:
        return np.abs(x[i])
    return np.sqrt(np.abs(x[i]))


N_QX_CANDIDATES = 19  # candidate 0: -nmax/max; then -(nmax + 0.1*is)/max for is = -9..-1, 1..9


@njit(cache=True)
def make_qx_quants(n, nmax, x, L, rmse_type, qw):
    """Symmetric levels in [0, 2*nmax) for ``x`` (an empty ``qw`` means "no weights").

    Tries the scale -nmax/max and 18 nearby ones, keeping the one with the best weighted
    least-squares fit (rmse_type picks the weight when qw is empty; 0 means no search,
    negative means one refinement only). All candidates' sums are accumulated side by side in
    one pass over x (each in C's order, so the result is llama.cpp's), which vectorizes.
    """
    fnmax = np.float32(nmax)
    mx = np.float32(0.0)
    amax = np.float32(0.0)
    for i in range(n):
        ax = np.abs(x[i])
        if ax > amax:
            amax = ax
            mx = x[i]
    if amax < GROUP_MAX_EPS:
        for i in range(n):
            L[i] = 0
        return np.float32(0.0)
    iscale0 = -fnmax / mx
    if rmse_type == 0:
        for i in range(n):
            l = nearest_int(iscale0 * x[i])
            L[i] = nmax + max(-nmax, min(nmax - 1, l))
        return np.float32(1.0) / iscale0
    return_early = rmse_type < 0
    if return_early:
        rmse_type = -rmse_type
    ncand = 1 if return_early else N_QX_CANDIDATES
    iscales = np.empty(N_QX_CANDIDATES, dtype=np.float32)
    sumlx = np.zeros(N_QX_CANDIDATES, dtype=np.float32)
    suml2 = np.zeros(N_QX_CANDIDATES, dtype=np.float32)
    iscales[0] = iscale0
    k = 1
    for step in range(-9, 10):
        if step != 0:
            iscales[k] = -(fnmax + np.float32(0.1) * np.float32(step)) / mx
            k += 1
    # every candidate's sums, each accumulated in C's order over i; candidates side by side
    for i in range(n):
        xi = x[i]
        w = _qx_weight(x, qw, i, rmse_type)
        wx = w * xi
        for c in range(ncand):
            l = np.float32(max(-nmax, min(nmax - 1, nearest_int(iscales[c] * xi))))
            sumlx[c] += wx * l
            suml2[c] += w * l * l
    scale = sumlx[0] / suml2[0] if suml2[0] != np.float32(0.0) else np.float32(0.0)
    if return_early:
        for i in range(n):
            L[i] = nmax + max(-nmax, min(nmax - 1, nearest_int(iscale0 * x[i])))
        if suml2[0] > np.float32(0.0):
            return np.float32(0.5) * (scale + np.float32(1.0) / iscale0)
        return np.float32(1.0) / iscale0
    best = scale * sumlx[0]
    chosen = 0
    for c in range(1, N_QX_CANDIDATES):
        if suml2[c] > np.float32(0.0) and sumlx[c] * sumlx[c] > best * suml2[c]:
            scale = sumlx[c] / suml2[c]
            best = scale * sumlx[c]
            chosen = c
    for i in range(n):
        L[i] = nmax + max(-nmax, min(nmax - 1, nearest_int(iscales[chosen] * x[i])))
    return scale


@njit(cache=True)
def make_qkx3_quants(n, nmax, x, weights, L, Laux, rmin, rdelta, nstep, use_mad):
    """Asymmetric levels in [0, nmax] with a minimum: returns (scale, -min).

    Starts from the range [min(x, 0), max(x)] and tries nstep+1 scales around nmax/range, each
    followed by a weighted least-squares fit of scale and min; keeps the lowest weighted error
    (absolute when use_mad). An empty ``weights`` means x*x.
    """
    has_w = weights.size > 0
    mn = x[0]
    mx = x[0]
    sum_w = weights[0] if has_w else x[0] * x[0]
    sum_x = sum_w * x[0]
    for i in range(1, n):
        if x[i] < mn:
            mn = x[i]
        if x[i] > mx:
            mx = x[i]
        w = weights[i] if has_w else x[i] * x[i]
        sum_w += w
        sum_x += w * x[i]
    if mn > np.float32(0.0):
        mn = np.float32(0.0)
    if mx <= mn:
        for i in range(n):
            L[i] = 0
        return np.float32(0.0), -mn
    fnmax = np.float32(nmax)
    iscale = fnmax / (mx - mn)
    scale = np.float32(1.0) / iscale
    best_mad = np.float32(0.0)
    for i in range(n):
        l = nearest_int(iscale * (x[i] - mn))
        L[i] = max(0, min(nmax, l))
        diff = scale * np.float32(L[i]) + mn - x[i]
        diff = np.abs(diff) if use_mad else diff * diff
        w = weights[i] if has_w else x[i] * x[i]
        best_mad += w * diff
    if nstep < 1:
        return scale, -mn
    for step in range(nstep + 1):
        iscale = (rmin + rdelta * np.float32(step) + fnmax) / (mx - mn)
        sum_l = np.float32(0.0)
        sum_l2 = np.float32(0.0)
        sum_xl = np.float32(0.0)
        for i in range(n):
            l = nearest_int(iscale * (x[i] - mn))
            l = max(0, min(nmax, l))
            Laux[i] = l
            w = weights[i] if has_w else x[i] * x[i]
            fl = np.float32(l)
            sum_l += w * fl
            sum_l2 += w * fl * fl
            sum_xl += w * fl * x[i]
        D = sum_w * sum_l2 - sum_l * sum_l
        if D > np.float32(0.0):
            this_scale = (sum_w * sum_xl - sum_x * sum_l) / D
            this_min = (sum_l2 * sum_x - sum_l * sum_xl) / D
            if this_min > np.float32(0.0):
                this_min = np.float32(0.0)
                this_scale = sum_xl / sum_l2
            mad = np.float32(0.0)
            for i in range(n):
                diff = this_scale * np.float32(Laux[i]) + this_min - x[i]
                diff = np.abs(diff) if use_mad else diff * diff
                w = weights[i] if has_w else x[i] * x[i]
                mad += w * diff
            if mad < best_mad:
                for i in range(n):
                    L[i] = Laux[i]
                best_mad = mad
                scale = this_scale
                mn = this_min
    return scale, -mn
