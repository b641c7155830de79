"""The k-quants Q2_K, Q3_K, Q4_K, Q5_K, Q6_K: 256-value super-blocks with quantized sub-block scales.

Block layouts (little endian; ``d``/``dmin`` are fp16; see docs/kquants.md for the details):

=====  =====  ====================================================  ========
type   bytes  fields (in order)                                     bits/w
=====  =====  ====================================================  ========
Q2_K   84     scales[16] (4-bit scale | 4-bit min), qs[64], d, dmin  2.625
Q3_K   110    hmask[32], qs[64], scales[12] (16 x 6 bit), d          3.4375
Q4_K   144    d, dmin, scales[12] (8 x 6-bit scale, min), qs[128]    4.5
Q5_K   176    d, dmin, scales[12], qh[32], qs[128]                   5.5
Q6_K   210    ql[128], qh[64], scales[16] int8, d                    6.5625
=====  =====  ====================================================  ========

Without an importance matrix each type follows llama.cpp's ``quantize_row_<t>_ref``; with one,
``quantize_row_<t>_impl`` (a different, weighted search). ``ggml_quantize_chunk`` takes exactly
that split, and so do the kernels here, in the same float32 operation order.
"""

from __future__ import annotations

import numba
import numpy as np

from ..errors import ShapeError
from .numeric import FP16_TO_FP32, fp32_to_fp16_bits, nearest_int
from .search import GROUP_MAX_EPS, make_qkx3_quants, make_qx_quants

QK_K = 256
_KIND = {"Q2_K": 2, "Q3_K": 3, "Q4_K": 4, "Q5_K": 5, "Q6_K": 6}
_BLOCK_BYTES = {2: 84, 3: 110, 4: 144, 5: 176, 6: 210}

_F0 = np.float32(0.0)
_F1 = np.float32(1.0)


# ------------------------------------------------------------------------------------------ searches
# llama.cpp's make_qkx2_quants, make_q3_quants and make_qp_quants (float32, C operation order).


@numba.njit(cache=True)
def make_qkx2_quants(n, nmax, x, weights, L, Laux, rmin, rdelta, nstep, use_mad):
    """Levels in [0, nmax] with a min for ``x`` under ``weights``: returns (scale, -min).

    The range [min(x, 0), max(x)] first gives scale (max-min)/nmax; then nstep+1 trial inverse
    scales (rmin + rdelta*k + nmax)/(max-min) each round the values, solve the weighted least
    squares for scale and min (min clamped to <= 0), and the one with the lowest weighted error
    (absolute if use_mad, else squared) wins.
    """
    mn = x[0]
    mx = x[0]
    sum_w = weights[0]
    sum_x = sum_w * x[0]
    for i in range(1, n):
        v = x[i]
        if v < mn:
            mn = v
        if v > mx:
            mx = v
        w = weights[i]
        sum_w += w
        sum_x += w * v
    if mn > _F0:
        mn = _F0
    if mx == mn:
        for i in range(n):
            L[i] = 0
        return _F0, -mn
    fnmax = np.float32(nmax)
    iscale = fnmax / (mx - mn)
    scale = _F1 / iscale
    best_error = _F0
    for i in range(n):
        l = max(0, min(nmax, nearest_int(iscale * (x[i] - mn))))
        L[i] = l
        diff = scale * np.float32(l) + mn - x[i]
        diff = np.abs(diff) if use_mad else diff * diff
        best_error += weights[i] * diff
    if nstep < 1:
        return scale, -mn
    for step in range(nstep + 1):
        # mn may have moved to a better fit's min: C re-reads it in every step
        iscale = (rmin + rdelta * np.float32(step) + fnmax) / (mx - mn)
        sum_l = _F0
        sum_l2 = _F0
        sum_xl = _F0
        for i in range(n):
            l = max(0, min(nmax, nearest_int(iscale * (x[i] - mn))))
            Laux[i] = l
            wl = weights[i] * np.float32(l)
            sum_l += wl
            sum_l2 += wl * np.float32(l)
            sum_xl += wl * x[i]
        D = sum_w * sum_l2 - sum_l * sum_l
        if D > _F0:
            this_scale = (sum_w * sum_xl - sum_x * sum_l) / D
            this_min = (sum_l2 * sum_x - sum_l * sum_xl) / D
            if this_min > _F0:
                this_min = _F0
                this_scale = sum_xl / sum_l2
            cur_error = _F0
            for i in range(n):
                diff = this_scale * np.float32(Laux[i]) + this_min - x[i]
                diff = np.abs(diff) if use_mad else diff * diff
                cur_error += weights[i] * diff
            if cur_error < best_error:
                for i in range(n):
                    L[i] = Laux[i]
                best_error = cur_error
                scale = this_scale
                mn = this_min
    return scale, -mn


