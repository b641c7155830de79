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

from ..types import QK_K, known_type
from .numeric import get_fp16, nearest_int, put_fp16
from .search import (
    GROUP_MAX_EPS,
    ST_FLAT,
    ST_MN,
    ST_NST,
    ST_SC,
    ST_SL,
    ST_SL2,
    ST_TS,
    make_qp_quants,
    make_qx_quants,
    qkx2_lanes,
    qx_lanes,
    symmetric_start,
    to_lanes,
)

# ggml type ids: the dequantize kernel's type selector
Q2_K, Q3_K, Q4_K, Q5_K, Q6_K = (int(known_type(n).ggml) for n in ("Q2_K", "Q3_K", "Q4_K", "Q5_K", "Q6_K"))

_F0 = np.float32(0.0)
_I0 = np.int32(0)
_F1 = np.float32(1.0)


@numba.njit(cache=True, error_model="numpy")
def _q3_lanes(G, n, nmax, X, L, st, ist):
    """make_q3_quants with do_rmse: symmetric levels in [0, 2*nmax) weighted by x*x.

    Starts from the scale -max/nmax, then up to 5 passes of coordinate descent: each level in turn
    moves to the value that best fits the current least-squares scale of the others, kept only if
    the fit (sum(wxl)^2/sum(wl^2)) improves; a group stops after a pass without change.
    Result: st[ST_SC].
    """
    symmetric_start(G, n, nmax, X, st)
    flat, scale, sumlx, suml2, iscale = st[ST_FLAT], st[ST_SC], st[ST_SL], st[ST_SL2], st[ST_TS]
    nmax32 = np.int32(nmax)  # int32 levels: vectorizes better than int64
    lo32 = np.int32(-nmax)
    hi32 = np.int32(nmax - 1)
    sumlx[:G] = _F0
    suml2[:G] = _F0
    for i in range(n):
        for g in range(G):
            x = X[i * G + g]
            l = max(lo32, min(hi32, nearest_int(iscale[g] * x)))
            L[i * G + g] = l
            w = x * x
            fl = np.float32(l)
            sumlx[g] += w * x * fl
            suml2[g] += w * fl * fl
    # coordinate descent: sequential within a group, so the lanes step through the values together;
    # a group that went through a pass without change stops (its lane keeps its state) as in C
    active = ist[0]
    changed = ist[1]
    for g in range(G):
        active[g] = _I0 if flat[g] != _F0 else np.int32(1)
    passes = 0
    while passes < 5:
        n_active = 0
        for g in range(G):
            changed[g] = _I0
            n_active += active[g]
        if 4 * n_active <= G:  # few groups left: finish them one at a time below
            break
        passes += 1
        for i in range(n):
            for g in range(G):
                x = X[i * G + g]
                w = x * x
                li = L[i * G + g]
                fli = np.float32(li)
                sx = sumlx[g]
                s2 = suml2[g]
                slx = sx - w * x * fli
                sl2 = s2 - w * fli * fli
                new_l = max(lo32, min(hi32, nearest_int(x * sl2 / slx)))
                fnl = np.float32(new_l)
                slx_new = slx + w * x * fnl
                sl2_new = sl2 + w * fnl * fnl
                # C: if (slx > 0) { ...; if (new_l != L[i]) { ...; if (sl2 > 0 && better) keep } }
                # bitwise & (no short-circuit branches) keeps the loop vectorizable
                ok = (
                    (active[g] != _I0)
                    & (slx > _F0)
                    & (new_l != li)
                    & (sl2_new > _F0)
                    & (slx_new * slx_new * s2 > sx * sx * sl2_new)
                )
                L[i * G + g] = new_l if ok else li
                sumlx[g] = slx_new if ok else sx
                suml2[g] = sl2_new if ok else s2
                changed[g] += np.int32(1) if ok else _I0
        for g in range(G):
            active[g] = active[g] if changed[g] != _I0 else _I0
    for g in range(G):
        if active[g] == _I0:
            continue
        sx = sumlx[g]
        s2 = suml2[g]
        for itry in range(passes, 5):
            n_changed = 0
            for i in range(n):
                x = X[i * G + g]
                w = x * x
                li = L[i * G + g]
                fli = np.float32(li)
                slx = sx - w * x * fli
                if slx > _F0:
                    sl2 = s2 - w * fli * fli
                    new_l = max(lo32, min(hi32, nearest_int(x * sl2 / slx)))
                    if new_l != li:
                        fnl = np.float32(new_l)
                        slx += w * x * fnl
                        sl2 += w * fnl * fnl
                        if sl2 > _F0 and slx * slx * s2 > sx * sx * sl2:
                            L[i * G + g] = new_l
                            sx = slx
                            s2 = sl2
                            n_changed += 1
            if n_changed == 0:
                break
        sumlx[g] = sx
        suml2[g] = s2
    for i in range(n):
        for g in range(G):
            L[i * G + g] = _I0 if flat[g] != _F0 else L[i * G + g] + nmax32
    for g in range(G):
        scale[g] = sumlx[g] / suml2[g] if (flat[g] == _F0 and suml2[g] > _F0) else _F0


