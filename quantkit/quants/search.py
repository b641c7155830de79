"""Scale searches shared by the quant families (llama.cpp's make_q*_quants), as Numba functions.

``make_qx_quants`` works on one group of ``n`` values, writes the chosen integer levels into ``L``
and returns the scale. The ``*_lanes`` functions run a search on G groups side by side (see the
comment above them). Arithmetic is float32 in the C order so results match llama.cpp bit for bit.
"""

import numba
import numpy as np
from numba import njit

from .numeric import nearest_int

GROUP_MAX_EPS = np.float32(1e-15)  # a group whose largest magnitude is below this is all zeros
_F0 = np.float32(0.0)
_I0 = np.int32(0)
_F1 = np.float32(1.0)


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


@numba.njit(cache=True, error_model="numpy")
def make_qp_quants(n, nmax, x, L, quant_weights):
    """llama.cpp's make_qp_quants: levels in [0, nmax] for non-negative ``x`` (sub-block scales or
    mins) under weights; ``L`` is uint8 as in C (where a negative level would wrap too).

    Tries nmax/max and 8 nearby inverse scales (weighted squared error), then up to 5 passes of
    coordinate descent on single levels; returns the least-squares scale sum(wxl)/sum(wl^2).
    """
    mx = _F0
    for i in range(n):
        mx = max(mx, x[i])
    if mx < GROUP_MAX_EPS:
        for i in range(n):
            L[i] = 0
        return _F0
    fnmax = np.float32(nmax)
    iscale = fnmax / mx
    for i in range(n):
        L[i] = nearest_int(iscale * x[i])
    scale = _F1 / iscale
    best_mse = _F0
    for i in range(n):
        diff = x[i] - scale * np.float32(L[i])
        best_mse += quant_weights[i] * diff * diff
    for step in range(-4, 5):
        if step == 0:
            continue
        iscale_is = (np.float32(0.1) * np.float32(step) + fnmax) / mx
        scale_is = _F1 / iscale_is
        mse = _F0
        for i in range(n):
            l = min(nmax, nearest_int(iscale_is * x[i]))
            diff = x[i] - scale_is * np.float32(l)
            mse += quant_weights[i] * diff * diff
        if mse < best_mse:
            best_mse = mse
            iscale = iscale_is
    sumlx = _F0
    suml2 = _F0
    for i in range(n):
        l = min(nmax, nearest_int(iscale * x[i]))
        L[i] = l
        lv = np.float32(l)  # C sums the int level here, not the uint8 it stored
        w = quant_weights[i]
        sumlx += w * x[i] * lv
        suml2 += w * lv * lv
    for itry in range(5):
        n_changed = 0
        for i in range(n):
            w = quant_weights[i]
            li = np.int64(L[i])
            fli = np.float32(li)
            slx = sumlx - w * x[i] * fli
            sl2 = suml2 - w * fli * fli
            if slx > _F0 and sl2 > _F0:
                new_l = min(nmax, nearest_int(x[i] * sl2 / slx))
                if new_l != li:
                    fnl = np.float32(new_l)
                    slx += w * x[i] * fnl
                    sl2 += w * fnl * fnl
                    if slx * slx * suml2 > sumlx * sumlx * sl2:
                        L[i] = new_l
                        sumlx = slx
                        suml2 = sl2
                        n_changed += 1
        if n_changed == 0:
            break
    return sumlx / suml2 if suml2 > _F0 else _F0


# ------------------------------------------------------------------------------------------ lanes


# ------------------------------------------------------------------------------------------ searches
# llama.cpp runs its searches one group (sub-block) at a time. Here G groups of n values run side
# by side: X[i*G + g] is value i of group g, and every loop over the groups is innermost, so LLVM
# vectorizes across groups while each group's sums still accumulate in C's order (lane g does
# exactly the float32 operations C does for group g; decisions become per-lane selects).
# State rows of ``st`` (a (ST_NST, G) float32 scratch):
ST_MN, ST_MX, ST_SW, ST_SX, ST_IS, ST_SC, ST_BEST, ST_SL, ST_SL2, ST_SXL, ST_TS, ST_TM, ST_ERR, ST_FLAT, ST_ACC, ST_BIS, ST_BMN = range(17)
ST_NST = 17