@numba.njit(cache=True)
def make_q3_quants(n, nmax, x, L, do_rmse):
    """Symmetric levels in [0, 2*nmax) for ``x``: scale -nmax/max, then (do_rmse) up to 5 passes
    of coordinate descent on each level, weighted by x^2, keeping changes that improve the fit."""
    mx = _F0
    amax = _F0
    for i in range(n):
        ax = np.abs(x[i])
        if ax > amax:
            amax = ax
            mx = x[i]
    if amax < GROUP_MAX_EPS:
        for i in range(n):
            L[i] = 0
        return _F0
    iscale = -np.float32(nmax) / mx
    if do_rmse:
        sumlx = _F0
        suml2 = _F0
        for i in range(n):
            l = max(-nmax, min(nmax - 1, nearest_int(iscale * x[i])))
            L[i] = l
            w = x[i] * x[i]
            fl = np.float32(l)
            sumlx += w * x[i] * fl
            suml2 += w * fl * fl
        for itry in range(5):
            n_changed = 0
            for i in range(n):
                w = x[i] * x[i]
                fli = np.float32(L[i])
                slx = sumlx - w * x[i] * fli
                if slx > _F0:
                    sl2 = suml2 - w * fli * fli
                    new_l = max(-nmax, min(nmax - 1, nearest_int(x[i] * sl2 / slx)))
                    if new_l != L[i]:
                        fnl = np.float32(new_l)
                        slx += w * x[i] * fnl
                        sl2 += w * fnl * fnl
                        if sl2 > _F0 and slx * slx * suml2 > sumlx * sumlx * sl2:
                            L[i] = new_l
                            sumlx = slx
                            suml2 = sl2
                            n_changed += 1
            if n_changed == 0:
                break
        for i in range(n):
            L[i] += nmax
        return sumlx / suml2 if suml2 > _F0 else _F0
    for i in range(n):
        L[i] = max(-nmax, min(nmax - 1, nearest_int(iscale * x[i]))) + nmax
    return _F1 / iscale