# ----------------------------------------------------------------------------------- byte helpers


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


# ------------------------------------------------------------------------------------------ row drivers
# Each row is cut into chunks of up to _CHUNK super-blocks; a chunk's sub-blocks are the lanes of
# one search. Scratch is allocated once per row.
_CHUNK = 4


@numba.njit(inline="always", cache=True)
def _from_lanes(L, G, n, g0, Lb):
    """The levels of one super-block (lanes g0 .. g0 + 256/n - 1) in natural order."""
    for j in range(QK_K // n):
        for i in range(n):
            Lb[n * j + i] = L[i * G + g0 + j]


@numba.njit(inline="always", cache=True)
def _lane_sums(G, n, W, out):
    """out[g] = sum of group g's weights, in order."""
    for g in range(G):
        out[g] = _F0
    for i in range(n):
        for g in range(G):
            out[g] += W[i * G + g]


@numba.njit(inline="always", cache=True)
def _imatrix_weights(x, qw, base, G, n, X, W, sigma2_factor):
    """W = qw * sqrt(sigma2 + x^2), sigma2 = factor * (sum of its super-block's x^2) / 256."""
    per_block = QK_K // n
    for b in range(G // per_block):
        sb = base + b * QK_K
        s = _F0
        for j in range(QK_K):
            s += x[sb + j] * x[sb + j]
        sigma2 = sigma2_factor * s / np.float32(256.0)
        for jj in range(per_block):
            g = b * per_block + jj
            for i in range(n):
                v = X[i * G + g]
                W[i * G + g] = qw[sb + n * jj + i] * np.sqrt(sigma2 + v * v)


@numba.njit(inline="always", cache=True)
def _requant_min(x, xb, Lb, n, ng, dq, mq, hi):
    """Lb[n*j + i] = clamp(nearest_int((x + m_j) / d_j), 0, hi) in groups whose d_j != 0 (the
    others keep the search's levels, as C's ``if (!d) continue``). Selects, not branches, so that
    the loop vectorizes; the scales are read before it."""
    hi32 = np.int32(hi)
    for j in range(ng):
        d = dq[j]
        m = mq[j]
        for i in range(n):
            v = max(_I0, min(hi32, nearest_int((x[xb + n * j + i] + m) / d)))
            Lb[n * j + i] = v if d != _F0 else Lb[n * j + i]


@numba.njit(inline="always", cache=True)
def _requant_sym(x, xb, Lb, n, ng, dq, lo):
    """Lb[n*j + i] = clamp(nearest_int(x / d_j), lo, -lo - 1) - lo where d_j != 0."""
    lo32 = np.int32(lo)
    hi32 = np.int32(-lo - 1)
    for j in range(ng):
        d = dq[j]
        for i in range(n):
            v = max(lo32, min(hi32, nearest_int(x[xb + n * j + i] / d))) - lo32
            Lb[n * j + i] = v if d != _F0 else Lb[n * j + i]


# ------------------------------------------------------------------------------------------ Q4_K / Q5_K


@numba.njit(inline="always", cache=True)
def _finish_q45(x, xb, out, ob, Lb, d_stored, m_stored, nmax, five, dq, mq):
    """Common tail of Q4_K/Q5_K: requantize with the stored scales and pack qs (and qh)."""
    for j in range(8):
        sc, m = _scale_min_k4(j, out, ob + 4)
        dq[j] = d_stored * np.float32(sc)
        mq[j] = m_stored * np.float32(m)
    _requant_min(x, xb, Lb, 32, 8, dq, mq, nmax)
    if five:
        qh = ob + 16
        ql = ob + 48
        # qh: bits 2k and 2k+1 of byte j are the 5th bits of values 64k + j and 64k + j + 32
        for j in range(32):
            h = 0
            for k in range(4):
                h |= ((np.int64(Lb[64 * k + j]) >> 4) << (2 * k)) | ((np.int64(Lb[64 * k + j + 32]) >> 4) << (2 * k + 1))
            out[qh + j] = np.uint8(h & 0xFF)
        for k in range(4):
            for j in range(32):
                l1 = np.int64(Lb[64 * k + j]) & 0xF
                l2 = np.int64(Lb[64 * k + j + 32]) & 0xF
                out[ql + 32 * k + j] = np.uint8(l1 | (l2 << 4))
    else:
        q = ob + 16
        for j in range(0, QK_K, 64):
            for l in range(32):
                out[q + l] = np.uint8((np.int64(Lb[j + l]) | (np.int64(Lb[j + l + 32]) << 4)) & 0xFF)
            q += 32


@numba.njit(cache=True, error_model="numpy")
def _q45_row(x, qw, out, five):
    nb = x.shape[0] // QK_K
    nmax = 31 if five else 15
    bb = 176 if five else 144
    has_w = qw.size > 0
    X = np.empty(QK_K * _CHUNK, dtype=np.float32)
    W = np.empty(QK_K * _CHUNK, dtype=np.float32)
    L = np.empty(QK_K * _CHUNK, dtype=np.int32)
    Laux = np.empty(QK_K * _CHUNK, dtype=np.int32)
    st = np.empty((ST_NST, 8 * _CHUNK), dtype=np.float32)
    sw = np.empty(8 * _CHUNK, dtype=np.float32)
    Lb = np.empty(QK_K, dtype=np.int32)
    dq = np.empty(16, dtype=np.float32)
    mq = np.empty(16, dtype=np.float32)
    scales = np.empty(8, dtype=np.float32)
    mins = np.empty(8, dtype=np.float32)
    Ls = np.empty(8, dtype=np.uint8)
    Lm = np.empty(8, dtype=np.uint8)
    ls = np.empty(8, dtype=np.int64)
    lm = np.empty(8, dtype=np.int64)
    for c0 in range(0, nb, _CHUNK):
        nbc = min(_CHUNK, nb - c0)
        G = 8 * nbc
        base = c0 * QK_K
        to_lanes(x, base, G, 32, X)
        if has_w:
            _imatrix_weights(x, qw, base, G, 32, X, W, np.float32(2.0))
            _lane_sums(G, 32, W, sw)
            qkx2_lanes(G, 32, nmax, X, W, L, Laux, np.float32(-0.9), np.float32(0.05), 36, False, st)
        else:
            # weights av_x + |x|, av_x = the sub-block's rms
            for g in range(G):
                sw[g] = _F0
            for i in range(32):
                for g in range(G):
                    sw[g] += X[i * G + g] * X[i * G + g]
            for g in range(G):
                sw[g] = np.sqrt(sw[g] / np.float32(32.0))
            for i in range(32):
                for g in range(G):
                    W[i * G + g] = sw[g] + np.abs(X[i * G + g])
            if five:
                qkx2_lanes(G, 32, nmax, X, W, L, Laux, np.float32(-0.5), np.float32(0.1), 15, False, st)
            else:
                qkx2_lanes(G, 32, nmax, X, W, L, Laux, np.float32(-1.0), np.float32(0.1), 20, False, st)
        for b in range(nbc):
            xb = base + b * QK_K
            ob = (c0 + b) * bb
            _from_lanes(L, G, 32, 8 * b, Lb)
            for j in range(8):
                scales[j] = st[ST_SC, 8 * b + j]
                mins[j] = -st[ST_MN, 8 * b + j]
            if has_w:
                d_block = make_qp_quants(8, 63, scales, Ls, sw[8 * b : 8 * b + 8])
                m_block = make_qp_quants(8, 63, mins, Lm, sw[8 * b : 8 * b + 8])
                for j in range(8):
                    s = np.int64(Ls[j])
                    m = np.int64(Lm[j])
                    ls[j] = min(63, s) if five else s
                    lm[j] = min(63, m) if five else m
            else:
                max_scale = _F0
                max_min = _F0
                for j in range(8):
                    if scales[j] > max_scale:
                        max_scale = scales[j]
                    if mins[j] > max_min:
                        max_min = mins[j]
                inv_scale = np.float32(63.0) / max_scale if max_scale > _F0 else _F0
                inv_min = np.float32(63.0) / max_min if max_min > _F0 else _F0
                for j in range(8):
                    ls[j] = min(63, nearest_int(inv_scale * scales[j]) & 0xFF)
                    lm[j] = min(63, nearest_int(inv_min * mins[j]) & 0xFF)
                d_block = max_scale / np.float32(63.0)
                m_block = max_min / np.float32(63.0)
            _pack_scale_min_k4(out, ob + 4, ls, lm)
            d_stored = put_fp16(out, ob, d_block)
            m_stored = put_fp16(out, ob + 2, m_block)
            _finish_q45(x, xb, out, ob, Lb, d_stored, m_stored, nmax, five, dq, mq)


@numba.njit(parallel=True, cache=True, error_model="numpy")
def _quantize_q45_kernel(rows, qw, five):
    nrows, n = rows.shape
    out = np.zeros((nrows, n // QK_K * (176 if five else 144)), dtype=np.uint8)
    for r in numba.prange(nrows):
        _q45_row(rows[r], qw, out[r], five)
    return out


# ------------------------------------------------------------------------------------------ Q6_K


@numba.njit(cache=True, error_model="numpy")
def _q6_row(x, qw, out):
    nb = x.shape[0] // QK_K
    has_w = qw.size > 0
    X = np.empty(QK_K * _CHUNK, dtype=np.float32)
    W = np.empty(QK_K * _CHUNK, dtype=np.float32)
    L = np.empty(QK_K * _CHUNK, dtype=np.int32)
    st = np.empty((ST_NST, 16 * _CHUNK), dtype=np.float32)
    Lb = np.empty(QK_K, dtype=np.int32)
    dq = np.empty(16, dtype=np.float32)
    for c0 in range(0, nb, _CHUNK):
        nbc = min(_CHUNK, nb - c0)
        G = 16 * nbc
        base = c0 * QK_K
        to_lanes(x, base, G, 16, X)
        if has_w:
            to_lanes(qw, base, G, 16, W)
        else:
            for k in range(QK_K * nbc):
                W[k] = X[k] * X[k]
        qx_lanes(G, 16, 32, X, W, L, st)
        for b in range(nbc):
            xb = base + b * QK_K
            ob = (c0 + b) * 210
            max_scale = _F0
            max_abs_scale = _F0
            for ib in range(16):
                s = st[ST_SC, 16 * b + ib]
                a = np.abs(s)
                if a > max_abs_scale:
                    max_abs_scale = a
                    max_scale = s
            if max_abs_scale < GROUP_MAX_EPS:
                for k in range(210):
                    out[ob + k] = 0
                continue
            _from_lanes(L, G, 16, 16 * b, Lb)
            iscale = np.float32(-128.0) / max_scale
            d_stored = put_fp16(out, ob + 208, _F1 / iscale)
            for ib in range(16):
                out[ob + 192 + ib] = np.uint8(min(127, nearest_int(iscale * st[ST_SC, 16 * b + ib])) & 0xFF)
            for j in range(16):
                dq[j] = d_stored * np.float32(np.int8(out[ob + 192 + j]))
            _requant_sym(x, xb, Lb, 16, 16, dq, -32)
            ql = ob
            qh = ob + 128
            for j in range(0, QK_K, 128):
                for l in range(32):
                    a = np.int64(Lb[j + l])
                    b2 = np.int64(Lb[j + l + 32])
                    c = np.int64(Lb[j + l + 64])
                    e = np.int64(Lb[j + l + 96])
                    out[ql + l] = np.uint8(((a & 0xF) | ((c & 0xF) << 4)) & 0xFF)
                    out[ql + l + 32] = np.uint8(((b2 & 0xF) | ((e & 0xF) << 4)) & 0xFF)
                    out[qh + l] = np.uint8(((a >> 4) | ((b2 >> 4) << 2) | ((c >> 4) << 4) | ((e >> 4) << 6)) & 0xFF)
                ql += 64
                qh += 32


@numba.njit(parallel=True, cache=True, error_model="numpy")
def _quantize_q6_kernel(rows, qw):
    nrows, n = rows.shape
    out = np.zeros((nrows, n // QK_K * 210), dtype=np.uint8)
    for r in numba.prange(nrows):
        _q6_row(rows[r], qw, out[r])
    return out


# ------------------------------------------------------------------------------------------ Q3_K


@numba.njit(inline="always", cache=True)
def _finish_q3(x, xb, out, ob, Lb, dq):
    """Requantize with the stored scales (d at 108, scales at 96) and pack hmask and qs."""
    d_all = get_fp16(out, ob + 108)
    for j in range(16):
        dq[j] = d_all * np.float32(_unpack_scale_q3(out, ob + 96, j))
    _requant_sym(x, xb, Lb, 16, 16, dq, -4)
    # hmask: bit k of byte m is the high bit (level > 3) of value 32*k + m; qs keep the low 2 bits
    for m in range(32):
        out[ob + m] = 0
    for k in range(8):
        for m in range(32):
            out[ob + m] |= np.uint8((Lb[32 * k + m] >> 2) << k)
    for j in range(0, QK_K, 128):
        for l in range(32):
            a = Lb[j + l] & 3
            b = Lb[j + l + 32] & 3
            c = Lb[j + l + 64] & 3
            e = Lb[j + l + 96] & 3
            out[ob + 32 + j // 4 + l] = np.uint8(a | (b << 2) | (c << 4) | (e << 6))


@numba.njit(cache=True, error_model="numpy")
def _q3_row(x, qw, out):
    nb = x.shape[0] // QK_K
    has_w = qw.size > 0
    X = np.empty(QK_K * _CHUNK, dtype=np.float32)
    W = np.empty(QK_K * _CHUNK, dtype=np.float32)
    L = np.empty(QK_K * _CHUNK, dtype=np.int32)
    st = np.empty((ST_NST, 16 * _CHUNK), dtype=np.float32)
    ist = np.empty((2, 16 * _CHUNK), dtype=np.int32)
    sw = np.empty(16 * _CHUNK, dtype=np.float32)
    Lb = np.empty(QK_K, dtype=np.int32)
    dq = np.empty(16, dtype=np.float32)
    scales = np.empty(16, dtype=np.float32)
    sw16 = np.empty(16, dtype=np.float32)
    Ls = np.empty(16, dtype=np.int32)
    for c0 in range(0, nb, _CHUNK):
        nbc = min(_CHUNK, nb - c0)
        G = 16 * nbc
        base = c0 * QK_K
        to_lanes(x, base, G, 16, X)
        if has_w:
            _imatrix_weights(x, qw, base, G, 16, X, W, np.float32(2.0))
            _lane_sums(G, 16, W, sw)
            qx_lanes(G, 16, 4, X, W, L, st)
        else:
            _q3_lanes(G, 16, 4, X, L, st, ist)
        for b in range(nbc):
            xb = base + b * QK_K
            ob = (c0 + b) * 110
            _from_lanes(L, G, 16, 16 * b, Lb)
            for j in range(16):
                scales[j] = st[ST_SC, 16 * b + j]
            if has_w:
                for j in range(16):
                    sw16[j] = sw[16 * b + j]
                d_block = make_qx_quants(16, 32, scales, Ls, 1, sw16)
                _pack_scales_q3(out, ob + 96, Ls)
                put_fp16(out, ob + 108, d_block)
            else:
                max_scale = _F0
                amax = _F0
                for j in range(16):
                    a = np.abs(scales[j])
                    if a > amax:
                        amax = a
                        max_scale = scales[j]
                if max_scale != _F0:
                    iscale = np.float32(-32.0) / max_scale
                    for j in range(16):
                        l = np.int64(np.int8(nearest_int(iscale * scales[j]) & 0xFF))
                        Ls[j] = max(-32, min(31, l)) + 32
                    _pack_scales_q3(out, ob + 96, Ls)
                    put_fp16(out, ob + 108, _F1 / iscale)
                else:
                    for k in range(12):
                        out[ob + 96 + k] = 0
                    put_fp16(out, ob + 108, _F0)
            _finish_q3(x, xb, out, ob, Lb, dq)


@numba.njit(parallel=True, cache=True, error_model="numpy")
def _quantize_q3_kernel(rows, qw):
    nrows, n = rows.shape
    out = np.zeros((nrows, n // QK_K * 110), dtype=np.uint8)
    for r in numba.prange(nrows):
        _q3_row(rows[r], qw, out[r])
    return out


# ------------------------------------------------------------------------------------------ Q2_K


@numba.njit(inline="always", cache=True)
def _finish_q2(x, xb, out, ob, Lb, dq, mq):
    """Requantize with the stored scale/min nibbles (d at 80, dmin at 82) and pack qs at 16."""
    d_all = get_fp16(out, ob + 80)
    m_all = get_fp16(out, ob + 82)
    for j in range(16):
        sc = np.int64(out[ob + j])
        dq[j] = d_all * np.float32(sc & 0xF)
        mq[j] = m_all * np.float32(sc >> 4)
    _requant_min(x, xb, Lb, 16, 16, dq, mq, 3)
    _pack_2bit(out, ob + 16, Lb)


@numba.njit(cache=True, error_model="numpy")
def _q2_row(x, qw, out):
    nb = x.shape[0] // QK_K
    has_w = qw.size > 0
    X = np.empty(QK_K * _CHUNK, dtype=np.float32)
    W = np.empty(QK_K * _CHUNK, dtype=np.float32)
    L = np.empty(QK_K * _CHUNK, dtype=np.int32)
    Laux = np.empty(QK_K * _CHUNK, dtype=np.int32)
    st = np.empty((ST_NST, 16 * _CHUNK), dtype=np.float32)
    sw = np.empty(16 * _CHUNK, dtype=np.float32)
    Lb = np.empty(QK_K, dtype=np.int32)
    dq = np.empty(16, dtype=np.float32)
    mq = np.empty(16, dtype=np.float32)
    scales = np.empty(16, dtype=np.float32)
    mins = np.empty(16, dtype=np.float32)
    sw16 = np.empty(16, dtype=np.float32)
    Ls = np.empty(16, dtype=np.uint8)
    Lm = np.empty(16, dtype=np.uint8)
    q4scale = np.float32(15.0)
    for c0 in range(0, nb, _CHUNK):
        nbc = min(_CHUNK, nb - c0)
        G = 16 * nbc
        base = c0 * QK_K
        to_lanes(x, base, G, 16, X)
        if has_w:
            _imatrix_weights(x, qw, base, G, 16, X, W, _F1)
            _lane_sums(G, 16, W, sw)
            qkx2_lanes(G, 16, 3, X, W, L, Laux, np.float32(-0.9), np.float32(0.05), 36, False, st)
        else:
            for k in range(QK_K * nbc):
                W[k] = np.abs(X[k])
            qkx2_lanes(G, 16, 3, X, W, L, Laux, np.float32(-0.5), np.float32(0.1), 15, True, st)
        for b in range(nbc):
            xb = base + b * QK_K
            ob = (c0 + b) * 84
            _from_lanes(L, G, 16, 16 * b, Lb)
            for j in range(16):
                scales[j] = st[ST_SC, 16 * b + j]
                mins[j] = -st[ST_MN, 16 * b + j]
            if has_w:
                for j in range(16):
                    sw16[j] = sw[16 * b + j]
                dm = make_qp_quants(16, 15, scales, Ls, sw16)
                mm = make_qp_quants(16, 15, mins, Lm, sw16)
                put_fp16(out, ob + 80, dm)
                put_fp16(out, ob + 82, mm)
                for j in range(16):
                    out[ob + j] = np.uint8((np.int64(Ls[j]) | (np.int64(Lm[j]) << 4)) & 0xFF)
            else:
                max_scale = _F0
                max_min = _F0
                for j in range(16):
                    if scales[j] > max_scale:
                        max_scale = scales[j]
                    if mins[j] > max_min:
                        max_min = mins[j]
                if max_scale > _F0:
                    iscale = q4scale / max_scale
                    for j in range(16):
                        out[ob + j] = np.uint8(nearest_int(iscale * scales[j]) & 0xFF)
                    put_fp16(out, ob + 80, max_scale / q4scale)
                else:
                    for j in range(16):
                        out[ob + j] = 0
                    put_fp16(out, ob + 80, _F0)
                if max_min > _F0:
                    iscale = q4scale / max_min
                    for j in range(16):
                        l = np.int64(nearest_int(iscale * mins[j]))
                        out[ob + j] = np.uint8((np.int64(out[ob + j]) | (l << 4)) & 0xFF)
                    put_fp16(out, ob + 82, max_min / q4scale)
                else:
                    put_fp16(out, ob + 82, _F0)
            _finish_q2(x, xb, out, ob, Lb, dq, mq)


@numba.njit(parallel=True, cache=True, error_model="numpy")
def _quantize_q2_kernel(rows, qw):
    nrows, n = rows.shape
    out = np.zeros((nrows, n // QK_K * 84), dtype=np.uint8)
    for r in numba.prange(nrows):
        _q2_row(rows[r], qw, out[r])
    return out


# ------------------------------------------------------------------------------------------ dequantize


@numba.njit(parallel=True, cache=True)
def _dequantize_kernel(data, kind, block_bytes, n_per_row):
    """dequantize_row_q{2..6}_k of uint8 rows; ``kind`` is the ggml type id."""
    nrows = data.shape[0]
    nb = n_per_row // QK_K
    bb = block_bytes
    y = np.empty((nrows, n_per_row), dtype=np.float32)
    for r in numba.prange(nrows):
        for i in range(nb):
            b = data[r, bb * i : bb * (i + 1)]
            o = y[r, QK_K * i : QK_K * (i + 1)]
            if kind == Q2_K:
                d = get_fp16(b, 80)
                mn = get_fp16(b, 82)
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
            elif kind == Q3_K:
                d_all = get_fp16(b, 108)
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
            elif kind == Q4_K or kind == Q5_K:
                d = get_fp16(b, 0)
                mn = get_fp16(b, 2)
                qs = 16 if kind == Q4_K else 48
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
                        if kind == Q5_K and (b[16 + l] & u1) != 0:
                            v += 16
                        o[k] = d1 * np.float32(v) - m1
                        k += 1
                    for l in range(32):
                        v = np.int64(b[qs + l] >> 4)
                        if kind == Q5_K and (b[16 + l] & u2) != 0:
                            v += 16
                        o[k] = d2 * np.float32(v) - m2
                        k += 1
                    qs += 32
                    isc += 2
                    u1 <<= 2
                    u2 <<= 2
            else:
                d = get_fp16(b, 208)
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


def _weights(imatrix):
    return np.empty(0, dtype=np.float32) if imatrix is None else imatrix


def quantize_q2_k(rows, imatrix):
    return _quantize_q2_kernel(rows, _weights(imatrix))


def quantize_q3_k(rows, imatrix):
    return _quantize_q3_kernel(rows, _weights(imatrix))


def quantize_q4_k(rows, imatrix):
    return _quantize_q45_kernel(rows, _weights(imatrix), False)


def quantize_q5_k(rows, imatrix):
    return _quantize_q45_kernel(rows, _weights(imatrix), True)


def quantize_q6_k(rows, imatrix):
    return _quantize_q6_kernel(rows, _weights(imatrix))


def _dequantizer(name):
    """dequantize_<type> of the k-quant ``name``."""
    qt = known_type(name)

    def dequantize(data, n_per_row):
        return _dequantize_kernel(data, int(qt.ggml), qt.type_size, n_per_row)

    return dequantize


dequantize_q2_k = _dequantizer("Q2_K")
dequantize_q3_k = _dequantizer("Q3_K")
dequantize_q4_k = _dequantizer("Q4_K")
dequantize_q5_k = _dequantizer("Q5_K")
dequantize_q6_k = _dequantizer("Q6_K")