@numba.njit(cache=True, error_model="numpy")
def qkx2_lanes(G, n, nmax, X, W, L, Laux, rmin, rdelta, nstep, use_mad, st):
    """make_qkx2_quants (and make_qkx3_quants with weights, the same search) on G groups.

    Levels in [0, nmax] with a min: the range [min(x, 0), max(x)] gives a first scale; then
    nstep+1 trial inverse scales (rmin + rdelta*k + nmax)/(max - min) each round the values, solve
    the weighted least squares for scale and min (min clamped to <= 0) and keep the fit with the
    lowest weighted error (absolute if use_mad, else squared). A better fit's min is used by the
    following trials, as in C. Results: st[ST_SC] (scale), st[ST_MN] (min; C returns -min), L.
    Requires nstep >= 1.
    """
    mn, mx, sum_w, sum_x, flat = st[ST_MN], st[ST_MX], st[ST_SW], st[ST_SX], st[ST_FLAT]
    iscale, scale, best, best_is, best_mn = st[ST_IS], st[ST_SC], st[ST_BEST], st[ST_BIS], st[ST_BMN]
    sl, sl2, sxl, ts, tm, err, acc = st[ST_SL], st[ST_SL2], st[ST_SXL], st[ST_TS], st[ST_TM], st[ST_ERR], st[ST_ACC]
    fnmax = np.float32(nmax)
    nmax32 = np.int32(nmax)  # int32 levels: vectorizes better than int64
    for g in range(G):
        mn[g] = X[g]
        mx[g] = X[g]
        sum_w[g] = W[g]
        sum_x[g] = W[g] * X[g]
    for i in range(1, n):
        for g in range(G):
            v = X[i * G + g]
            mn[g] = v if v < mn[g] else mn[g]
            mx[g] = v if v > mx[g] else mx[g]
            w = W[i * G + g]
            sum_w[g] += w
            sum_x[g] += w * v
    for g in range(G):
        m = _F0 if mn[g] > _F0 else mn[g]
        mn[g] = m
        flat[g] = _F1 if mx[g] == m else _F0
        iscale[g] = fnmax / (mx[g] - m)
        scale[g] = _F1 / iscale[g]
        best[g] = _F0
    for g in range(G):
        best_is[g] = iscale[g]
        best_mn[g] = mn[g]
    for i in range(n):
        for g in range(G):
            l = max(_I0, min(nmax32, nearest_int(iscale[g] * (X[i * G + g] - mn[g]))))
            diff = scale[g] * np.float32(l) + mn[g] - X[i * G + g]
            diff = np.abs(diff) if use_mad else diff * diff
            best[g] += W[i * G + g] * diff
    for step in range(nstep + 1):
        for g in range(G):
            iscale[g] = (rmin + rdelta * np.float32(step) + fnmax) / (mx[g] - mn[g])
            sl[g] = _F0
            sl2[g] = _F0
            sxl[g] = _F0
        for i in range(n):
            for g in range(G):
                l = max(_I0, min(nmax32, nearest_int(iscale[g] * (X[i * G + g] - mn[g]))))
                Laux[i * G + g] = l
                fl = np.float32(l)
                wl = W[i * G + g] * fl
                sl[g] += wl
                sl2[g] += wl * fl
                sxl[g] += wl * X[i * G + g]
        for g in range(G):
            D = sum_w[g] * sl2[g] - sl[g] * sl[g]
            a = (sum_w[g] * sxl[g] - sum_x[g] * sl[g]) / D
            b = (sl2[g] * sum_x[g] - sl[g] * sxl[g]) / D
            clamp = b > _F0
            ts[g] = sxl[g] / sl2[g] if clamp else a
            tm[g] = _F0 if clamp else b
            err[g] = _F0
            acc[g] = _F1 if (D > _F0 and flat[g] == _F0) else _F0
        for i in range(n):
            for g in range(G):
                diff = ts[g] * np.float32(Laux[i * G + g]) + tm[g] - X[i * G + g]
                diff = np.abs(diff) if use_mad else diff * diff
                err[g] += W[i * G + g] * diff
        for g in range(G):
            ok = (acc[g] != _F0) & (err[g] < best[g])
            best[g] = err[g] if ok else best[g]
            scale[g] = ts[g] if ok else scale[g]
            best_is[g] = iscale[g] if ok else best_is[g]
            best_mn[g] = mn[g] if ok else best_mn[g]  # the min this trial's levels were rounded with
            mn[g] = tm[g] if ok else mn[g]
    # the kept levels, rounded once more the way the winning trial rounded them
    for i in range(n):
        for g in range(G):
            l = max(_I0, min(nmax32, nearest_int(best_is[g] * (X[i * G + g] - best_mn[g]))))
            L[i * G + g] = _I0 if flat[g] != _F0 else l
    for g in range(G):
        scale[g] = _F0 if flat[g] != _F0 else scale[g]