@numba.njit(cache=True)
def make_qp_quants(n, nmax, x, L, quant_weights):
    """Levels in [0, nmax] for non-negative ``x`` (sub-block scales or mins) under weights.

    Tries nmax/max and 8 nearby inverse scales (weighted squared error), then up to 5 passes of
    coordinate descent on single levels; returns the least-squares scale sum(wxl)/sum(wl^2).
    ``L`` is uint8 as in C (a negative level would wrap there too).
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


# ----------------------------------------------------------------------------------- byte helpers


@numba.njit(inline="always", cache=True)
def _put_fp16(out, pos, value):
    h = fp32_to_fp16_bits(value)
    out[pos] = np.uint8(h & 0xFF)
    out[pos + 1] = np.uint8(h >> 8)
    return FP16_TO_FP32[np.int64(h)]  # the value as stored (later steps re-read it)


@numba.njit(inline="always", cache=True)
def _get_fp16(data, pos):
    return FP16_TO_FP32[np.int64(data[pos]) | (np.int64(data[pos + 1]) << 8)]


@numba.njit(inline="always", cache=True)
def _pack_2bit(out, pos, L):
    """qs for 2-bit levels: byte l of each 32-byte group holds L[l], L[l+32], L[l+64], L[l+96]."""
    for j in range(0, QK_K, 128):
        for l in range(32):
            a = np.int64(L[j + l])
            b = np.int64(L[j + l + 32])
            c = np.int64(L[j + l + 64])
            e = np.int64(L[j + l + 96])
            out[pos + j // 4 + l] = np.uint8((a | (b << 2) | (c << 4) | (e << 6)) & 0xFF)


@numba.njit(inline="always", cache=True)
def _scale_min_k4(j, q, base):
    """6-bit scale and min of sub-block j from the 12 packed bytes q[base:base+12]."""
    if j < 4:
        return np.int64(q[base + j] & 63), np.int64(q[base + j + 4] & 63)
    sc = np.int64(q[base + j + 4] & 0xF) | (np.int64(q[base + j - 4] >> 6) << 4)
    m = np.int64(q[base + j + 4] >> 4) | (np.int64(q[base + j] >> 6) << 4)
    return sc, m


@numba.njit(inline="always", cache=True)
def _pack_scale_min_k4(out, pos, ls, lm):
    """Pack 8 (scale, min) pairs of 6 bits (given as 0..255, as C's uint8) into 12 bytes."""
    for j in range(8):
        s = ls[j] & 0xFF
        m = lm[j] & 0xFF
        if j < 4:
            out[pos + j] = np.uint8(s)
            out[pos + j + 4] = np.uint8(m)
        else:
            out[pos + j + 4] = np.uint8(((s & 0xF) | ((m & 0xF) << 4)) & 0xFF)
            out[pos + j - 4] = np.uint8((out[pos + j - 4] | ((s >> 4) << 6)) & 0xFF)
            out[pos + j] = np.uint8((out[pos + j] | ((m >> 4) << 6)) & 0xFF)


@numba.njit(inline="always", cache=True)
def _pack_scales_q3(out, pos, ls):
    """Pack 16 6-bit values (0..63) into Q3_K's 12 scale bytes."""
    for k in range(12):
        out[pos + k] = 0
    for j in range(16):
        l = ls[j]
        if j < 8:
            out[pos + j] = np.uint8(l & 0xF)
        else:
            out[pos + j - 8] = np.uint8((out[pos + j - 8] | ((l & 0xF) << 4)) & 0xFF)
        l >>= 4
        out[pos + 8 + j % 4] = np.uint8((out[pos + 8 + j % 4] | (l << (2 * (j // 4)))) & 0xFF)


@numba.njit(inline="always", cache=True)
def _unpack_scale_q3(q, pos, j):
    if j < 8:
        sc = np.int64(q[pos + j] & 0xF)
    else:
        sc = np.int64(q[pos + j - 8] >> 4)
    sc = sc | (((np.int64(q[pos + 8 + j % 4]) >> (2 * (j // 4))) & 3) << 4)
    return sc - 32


# ------------------------------------------------------------------------------------------ Q4_K / Q5_K


@numba.njit(inline="always", cache=True)
def _finish_q45(x, out, L, ls, lm, d_stored, m_stored, nmax, five):
    """Common tail of Q4_K/Q5_K: requantize with the stored scales and pack qs (and qh)."""
    sbase = 4
    for j in range(8):
        sc, m = _scale_min_k4(j, out, sbase)
        d = d_stored * np.float32(sc)
        if d == _F0:
            continue
        dm = m_stored * np.float32(m)
        for ii in range(32):
            l = nearest_int((x[32 * j + ii] + dm) / d)
            L[32 * j + ii] = max(0, min(nmax, l))
    if five:
        qh = 16
        ql = 48
        for k in range(32):
            out[qh + k] = 0
        m1 = 1
        m2 = 2
        for n in range(0, QK_K, 64):
            for j in range(32):
                l1 = np.int64(L[n + j])
                if l1 > 15:
                    l1 -= 16
                    out[qh + j] = np.uint8(out[qh + j] | m1)
                l2 = np.int64(L[n + j + 32])
                if l2 > 15:
                    l2 -= 16
                    out[qh + j] = np.uint8(out[qh + j] | m2)
                out[ql + j] = np.uint8((l1 | (l2 << 4)) & 0xFF)
            m1 <<= 2
            m2 <<= 2
            ql += 32
    else:
        q = 16
        for j in range(0, QK_K, 64):
            for l in range(32):
                out[q + l] = np.uint8((np.int64(L[j + l]) | (np.int64(L[j + l + 32]) << 4)) & 0xFF)
            q += 32


@numba.njit(cache=True)
def _q45_block_ref(x, out, L, Laux, weights, scales, mins, ls, lm, nmax, rmin, rdelta, nstep, five):
    """quantize_row_q4_K_ref / quantize_row_q5_K_ref on one super-block."""
    max_scale = _F0
    max_min = _F0
    for j in range(8):
        xs = x[32 * j : 32 * j + 32]
        sum_x2 = _F0
        for l in range(32):
            sum_x2 += xs[l] * xs[l]
        av_x = np.sqrt(sum_x2 / np.float32(32.0))
        for l in range(32):
            weights[l] = av_x + np.abs(xs[l])
        s, m = make_qkx2_quants(32, nmax, xs, weights, L[32 * j : 32 * j + 32], Laux, rmin, rdelta, nstep, False)
        scales[j] = s
        mins[j] = m
        if s > max_scale:
            max_scale = s
        if m > max_min:
            max_min = m
    inv_scale = np.float32(63.0) / max_scale if max_scale > _F0 else _F0
    inv_min = np.float32(63.0) / max_min if max_min > _F0 else _F0
    for j in range(8):
        ls[j] = min(63, nearest_int(inv_scale * scales[j]) & 0xFF)
        lm[j] = min(63, nearest_int(inv_min * mins[j]) & 0xFF)
    _pack_scale_min_k4(out, 4, ls, lm)
    d_stored = _put_fp16(out, 0, max_scale / np.float32(63.0))
    m_stored = _put_fp16(out, 2, max_min / np.float32(63.0))
    _finish_q45(x, out, L, ls, lm, d_stored, m_stored, nmax, five)


@numba.njit(cache=True)
def _q45_block_impl(x, qw, out, L, Laux, weights, scales, mins, sw, Ls, Lm, ls, lm, nmax, five):
    """quantize_row_q4_K_impl / quantize_row_q5_K_impl (with an imatrix) on one super-block."""
    sum_x2 = _F0
    for l in range(QK_K):
        sum_x2 += x[l] * x[l]
    sigma2 = np.float32(2.0) * sum_x2 / np.float32(256.0)
    for j in range(8):
        xs = x[32 * j : 32 * j + 32]
        for l in range(32):
            weights[l] = qw[32 * j + l] * np.sqrt(sigma2 + xs[l] * xs[l])
        sumw = _F0
        for l in range(32):
            sumw += weights[l]
        sw[j] = sumw
        s, m = make_qkx3_quants(
            32, nmax, xs, weights, L[32 * j : 32 * j + 32], Laux, np.float32(-0.9), np.float32(0.05), 36, False
        )
        scales[j] = s
        mins[j] = m
    d_block = make_qp_quants(8, 63, scales, Ls, sw)
    m_block = make_qp_quants(8, 63, mins, Lm, sw)
    for j in range(8):
        s = np.int64(Ls[j])
        m = np.int64(Lm[j])
        if five:
            s = min(63, s)
            m = min(63, m)
        ls[j] = s
        lm[j] = m
    _pack_scale_min_k4(out, 4, ls, lm)
    d_stored = _put_fp16(out, 0, d_block)
    m_stored = _put_fp16(out, 2, m_block)
    _finish_q45(x, out, L, ls, lm, d_stored, m_stored, nmax, five)


@numba.njit(parallel=True, cache=True)
def _quantize_q45_kernel(rows, qw, five):
    nrows, n = rows.shape
    nb = n // QK_K
    bb = 176 if five else 144
    nmax = 31 if five else 15
    out = np.zeros((nrows, nb * bb), dtype=np.uint8)
    has_w = qw.size > 0
    for r in numba.prange(nrows):
        L = np.zeros(QK_K, dtype=np.uint8)
        Laux = np.zeros(32, dtype=np.uint8)
        weights = np.zeros(32, dtype=np.float32)
        scales = np.zeros(8, dtype=np.float32)
        mins = np.zeros(8, dtype=np.float32)
        sw = np.zeros(8, dtype=np.float32)
        Ls = np.zeros(8, dtype=np.uint8)
        Lm = np.zeros(8, dtype=np.uint8)
        ls = np.zeros(8, dtype=np.int64)
        lm = np.zeros(8, dtype=np.int64)
        for i in range(nb):
            x = rows[r, QK_K * i : QK_K * (i + 1)]
            o = out[r, bb * i : bb * (i + 1)]
            if has_w:
                _q45_block_impl(
                    x, qw[QK_K * i : QK_K * (i + 1)], o, L, Laux, weights, scales, mins, sw, Ls, Lm, ls, lm, nmax, five
                )
            elif five:
                _q45_block_ref(
                    x, o, L, Laux, weights, scales, mins, ls, lm, nmax, np.float32(-0.5), np.float32(0.1), 15, five
                )
            else:
                _q45_block_ref(
                    x, o, L, Laux, weights, scales, mins, ls, lm, nmax, np.float32(-1.0), np.float32(0.1), 20, five
                )
    return out


# ------------------------------------------------------------------------------------------ Q6_K


@numba.njit(cache=True)
def _q6_block(x, qw, out, L, scales):
    """quantize_row_q6_K_ref (qw empty) / quantize_row_q6_K_impl (qw = the block's imatrix)."""
    max_scale = _F0
    max_abs_scale = _F0
    for ib in range(16):
        if qw.size > 0:
            s = make_qx_quants(16, 32, x[16 * ib : 16 * ib + 16], L[16 * ib : 16 * ib + 16], 1, qw[16 * ib : 16 * ib + 16])
        else:
            s = make_qx_quants(16, 32, x[16 * ib : 16 * ib + 16], L[16 * ib : 16 * ib + 16], 1, qw)
        scales[ib] = s
        a = np.abs(s)
        if a > max_abs_scale:
            max_abs_scale = a
            max_scale = s
    if max_abs_scale < GROUP_MAX_EPS:
        for k in range(210):
            out[k] = 0
        return
    iscale = np.float32(-128.0) / max_scale
    d_stored = _put_fp16(out, 208, _F1 / iscale)
    for ib in range(16):
        out[192 + ib] = np.uint8(min(127, nearest_int(iscale * scales[ib])) & 0xFF)
    for j in range(16):
        sc = np.int64(np.int8(out[192 + j]))
        d = d_stored * np.float32(sc)
        if d == _F0:
            continue
        for ii in range(16):
            l = nearest_int(x[16 * j + ii] / d)
            L[16 * j + ii] = max(-32, min(31, l)) + 32
    ql = 0
    qh = 128
    for j in range(0, QK_K, 128):
        for l in range(32):
            a = np.int64(L[j + l])
            b = np.int64(L[j + l + 32])
            c = np.int64(L[j + l + 64])
            e = np.int64(L[j + l + 96])
            out[ql + l] = np.uint8(((a & 0xF) | ((c & 0xF) << 4)) & 0xFF)
            out[ql + l + 32] = np.uint8(((b & 0xF) | ((e & 0xF) << 4)) & 0xFF)
            out[qh + l] = np.uint8(((a >> 4) | ((b >> 4) << 2) | ((c >> 4) << 4) | ((e >> 4) << 6)) & 0xFF)
        ql += 64
        qh += 32


@numba.njit(parallel=True, cache=True)
def _quantize_q6_kernel(rows, qw):
    nrows, n = rows.shape
    nb = n // QK_K
    out = np.zeros((nrows, nb * 210), dtype=np.uint8)
    has_w = qw.size > 0
    for r in numba.prange(nrows):
        L = np.zeros(QK_K, dtype=np.int32)
        scales = np.zeros(16, dtype=np.float32)
        for i in range(nb):
            x = rows[r, QK_K * i : QK_K * (i + 1)]
            o = out[r, 210 * i : 210 * (i + 1)]
            if has_w:
                _q6_block(x, qw[QK_K * i : QK_K * (i + 1)], o, L, scales)
            else:
                _q6_block(x, qw, o, L, scales)
    return out


# ------------------------------------------------------------------------------------------ Q3_K


@numba.njit(inline="always", cache=True)
def _finish_q3(x, out, L):
    """Requantize with the stored scales (d at 108, scales at 96) and pack hmask and qs."""
    d_all = _get_fp16(out, 108)
    for j in range(16):
        sc = _unpack_scale_q3(out, 96, j)
        d = d_all * np.float32(sc)
        if d == _F0:
            continue
        for ii in range(16):
            l = nearest_int(x[16 * j + ii] / d)
            L[16 * j + ii] = max(-4, min(3, l)) + 4
    for k in range(32):
        out[k] = 0
    m = 0
    hm = 1
    for j in range(QK_K):
        if L[j] > 3:
            out[m] = np.uint8(out[m] | hm)
            L[j] -= 4
        m += 1
        if m == 32:
            m = 0
            hm <<= 1
    _pack_2bit(out, 32, L)


@numba.njit(cache=True)
def _q3_block_ref(x, out, L, scales, ls):
    max_scale = _F0
    amax = _F0
    for j in range(16):
        s = make_q3_quants(16, 4, x[16 * j : 16 * j + 16], L[16 * j : 16 * j + 16], True)
        scales[j] = s
        a = np.abs(s)
        if a > amax:
            amax = a
            max_scale = s
    if max_scale != _F0:
        iscale = np.float32(-32.0) / max_scale
        for j in range(16):
            l = np.int64(np.int8(nearest_int(iscale * scales[j]) & 0xFF))
            ls[j] = max(-32, min(31, l)) + 32
        _pack_scales_q3(out, 96, ls)
        _put_fp16(out, 108, _F1 / iscale)
    else:
        for k in range(12):
            out[96 + k] = 0
        _put_fp16(out, 108, _F0)
    _finish_q3(x, out, L)


@numba.njit(cache=True)
def _q3_block_impl(x, qw, out, L, scales, weight, sw, Ls):
    sumx2 = _F0
    for j in range(QK_K):
        sumx2 += x[j] * x[j]
    sigma2 = np.float32(2.0) * sumx2 / np.float32(256.0)
    for j in range(16):
        for l in range(16):
            v = x[16 * j + l]
            weight[l] = qw[16 * j + l] * np.sqrt(sigma2 + v * v)
        sumw = _F0
        for l in range(16):
            sumw += weight[l]
        sw[j] = sumw
        scales[j] = make_qx_quants(16, 4, x[16 * j : 16 * j + 16], L[16 * j : 16 * j + 16], 1, weight)
    d_block = make_qx_quants(16, 32, scales, Ls, 1, sw)
    _pack_scales_q3(out, 96, Ls)
    _put_fp16(out, 108, d_block)
    _finish_q3(x, out, L)


@numba.njit(parallel=True, cache=True)
def _quantize_q3_kernel(rows, qw):
    nrows, n = rows.shape
    nb = n // QK_K
    out = np.zeros((nrows, nb * 110), dtype=np.uint8)
    has_w = qw.size > 0
    for r in numba.prange(nrows):
        L = np.zeros(QK_K, dtype=np.int32)
        scales = np.zeros(16, dtype=np.float32)
        weight = np.zeros(16, dtype=np.float32)
        sw = np.zeros(16, dtype=np.float32)
        Ls = np.zeros(16, dtype=np.int32)
        for i in range(nb):
            x = rows[r, QK_K * i : QK_K * (i + 1)]
            o = out[r, 110 * i : 110 * (i + 1)]
            if has_w:
                _q3_block_impl(x, qw[QK_K * i : QK_K * (i + 1)], o, L, scales, weight, sw, Ls)
            else:
                _q3_block_ref(x, o, L, scales, Ls)
    return out


# ------------------------------------------------------------------------------------------ Q2_K


@numba.njit(inline="always", cache=True)
def _finish_q2(x, out, L):
    """Requantize with the stored scale/min nibbles (d at 80, dmin at 82) and pack qs at 16."""
    d_all = _get_fp16(out, 80)
    m_all = _get_fp16(out, 82)
    for j in range(16):
        sc = np.int64(out[j])
        d = d_all * np.float32(sc & 0xF)
        if d == _F0:
            continue
        dm = m_all * np.float32(sc >> 4)
        for ii in range(16):
            l = nearest_int((x[16 * j + ii] + dm) / d)
            L[16 * j + ii] = max(0, min(3, l))
    _pack_2bit(out, 16, L)


@numba.njit(cache=True)
def _q2_block_ref(x, out, L, Laux, weights, scales, mins):
    q4scale = np.float32(15.0)
    max_scale = _F0
    max_min = _F0
    for j in range(16):
        xs = x[16 * j : 16 * j + 16]
        for l in range(16):
            weights[l] = np.abs(xs[l])
        s, m = make_qkx2_quants(
            16, 3, xs, weights, L[16 * j : 16 * j + 16], Laux, np.float32(-0.5), np.float32(0.1), 15, True
        )
        scales[j] = s
        mins[j] = m
        if s > max_scale:
            max_scale = s
        if m > max_min:
            max_min = m
    if max_scale > _F0:
        iscale = q4scale / max_scale
        for j in range(16):
            out[j] = np.uint8(nearest_int(iscale * scales[j]) & 0xFF)
        _put_fp16(out, 80, max_scale / q4scale)
    else:
        for j in range(16):
            out[j] = 0
        _put_fp16(out, 80, _F0)
    if max_min > _F0:
        iscale = q4scale / max_min
        for j in range(16):
            l = np.int64(nearest_int(iscale * mins[j]))
            out[j] = np.uint8((np.int64(out[j]) | (l << 4)) & 0xFF)
        _put_fp16(out, 82, max_min / q4scale)
    else:
        _put_fp16(out, 82, _F0)
    _finish_q2(x, out, L)


@numba.njit(cache=True)
def _q2_block_impl(x, qw, out, L, Laux, weight, scales, mins, sw, Ls, Lm):
    sumx2 = _F0
    for j in range(QK_K):
        sumx2 += x[j] * x[j]
    sigma2 = sumx2 / np.float32(256.0)
    for j in range(16):
        xs = x[16 * j : 16 * j + 16]
        for l in range(16):
            weight[l] = qw[16 * j + l] * np.sqrt(sigma2 + xs[l] * xs[l])
        s = _F0
        for l in range(16):
            s += weight[l]
        sw[j] = s
        sc, m = make_qkx3_quants(
            16, 3, xs, weight, L[16 * j : 16 * j + 16], Laux, np.float32(-0.9), np.float32(0.05), 36, False
        )
        scales[j] = sc
        mins[j] = m
    dm = make_qp_quants(16, 15, scales, Ls, sw)
    mm = make_qp_quants(16, 15, mins, Lm, sw)
    _put_fp16(out, 80, dm)
    _put_fp16(out, 82, mm)
    for j in range(16):
        out[j] = np.uint8((np.int64(Ls[j]) | (np.int64(Lm[j]) << 4)) & 0xFF)
    _finish_q2(x, out, L)


@numba.njit(parallel=True, cache=True)
def _quantize_q2_kernel(rows, qw):
    nrows, n = rows.shape
    nb = n // QK_K
    out = np.zeros((nrows, nb * 84), dtype=np.uint8)
    has_w = qw.size > 0
    for r in numba.prange(nrows):
        L = np.zeros(QK_K, dtype=np.uint8)
        Laux = np.zeros(16, dtype=np.uint8)
        weight = np.zeros(16, dtype=np.float32)
        scales = np.zeros(16, dtype=np.float32)
        mins = np.zeros(16, dtype=np.float32)
        sw = np.zeros(16, dtype=np.float32)
        Ls = np.zeros(16, dtype=np.uint8)
        Lm = np.zeros(16, dtype=np.uint8)
        for i in range(nb):
            x = rows[r, QK_K * i : QK_K * (i + 1)]
            o = out[r, 84 * i : 84 * (i + 1)]
            if has_w:
                _q2_block_impl(x, qw[QK_K * i : QK_K * (i + 1)], o, L, Laux, weight, scales, mins, sw, Ls, Lm)
            else:
                _q2_block_ref(x, o, L, Laux, weight, scales, mins)
    return out


# ------------------------------------------------------------------------------------------ dequantize


@numba.njit(parallel=True, cache=True)
def _dequantize_kernel(data, kind, n_per_row):
    nrows = data.shape[0]
    nb = n_per_row // QK_K
    bb = 84 if kind == 2 else 110 if kind == 3 else 144 if kind == 4 else 176 if kind == 5 else 210
    y = np.empty((nrows, n_per_row), dtype=np.float32)
    for r in numba.prange(nrows):
        for i in range(nb):
            b = data[r, bb * i : bb * (i + 1)]
            o = y[r, QK_K * i : QK_K * (i + 1)]
            if kind == 2:
                d = _get_fp16(b, 80)
                mn = _get_fp16(b, 82)
                k = 0
                isc = 0
                for n in range(0, QK_K, 128):
                    q = 16 + n // 4
                    for shift in range(0, 8, 2):
                        for half in range(2):
                            sc = np.int64(b[isc])
                            isc += 1
                            dl = d * np.float32(sc & 0xF)
                            ml = mn * np.float32(sc >> 4)
                            for l in range(16):
                                v = (np.int64(b[q + 16 * half + l]) >> shift) & 3
                                o[k] = dl * np.float32(v) - ml
                                k += 1
            elif kind == 3:
                d_all = _get_fp16(b, 108)
                k = 0
                isc = 0
                m = 1
                for n in range(0, QK_K, 128):
                    q = 32 + n // 4
                    for shift in range(0, 8, 2):
                        for half in range(2):
                            dl = d_all * np.float32(_unpack_scale_q3(b, 96, isc))
                            isc += 1
                            for l in range(16):
                                v = (np.int64(b[q + 16 * half + l]) >> shift) & 3
                                if (b[16 * half + l] & m) == 0:
                                    v -= 4
                                o[k] = dl * np.float32(v)
                                k += 1
                        m <<= 1
            elif kind == 4 or kind == 5:
                d = _get_fp16(b, 0)
                mn = _get_fp16(b, 2)
                qs = 16 if kind == 4 else 48
                u1 = 1
                u2 = 2
                k = 0
                isc = 0
                for j in range(0, QK_K, 64):
                    sc, m = _scale_min_k4(isc, b, 4)
                    d1 = d * np.float32(sc)
                    m1 = mn * np.float32(m)
                    sc, m = _scale_min_k4(isc + 1, b, 4)
                    d2 = d * np.float32(sc)
                    m2 = mn * np.float32(m)
                    for l in range(32):
                        v = np.int64(b[qs + l] & 0xF)
                        if kind == 5 and (b[16 + l] & u1) != 0:
                            v += 16
                        o[k] = d1 * np.float32(v) - m1
                        k += 1
                    for l in range(32):
                        v = np.int64(b[qs + l] >> 4)
                        if kind == 5 and (b[16 + l] & u2) != 0:
                            v += 16
                        o[k] = d2 * np.float32(v) - m2
                        k += 1
                    qs += 32
                    isc += 2
                    u1 <<= 2
                    u2 <<= 2
            else:
                d = _get_fp16(b, 208)
                for n in range(2):
                    ql = 64 * n
                    qh = 128 + 32 * n
                    sc = 192 + 8 * n
                    for l in range(32):
                        isc = l // 16
                        h = np.int64(b[qh + l])
                        q1 = (np.int64(b[ql + l] & 0xF) | (((h >> 0) & 3) << 4)) - 32
                        q2 = (np.int64(b[ql + l + 32] & 0xF) | (((h >> 2) & 3) << 4)) - 32
                        q3 = (np.int64(b[ql + l] >> 4) | (((h >> 4) & 3) << 4)) - 32
                        q4 = (np.int64(b[ql + l + 32] >> 4) | (((h >> 6) & 3) << 4)) - 32
                        o[128 * n + l] = d * np.float32(np.int8(b[sc + isc])) * np.float32(q1)
                        o[128 * n + l + 32] = d * np.float32(np.int8(b[sc + isc + 2])) * np.float32(q2)
                        o[128 * n + l + 64] = d * np.float32(np.int8(b[sc + isc + 4])) * np.float32(q3)
                        o[128 * n + l + 96] = d * np.float32(np.int8(b[sc + isc + 6])) * np.float32(q4)
    return y


# ------------------------------------------------------------------------------------------ front


def check_row_length(qt, n_per_row: int) -> None:
    """Refuse a row length that is not a whole number of 256-value super-blocks, naming what fits."""
    if n_per_row % QK_K:
        from ..types import known_type, supported_names

        fits = [name for name in supported_names() if n_per_row % known_type(name).block_size == 0]
        raise ShapeError(
            f"row length {n_per_row} is not a multiple of {QK_K} ({qt.name}); "
            f"types that fit: {', '.join(fits) or 'none'}"
        )


def quantize_rows(qt, rows, imatrix):
    check_row_length(qt, rows.shape[1])
    kind = _KIND[qt.name]
    rows = np.ascontiguousarray(rows, dtype=np.float32)
    qw = np.empty(0, dtype=np.float32) if imatrix is None else np.ascontiguousarray(imatrix, dtype=np.float32)
    if kind == 6:
        return _quantize_q6_kernel(rows, qw)
    if kind == 4 or kind == 5:
        return _quantize_q45_kernel(rows, qw, kind == 5)
    if kind == 3:
        return _quantize_q3_kernel(rows, qw)
    return _quantize_q2_kernel(rows, qw)


def dequantize_rows(qt, data, n_per_row):
    check_row_length(qt, n_per_row)
    return _dequantize_kernel(np.ascontiguousarray(data, dtype=np.uint8), _KIND[qt.name], n_per_row)