@numba.njit(cache=True, error_model="numpy")
def symmetric_start(G, n, nmax, X, st):
    """make_qx_quants' start on G groups: st[ST_MX] = the value of largest magnitude (first on
    ties), st[ST_FLAT] = 1 where that magnitude is below GROUP_MAX_EPS (the group is all zero
    levels), st[ST_TS] = -nmax/max, the first inverse scale."""
    mx = st[ST_MX]
    amax = st[ST_IS]
    for g in range(G):
        mx[g] = _F0
        amax[g] = _F0
    for i in range(n):
        for g in range(G):
            v = X[i * G + g]
            a = np.abs(v)
            big = a > amax[g]
            amax[g] = a if big else amax[g]
            mx[g] = v if big else mx[g]
    for g in range(G):
        st[ST_FLAT, g] = _F1 if amax[g] < GROUP_MAX_EPS else _F0
        st[ST_TS, g] = -np.float32(nmax) / mx[g]


@numba.njit(cache=True, error_model="numpy")
def qx_lanes(G, n, nmax, X, W, L, st):
    """make_qx_quants with rmse_type 1 and weights W (x*x when llama.cpp passes no weights).

    Symmetric levels in [0, 2*nmax): starts from the scale -max/nmax (max = the value of largest
    magnitude), then tries the 18 inverse scales -(nmax + 0.1*k)/max, k = -9..9, keeping the one
    whose weighted least-squares scale fits best (largest sum(wxl)^2/sum(wl^2)). Result: st[ST_SC];
    L is rounded once, at the end, with the winning inverse scale (the levels C keeps).
    """
    symmetric_start(G, n, nmax, X, st)
    mx, flat, scale, best = st[ST_MX], st[ST_FLAT], st[ST_SC], st[ST_BEST]
    sumlx, suml2, iscale, best_is = st[ST_SL], st[ST_SL2], st[ST_TS], st[ST_TM]
    fnmax = np.float32(nmax)
    nmax32 = np.int32(nmax)  # int32 levels: vectorizes better than int64
    lo32 = np.int32(-nmax)
    hi32 = np.int32(nmax - 1)
    for k in range(-10, 10):  # -10: the starting scale (set by symmetric_start); then k = -9..9 without 0, as in C
        if k == 0:
            continue
        for g in range(G):
            if k != -10:
                iscale[g] = -(fnmax + np.float32(0.1) * np.float32(k)) / mx[g]
            sumlx[g] = _F0
            suml2[g] = _F0
        for i in range(n):
            for g in range(G):
                x = X[i * G + g]
                fl = np.float32(max(lo32, min(hi32, nearest_int(iscale[g] * x))))
                w = W[i * G + g]
                sumlx[g] += w * x * fl
                suml2[g] += w * fl * fl
        if k == -10:
            for g in range(G):
                scale[g] = sumlx[g] / suml2[g] if suml2[g] != _F0 else _F0
                best[g] = scale[g] * sumlx[g]
                best_is[g] = iscale[g]
        else:
            for g in range(G):
                ok = (suml2[g] > _F0) & (sumlx[g] * sumlx[g] > best[g] * suml2[g])
                s = sumlx[g] / suml2[g]
                scale[g] = s if ok else scale[g]
                best[g] = s * sumlx[g] if ok else best[g]
                best_is[g] = iscale[g] if ok else best_is[g]
    for i in range(n):
        for g in range(G):
            l = max(lo32, min(hi32, nearest_int(best_is[g] * X[i * G + g]))) + nmax32
            L[i * G + g] = _I0 if flat[g] != _F0 else l
    for g in range(G):
        scale[g] = _F0 if flat[g] != _F0 else scale[g]


@numba.njit(inline="always", cache=True)
def to_lanes(x, base, G, n, X):
    """X[i*G + g] = x[base + n*g + i]: the chunk's sub-blocks side by side."""
    for g in range(G):
        for i in range(n):
            X[i * G + g] = x[base + n * g + i]
