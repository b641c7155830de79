"""``quantize(..., optimize=True)``: a data-free search that never does worse than llama.cpp's.

The result keeps the type, so the bytes keep their size and stock llama.cpp reads them. Per block
(super-block for the k-quant and IQ types) the search starts from llama.cpp's own choice (the
default kernels' bytes), builds improved candidates, and keeps whichever block has the lowest
weighted squared error sum(w * (x - dequantized)^2), where ``w`` is the weight llama.cpp's search
uses for that type (:func:`error_weights`). Keeping a candidate only when its error is strictly
lower makes "never worse than llama.cpp" hold by construction, block by block.

Candidates (docs/optimize.md):

- "scaled level" types (legacy, k-quants, IQ4_NL/IQ4_XS), whose values are
  ``d * s_j * codebook[L] - dmin * m_j``: the block is decoded into (d, dmin, s, m, L) and refined
  by :func:`_refine` — a dense scale scan and ±1 coordinate descent on the levels with re-fitted
  scale (single-scale blocks), neighbouring integer sub-block scales and mins, a weighted
  least-squares re-fit of the fp16 super-block scale(s) (with the neighbouring fp16 values), and
  levels re-rounded after each step, while the error falls;
- grid types (IQ3_*, IQ2_*, IQ1_*): the default search run a second time with other weights (a
  different start for its heuristics), and on both results the fp16 super-block scale re-fitted
  by weighted least squares given the chosen grid points.
"""

from __future__ import annotations

import numba
import numpy as np

from ..types import QK_K, quant_type
from .codebooks import iq4nl_values
from .numeric import FP16_TO_FP32, fp32_to_fp16_bits, nearest_int

_F0 = np.float32(0.0)
_ITERS = 2  # refinement rounds (each: sub-scales, fp16 re-fit, levels); most blocks settle in 2

# ------------------------------------------------------------------------------------------ weights


def _superblock_sum_x2(x2: np.ndarray, size: int) -> np.ndarray:
    """Per element: the sum of ``x2`` over its block of ``size`` values (float32, summed in float64)."""
    sums = x2.reshape(x2.shape[0], -1, size).sum(axis=2, keepdims=True, dtype=np.float64).astype(np.float32)
    return np.broadcast_to(sums, (x2.shape[0], x2.shape[1] // size, size)).reshape(x2.shape)


def error_weights(name: str, rows: np.ndarray, imatrix: np.ndarray | None) -> np.ndarray:
    """The weights llama.cpp's search for type ``name`` uses (float32, shape of ``rows``).

    With an imatrix ``qw``: qw * sqrt(sigma2 + x^2), sigma2 as llama.cpp computes it for the type
    (Q6_K: qw alone). Without: Q8_0/Q4_0/Q4_1/Q5_0/Q5_1 round to nearest and minimise the plain
    squared error (weight 1); Q2_K |x|; Q4_K/Q5_K the sub-block rms + |x|; IQ2_S sigma2/4 + x^2;
    every other type x^2.
    """
    x = np.asarray(rows, dtype=np.float32)
    x2 = x * x
    if imatrix is not None:
        qw = np.asarray(imatrix, dtype=np.float32).reshape(1, -1)
        if name == "Q6_K":
            return np.broadcast_to(qw, x.shape).copy()
        if name in ("Q8_0", "Q4_0", "Q4_1", "Q5_0", "Q5_1"):
            sigma2 = (x2.sum(axis=1, keepdims=True, dtype=np.float64) / x.shape[1]).astype(np.float32)
        elif name == "IQ4_NL":
            sigma2 = _superblock_sum_x2(x2, 32) * np.float32(2 / 32)
        elif name in ("Q2_K", "IQ2_XXS", "IQ2_XS"):
            sigma2 = _superblock_sum_x2(x2, QK_K) * np.float32(1 / QK_K)
        else:
            sigma2 = _superblock_sum_x2(x2, QK_K) * np.float32(2 / QK_K)
        x2 += sigma2
        return qw * np.sqrt(x2)
    if name in ("Q8_0", "Q4_0", "Q4_1", "Q5_0", "Q5_1"):
        return np.ones_like(x)
    if name == "Q2_K":
        return np.abs(x)
    if name in ("Q4_K", "Q5_K"):
        return np.sqrt(_superblock_sum_x2(x2, 32) * np.float32(1 / 32)) + np.abs(x)
    if name == "IQ2_S":
        return _superblock_sum_x2(x2, QK_K) * np.float32(0.5 / QK_K) + x2
    return x2


@numba.njit(parallel=True, cache=True)
def _block_errors(x, y, w, block):
    nrows, n = x.shape
    out = np.empty((nrows, n // block), np.float64)
    for r in numba.prange(nrows):
        for b in range(n // block):
            e = 0.0
            for i in range(b * block, b * block + block):
                diff = np.float64(x[r, i]) - np.float64(y[r, i])
                e += np.float64(w[r, i]) * diff * diff
            out[r, b] = e
    return out


def block_errors(rows: np.ndarray, values: np.ndarray, weights: np.ndarray, block: int) -> np.ndarray:
    """sum(w * (x - values)^2) per block of ``block`` values: float64 (nrows, blocks per row)."""
    x = np.ascontiguousarray(rows, np.float32).reshape(rows.shape[0], -1)
    return _block_errors(x, np.ascontiguousarray(values).reshape(x.shape), np.ascontiguousarray(weights).reshape(x.shape),
                         block)


# ------------------------------------------------------------------------------------------ layouts
# The "scaled level" types as (d, dmin, s, m, L): value = d * s[j] * codebook[L] - dmin * m[j], for
# the sub-block j of the value. unpack: uint8 (nb, block bytes) -> those arrays; pack: the reverse.


def _fp16(data: np.ndarray, pos: int) -> np.ndarray:
    return data[:, pos : pos + 2].copy().view(np.float16)[:, 0].astype(np.float32)


def _put_fp16(out: np.ndarray, pos: int, value: np.ndarray) -> None:
    out[:, pos : pos + 2] = value.astype(np.float16).reshape(-1, 1).view(np.uint8)


def _nibbles_32(q: np.ndarray) -> np.ndarray:
    """32 levels from 16 bytes: low nibbles are values 0..15, high nibbles 16..31."""
    return np.concatenate([q & 0xF, q >> 4], axis=1).astype(np.int32)


def _pack_nibbles_32(L: np.ndarray) -> np.ndarray:
    return (L[:, :16] | (L[:, 16:32] << 4)).astype(np.uint8)


class _Layout:
    """One scaled-level type: geometry, codebook, ranges, and its unpack/pack."""

    def __init__(self, name, nsub, codebook, smin, smax, mmin, mmax, unpack, pack):
        qt = quant_type(name)
        self.name, self.block, self.block_bytes = name, qt.block_size, qt.type_size
        self.nsub = nsub
        self.codebook = np.asarray(codebook, dtype=np.float32)
        self.uniform = bool(np.all(np.diff(self.codebook) == 1))
        assert self.uniform or self.codebook.size == 16  # _nearest16
        self.midpoints = np.append((self.codebook[1:] + self.codebook[:-1]) / 2, np.inf).astype(np.float32)
        # integer ranges of s and m; mmax 0: no mins; smin == smax (mmin == mmax): fixed
        self.smin, self.smax, self.mmin, self.mmax = smin, smax, mmin, mmax
        self.unpack, self.pack = unpack, pack


def _unpack_legacy(offset, has_min, five):
    def unpack(data):
        nb = data.shape[0]
        d = _fp16(data, 0)
        dm = -_fp16(data, 2) if has_min else np.zeros(nb, np.float32)
        qs = 4 if has_min else 2
        if offset is None:  # Q8_0
            L = data[:, 2:34].view(np.int8).astype(np.int32) + 128
        else:
            if five:
                qh = data[:, qs : qs + 4].copy().view(np.uint32)[:, 0]
                qs += 4
            L = _nibbles_32(data[:, qs : qs + 16])
            if five:
                L |= (((qh[:, None] >> np.arange(32, dtype=np.uint32)) & 1) << 4).astype(np.int32)
        one = np.ones((nb, 1), np.int32)
        return d, dm, one, one.copy() if has_min else np.zeros((nb, 1), np.int32), L

    def pack(d, dm, s, m, L, out):
        _put_fp16(out, 0, d)
        qs = 2
        if has_min:
            _put_fp16(out, 2, -dm)
            qs = 4
        if offset is None:
            out[:, 2:34] = (L - 128).astype(np.int8).view(np.uint8)
            return
        if five:
            bits = ((L >> 4) & 1).astype(np.uint32) << np.arange(32, dtype=np.uint32)
            out[:, qs : qs + 4] = bits.sum(axis=1, dtype=np.uint32).reshape(-1, 1).view(np.uint8)
            qs += 4
        out[:, qs : qs + 16] = _pack_nibbles_32(L & 0xF)

    return unpack, pack


def _q2k_index():
    """Q2_K/Q3_K: value k sits in qs byte (k // 128) * 32 + k % 32 at bit shift 2 * ((k % 128) // 32)."""
    k = np.arange(QK_K)
    return (k // 128) * 32 + k % 32, 2 * ((k % 128) // 32)


def _unpack_q2k(data):
    byte, shift = _q2k_index()
    sc = data[:, 0:16].astype(np.int32)
    L = ((data[:, 16 + byte] >> shift) & 3).astype(np.int32)
    return _fp16(data, 80), _fp16(data, 82), sc & 0xF, sc >> 4, L


def _pack_2bit(L):
    """64 bytes from 256 2-bit levels: value 128n + 32j + l at byte 32n + l, bit shift 2j."""
    q = L.reshape(-1, 2, 4, 32) & 3
    return (q[:, :, 0] | (q[:, :, 1] << 2) | (q[:, :, 2] << 4) | (q[:, :, 3] << 6)).reshape(-1, 64).astype(np.uint8)


def _bit_planes_32(bits):
    """32 bytes from 256 bits: value k's bit at byte k % 32, bit k // 32."""
    b = bits.reshape(-1, 8, 32).astype(np.int32) << np.arange(8, dtype=np.int32).reshape(1, 8, 1)
    return b.sum(axis=1).astype(np.uint8)


def _pack_q2k(d, dm, s, m, L, out):
    out[:, 0:16] = (s | (m << 4)).astype(np.uint8)
    out[:, 16:80] = _pack_2bit(L)
    _put_fp16(out, 80, d)
    _put_fp16(out, 82, dm)


def _q3_scales(data):
    j = np.arange(16)
    low = np.where(j < 8, data[:, 96 + (j % 8)] & 0xF, data[:, 96 + (j % 8)] >> 4).astype(np.int32)
    high = (data[:, 104 + j % 4].astype(np.int32) >> (2 * (j // 4))) & 3
    return (low | (high << 4)) - 32


def _unpack_q3k(data):
    byte, shift = _q2k_index()
    k = np.arange(QK_K)
    low = ((data[:, 32 + byte] >> shift) & 3).astype(np.int32)
    hbit = ((data[:, k % 32] >> ((k // 32) % 8)) & 1).astype(np.int32)
    nb = data.shape[0]
    return _fp16(data, 108), np.zeros(nb, np.float32), _q3_scales(data), np.zeros((nb, 16), np.int32), low | (hbit << 2)


def _pack_q3k(d, dm, s, m, L, out):
    nb = L.shape[0]
    out[:, 0:32] = _bit_planes_32((L >> 2) & 1)
    out[:, 32:96] = _pack_2bit(L)
    u = (s + 32).astype(np.int64)
    sc = np.zeros((nb, 12), np.int64)
    sc[:, 0:8] = (u[:, 0:8] & 0xF) | ((u[:, 8:16] & 0xF) << 4)
    for j in range(16):
        sc[:, 8 + j % 4] |= (u[:, j] >> 4) << (2 * (j // 4))
    out[:, 96:108] = sc.astype(np.uint8)
    _put_fp16(out, 108, d)


def _k4_scales(data, base):
    q = data[:, base : base + 12].astype(np.int32)
    s = np.empty((data.shape[0], 8), np.int32)
    m = np.empty_like(s)
    s[:, :4], m[:, :4] = q[:, 0:4] & 63, q[:, 4:8] & 63
    s[:, 4:] = (q[:, 8:12] & 0xF) | ((q[:, 0:4] >> 6) << 4)
    m[:, 4:] = (q[:, 8:12] >> 4) | ((q[:, 4:8] >> 6) << 4)
    return s, m


def _pack_k4_scales(s, m, out, base):
    q = np.empty((s.shape[0], 12), np.int32)
    q[:, 0:4] = s[:, :4] | ((s[:, 4:] >> 4) << 6)
    q[:, 4:8] = m[:, :4] | ((m[:, 4:] >> 4) << 6)
    q[:, 8:12] = (s[:, 4:] & 0xF) | ((m[:, 4:] & 0xF) << 4)
    out[:, base : base + 12] = q.astype(np.uint8)


def _q45_index():
    """Q4_K/Q5_K: value k sits in qs byte (k // 64) * 32 + k % 32, high nibble when k % 64 >= 32."""
    k = np.arange(QK_K)
    return (k // 64) * 32 + k % 32, 4 * ((k % 64) // 32)


def _unpack_q45(five):
    def unpack(data):
        byte, shift = _q45_index()
        qs = 48 if five else 16
        L = ((data[:, qs + byte] >> shift) & 0xF).astype(np.int32)
        if five:
            k = np.arange(QK_K)
            L |= (((data[:, 16 + k % 32] >> (2 * (k // 64) + (k % 64) // 32)) & 1) << 4).astype(np.int32)
        s, m = _k4_scales(data, 4)
        return _fp16(data, 0), _fp16(data, 2), s, m, L

    def pack(d, dm, s, m, L, out):
        q = L.reshape(-1, 4, 2, 32) & 0xF
        out[:, (48 if five else 16) :][:, :128] = (q[:, :, 0] | (q[:, :, 1] << 4)).reshape(-1, 128).astype(np.uint8)
        if five:
            out[:, 16:48] = _bit_planes_32((L >> 4) & 1)
        _put_fp16(out, 0, d)
        _put_fp16(out, 2, dm)
        _pack_k4_scales(s, m, out, 4)

    return unpack, pack


def _q6k_index():
    """Q6_K: value k: ql byte (k // 128) * 64 + k % 64 (high nibble when k % 128 >= 64), qh byte
    (k // 128) * 32 + k % 32 at bit shift 2 * ((k % 128) // 32)."""
    k = np.arange(QK_K)
    return (k // 128) * 64 + k % 64, 4 * ((k % 128) // 64), 128 + (k // 128) * 32 + k % 32, 2 * ((k % 128) // 32)


def _unpack_q6k(data):
    lb, ls, hb, hs = _q6k_index()
    L = (((data[:, lb] >> ls) & 0xF) | (((data[:, hb] >> hs) & 3) << 4)).astype(np.int32)
    nb = data.shape[0]
    return _fp16(data, 208), np.zeros(nb, np.float32), data[:, 192:208].view(np.int8).astype(np.int32), np.zeros((nb, 16), np.int32), L


def _pack_q6k(d, dm, s, m, L, out):
    q = L.reshape(-1, 2, 4, 32)
    low = q & 0xF
    out[:, 0:128] = (low[:, :, 0:2] | (low[:, :, 2:4] << 4)).reshape(-1, 128).astype(np.uint8)
    out[:, 128:192] = _pack_2bit(L >> 4)
    out[:, 192:208] = s.astype(np.int8).view(np.uint8)
    _put_fp16(out, 208, d)


def _unpack_iq4nl(data):
    nb = data.shape[0]
    return _fp16(data, 0), np.zeros(nb, np.float32), np.ones((nb, 1), np.int32), np.zeros((nb, 1), np.int32), _nibbles_32(data[:, 2:18])


def _pack_iq4nl(d, dm, s, m, L, out):
    _put_fp16(out, 0, d)
    out[:, 2:18] = _pack_nibbles_32(L)


def _unpack_iq4xs(data):
    nb = data.shape[0]
    sh = data[:, 2:4].copy().view(np.uint16)[:, 0].astype(np.int32)
    ib = np.arange(8)
    ls = ((data[:, 4 + ib // 2].astype(np.int32) >> (4 * (ib % 2))) & 0xF) | (((sh[:, None] >> (2 * ib)) & 3) << 4)
    L = np.concatenate([_nibbles_32(data[:, 8 + 16 * j : 24 + 16 * j]) for j in range(8)], axis=1)
    return _fp16(data, 0), np.zeros(nb, np.float32), ls - 32, np.zeros((nb, 8), np.int32), L


def _pack_iq4xs(d, dm, s, m, L, out):
    _put_fp16(out, 0, d)
    u = (s + 32).astype(np.int64)
    sh = np.zeros(u.shape[0], np.int64)
    for ib in range(8):
        sh |= (u[:, ib] >> 4) << (2 * ib)
    out[:, 2:4] = sh.astype(np.uint16).reshape(-1, 1).view(np.uint8)
    out[:, 4:8] = ((u[:, 0::2] & 0xF) | ((u[:, 1::2] & 0xF) << 4)).astype(np.uint8)
    for j in range(8):
        out[:, 8 + 16 * j : 24 + 16 * j] = _pack_nibbles_32(L[:, 32 * j : 32 * j + 32])


def _layouts() -> dict:
    iq4 = iq4nl_values().astype(np.float32)
    return {
        "Q4_0": _Layout("Q4_0", 1, np.arange(-8, 8), 1, 1, 0, 0, *_unpack_legacy(8, False, False)),
        "Q4_1": _Layout("Q4_1", 1, np.arange(16), 1, 1, 1, 1, *_unpack_legacy(0, True, False)),
        "Q5_0": _Layout("Q5_0", 1, np.arange(-16, 16), 1, 1, 0, 0, *_unpack_legacy(16, False, True)),
        "Q5_1": _Layout("Q5_1", 1, np.arange(32), 1, 1, 1, 1, *_unpack_legacy(0, True, True)),
        "Q8_0": _Layout("Q8_0", 1, np.arange(-128, 128), 1, 1, 0, 0, *_unpack_legacy(None, False, False)),
        "Q2_K": _Layout("Q2_K", 16, np.arange(4), 0, 15, 0, 15, _unpack_q2k, _pack_q2k),
        "Q3_K": _Layout("Q3_K", 16, np.arange(-4, 4), -32, 31, 0, 0, _unpack_q3k, _pack_q3k),
        "Q4_K": _Layout("Q4_K", 8, np.arange(16), 0, 63, 0, 63, *_unpack_q45(False)),
        "Q5_K": _Layout("Q5_K", 8, np.arange(32), 0, 63, 0, 63, *_unpack_q45(True)),
        "Q6_K": _Layout("Q6_K", 16, np.arange(-32, 32), -128, 127, 0, 0, _unpack_q6k, _pack_q6k),
        "IQ4_NL": _Layout("IQ4_NL", 1, iq4, 1, 1, 0, 0, _unpack_iq4nl, _pack_iq4nl),
        "IQ4_XS": _Layout("IQ4_XS", 8, iq4, -32, 31, 0, 0, _unpack_iq4xs, _pack_iq4xs),
    }


_LAYOUTS: dict = {}


def layout(name: str):
    """The scaled-level layout of type ``name``, or None for a grid type."""
    if not _LAYOUTS:
        _LAYOUTS.update(_layouts())
    return _LAYOUTS.get(name)


# ------------------------------------------------------------------------------------------ search


@numba.njit(inline="always", cache=True)
def _fp16_round(v):
    return FP16_TO_FP32[np.int64(fp32_to_fp16_bits(np.float32(v)))]


@numba.njit(inline="always", cache=True)
def _fp16_step(v, k):
    """The fp16 value k steps (of the fp16 bit pattern) from fp16(v); fp16(v) where that is not finite."""
    h = np.int64(fp32_to_fp16_bits(np.float32(v))) + k
    if h < 0 or h > 0xFFFF or (h & 0x7C00) == 0x7C00:
        h = np.int64(fp32_to_fp16_bits(np.float32(v)))
    return FP16_TO_FP32[h]


@numba.njit(inline="always", cache=True)
def _nearest16(v, mid):
    """Index of the entry nearest v in a sorted 16-entry codebook whose midpoints are ``mid``
    (mid[k] between entries k and k+1; mid[15] unused): a branch-free binary search."""
    li = np.int32(0)
    for step in (8, 4, 2, 1):
        li += np.int32(step) if v > mid[li + step - 1] else np.int32(0)
    return li


@numba.njit(inline="always", cache=True)
def _sub_error(x, w, lo, n, scale, shift, cb, L):
    """sum over x[lo:lo+n] of w * (x - (scale * cb[L] - shift))^2."""
    e = _F0
    for i in range(lo, lo + n):
        r = x[i] - (scale * cb[L[i]] - shift)
        e += w[i] * r * r
    return np.float64(e)


@numba.njit(inline="always", cache=True)
def _assign(x, w, lo, n, scale, shift, cb, mid, uniform, L, Lt):
    """Round x[lo:lo+n] to the nearest level for (scale, shift) into Lt; returns the error.
    A zero scale keeps the levels L (every level gives the same value)."""
    if scale == _F0:
        for i in range(lo, lo + n):
            Lt[i] = L[i]
        return _sub_error(x, w, lo, n, scale, shift, cb, Lt)
    inv = np.float32(1.0) / scale
    e = _F0
    if not uniform:
        for i in range(lo, lo + n):
            li = _nearest16((x[i] + shift) * inv, mid)
            Lt[i] = li
            r = x[i] - (scale * cb[li] - shift)
            e += w[i] * r * r
        return np.float64(e)
    top = np.int32(cb.shape[0] - 1)
    c0 = cb[0]
    for i in range(lo, lo + n):
        v = (x[i] + shift) * inv - c0
        v = max(np.float32(-1.0), min(np.float32(top + 1), v))
        li = max(np.int32(0), min(top, nearest_int(v)))
        Lt[i] = li
        r = x[i] - (scale * (c0 + np.float32(li)) - shift)
        e += w[i] * r * r
    return np.float64(e)


@numba.njit(cache=True, fastmath=True)  # a search: C's order does not matter here
def _refit(x, w, nsub, sl, cb, d, dm, s, m, L, has_min):
    """Weighted least-squares (d, dmin) for fixed s, m, L, rounded to fp16 and the neighbouring
    fp16 values, the best of those (current (d, dmin) included) by exact error."""
    A = 0.0
    B = 0.0
    C = 0.0
    P = 0.0
    Q = 0.0
    X2 = 0.0
    for j in range(nsub):
        for i in range(j * sl, j * sl + sl):
            a = np.float64(s[j]) * np.float64(cb[L[i]])
            b = -np.float64(m[j])
            wi = np.float64(w[i])
            xi = np.float64(x[i])
            A += wi * a * a
            B += wi * a * b
            C += wi * b * b
            P += wi * xi * a
            Q += wi * xi * b
            X2 += wi * xi * xi
    if has_min:
        det = A * C - B * B
        if det <= 0.0:
            return d, dm
        d_opt = (P * C - Q * B) / det
        m_opt = (A * Q - B * P) / det
    else:
        if A <= 0.0:
            return d, dm
        d_opt = P / A
        m_opt = 0.0
    best_d = d
    best_m = dm
    best = X2 - 2.0 * (d * P + dm * Q) + d * d * A + 2.0 * d * dm * B + dm * dm * C
    for kd in range(-1, 2):
        dd = np.float64(_fp16_step(np.float32(d_opt), kd))
        for km in range(-1, 2):
            if not has_min and km != 0:
                continue
            mm = np.float64(_fp16_step(np.float32(m_opt), km)) if has_min else 0.0
            e = X2 - 2.0 * (dd * P + mm * Q) + dd * dd * A + 2.0 * dd * mm * B + mm * mm * C
            if e < best:
                best = e
                best_d = dd
                best_m = mm
    return np.float32(best_d), np.float32(best_m)


@numba.njit(inline="always", cache=True)
def _fit_sums(x, w, n, cb, L):
    """(sum(w x q), sum(w q^2)), q = cb[L]: the least-squares scale of one-scale levels is their ratio."""
    sxl = 0.0
    sll = 0.0
    for i in range(n):
        q = np.float64(cb[L[i]])
        sxl += np.float64(w[i]) * np.float64(x[i]) * q
        sll += np.float64(w[i]) * q * q
    return sxl, sll


@numba.njit(cache=True, fastmath=True)  # a search: C's order does not matter here
def _scan(x, w, n, cb, mid, uniform, L, Lt):
    """Single-scale blocks: try scales max/(end + 0.2 t), t = -5..5, for both codebook ends,
    each rounded, least-squares re-fitted, rounded to fp16 and re-rounded; keep the best in L.
    Returns (d, error)."""
    mx = _F0
    for i in range(n):
        if np.abs(x[i]) > np.abs(mx):
            mx = x[i]
    d_best = _F0
    e_best = np.inf
    if mx == _F0:
        return d_best, e_best
    for end in range(2):
        c = cb[0] if end == 0 else cb[cb.shape[0] - 1]
        for t in range(-5, 6):
            den = c + np.float32(0.2) * np.float32(t)
            if den == _F0 or (den > _F0) != (c > _F0):
                continue
            d = _fp16_round(mx / den)
            if d == _F0:
                continue
            _assign(x, w, 0, n, d, _F0, cb, mid, uniform, L, Lt)
            sxl, sll = _fit_sums(x, w, n, cb, Lt)
            if sll > 0.0:
                d = _fp16_round(np.float32(sxl / sll))
            if d == _F0:
                continue
            e = _assign(x, w, 0, n, d, _F0, cb, mid, uniform, L, Lt)
            if e < e_best:
                e_best = e
                d_best = d
                for i in range(n):
                    L[i] = Lt[i]
    return d_best, e_best


@numba.njit(cache=True, fastmath=True)  # a search: C's order does not matter here
def _descend(x, w, n, cb, L, Lt):
    """Greedy ±1 coordinate descent on the levels with the least-squares scale re-fitted: move the
    level whose change raises sum(wxq)^2 / sum(wq^2) most, while it rises. Returns that scale."""
    for i in range(n):
        Lt[i] = L[i]
    sxl, sll = _fit_sums(x, w, n, cb, Lt)
    if sll <= 0.0:
        return _F0
    nlev = cb.shape[0]
    for _ in range(2 * n):
        best = sxl * sxl / sll
        bi = -1
        bl = 0
        for i in range(n):
            q = np.float64(cb[Lt[i]])
            wi = np.float64(w[i])
            for step in (-1, 1):
                l2 = Lt[i] + step
                if l2 < 0 or l2 >= nlev:
                    continue
                q2 = np.float64(cb[l2])
                a = sxl + wi * np.float64(x[i]) * (q2 - q)
                b = sll + wi * (q2 * q2 - q * q)
                if b > 0.0 and a * a / b > best * (1.0 + 1e-12):
                    best = a * a / b
                    bi = i
                    bl = l2
        if bi < 0:
            break
        q = np.float64(cb[Lt[bi]])
        q2 = np.float64(cb[bl])
        sxl += np.float64(w[bi]) * np.float64(x[bi]) * (q2 - q)
        sll += np.float64(w[bi]) * (q2 * q2 - q * q)
        Lt[bi] = bl
    return np.float32(sxl / sll)


@numba.njit(cache=True, fastmath=True)  # a search: C's order does not matter here
def _refine_block(x, w, nsub, cb, mid, uniform, smin, smax, mmin, mmax, d, dm, s, m, L, Lt, Lb):
    """Improve one block's (d, dm, s, m, L) in place; returns (d, dm). The error never rises."""
    n = x.shape[0]
    sl = n // nsub
    has_min = mmax > 0
    single = nsub == 1 and not has_min
    # start: llama.cpp's scales with the levels re-rounded where that helps
    err = 0.0
    for j in range(nsub):
        e0 = _sub_error(x, w, j * sl, sl, d * np.float32(s[j]), dm * np.float32(m[j]), cb, L)
        e1 = _assign(x, w, j * sl, sl, d * np.float32(s[j]), dm * np.float32(m[j]), cb, mid, uniform, L, Lt)
        if e1 < e0:
            for i in range(j * sl, j * sl + sl):
                L[i] = Lt[i]
            e0 = e1
        err += e0
    if single:
        ds, es = _scan(x, w, n, cb, mid, uniform, Lb, Lt)
        if es < err:
            err = es
            d = ds
            for i in range(n):
                L[i] = Lb[i]
        dc = _fp16_round(_descend(x, w, n, cb, L, Lt))
        for k in range(-1, 2):
            dk = _fp16_step(dc, k)
            if dk != _F0:
                e = _assign(x, w, 0, n, dk, _F0, cb, mid, uniform, L, Lt)
                if e < err:
                    err = e
                    d = dk
                    for i in range(n):
                        L[i] = Lt[i]
    neighbours = smax > smin or mmax > mmin
    for _ in range(_ITERS if neighbours else 4 * _ITERS):  # rounds without neighbours are cheap
        before = err
        if neighbours:  # neighbouring integer sub-block scales (and mins), both signs
            err = 0.0
            for j in range(nsub):
                lo = j * sl
                be = _sub_error(x, w, lo, sl, d * np.float32(s[j]), dm * np.float32(m[j]), cb, L)
                bs = s[j]
                bm = m[j]
                # the scale (-2..2 around it, and -s-1..-s+1 where signed), then the min (-1, +1)
                for k in range(9 if smin < 0 else 6):
                    if k < 4:
                        sc = s[j] + (k - 2 if k < 2 else k - 1)
                        mc = m[j]
                    elif k < 6:
                        sc = bs
                        mc = m[j] + (-1 if k == 4 else 1)
                    else:
                        sc = -s[j] + k - 7
                        mc = bm
                    if sc < smin or sc > smax or mc < mmin or mc > mmax or (sc == bs and mc == bm):
                        continue
                    e = _assign(x, w, lo, sl, d * np.float32(sc), dm * np.float32(mc), cb, mid, uniform, L, Lt)
                    if e < be:
                        be = e
                        bs = sc
                        bm = mc
                        for i in range(lo, lo + sl):
                            Lb[i] = Lt[i]
                if bs != s[j] or bm != m[j]:
                    s[j] = bs
                    m[j] = bm
                    for i in range(lo, lo + sl):
                        L[i] = Lb[i]
                err += be
        d, dm = _refit(x, w, nsub, sl, cb, d, dm, s, m, L, has_min)
        err = 0.0
        for j in range(nsub):
            lo = j * sl
            e0 = _sub_error(x, w, lo, sl, d * np.float32(s[j]), dm * np.float32(m[j]), cb, L)
            e1 = _assign(x, w, lo, sl, d * np.float32(s[j]), dm * np.float32(m[j]), cb, mid, uniform, L, Lt)
            if e1 < e0:
                for i in range(lo, lo + sl):
                    L[i] = Lt[i]
                e0 = e1
            err += e0
        if err >= before * (1.0 - 1e-9):
            break
    return d, dm


@numba.njit(parallel=True, cache=True)
def _refine(X, W, nsub, cb, mid, uniform, smin, smax, mmin, mmax, D, DM, S, M, L):
    """_refine_block on every block (rows of X), in parallel."""
    nb, n = X.shape
    for b in numba.prange(nb):
        Lt = np.empty(n, np.int32)
        Lb = np.empty(n, np.int32)
        d, dm = _refine_block(X[b], W[b], nsub, cb, mid, uniform, smin, smax, mmin, mmax, D[b], DM[b], S[b], M[b], L[b], Lt, Lb)
        D[b] = d
        DM[b] = dm


def _scaled_candidate(lay: _Layout, rows: np.ndarray, weights: np.ndarray, default: np.ndarray) -> np.ndarray:
    """The refined bytes of a scaled-level type, starting from the default bytes."""
    nb = default.size // lay.block_bytes
    blocks = default.reshape(nb, lay.block_bytes)
    d, dm, s, m, L = lay.unpack(blocks)
    X = rows.reshape(nb, lay.block)
    W = weights.reshape(nb, lay.block)
    d, dm = np.ascontiguousarray(d, np.float32), np.ascontiguousarray(dm, np.float32)
    s, m, L = (np.ascontiguousarray(a, np.int32) for a in (s, m, L))
    _refine(X, W, lay.nsub, lay.codebook, lay.midpoints, lay.uniform, lay.smin, lay.smax, lay.mmin, lay.mmax, d, dm, s, m, L)
    out = blocks.copy()
    lay.pack(d, dm, s, m, L, out)
    return out.reshape(default.shape)


# ------------------------------------------------------------------------------------------ grid types


def _d_field(name: str):
    """(get, put) of a grid type's fp16 super-block scale in (nb, block bytes) uint8 blocks."""
    if name == "IQ1_M":  # the fp16 is spread over the top nibbles of the four uint16 scales (bytes 48..55)
        def get(blocks):
            sc = blocks[:, 48:56].copy().view(np.uint16).astype(np.uint32)
            bits = (sc[:, 0] >> 12) | ((sc[:, 1] >> 8) & 0xF0) | ((sc[:, 2] >> 4) & 0xF00) | (sc[:, 3] & 0xF000)
            return bits.astype(np.uint16).view(np.float16).astype(np.float32)

        def put(blocks, value):
            bits = value.astype(np.float16).view(np.uint16).astype(np.uint32)
            sc = blocks[:, 48:56].copy().view(np.uint16).astype(np.uint32) & 0x0FFF
            for k in range(4):
                sc[:, k] |= ((bits >> (4 * k)) & 0xF) << 12
            blocks[:, 48:56] = sc.astype(np.uint16).view(np.uint8)

        return get, put
    return (lambda blocks: _fp16(blocks, 0)), (lambda blocks, value: _put_fp16(blocks, 0, value))


def _refit_grid_scale(qt, rows: np.ndarray, weights: np.ndarray, data: np.ndarray) -> np.ndarray:
    """``data`` with each super-block's fp16 scale re-fitted by weighted least squares given the
    chosen grid points (values are linear in it: dequantize with scale 1 gives the basis); the
    fp16 rounding and its two neighbours are tried, the best kept (blocks never get worse here)."""
    get, put = _d_field(qt.name)
    nb = data.size // qt.type_size
    blocks = data.reshape(nb, qt.type_size)
    unit = blocks.copy()
    put(unit, np.ones(nb, np.float32))
    basis = qt.dequantize_rows(unit.reshape(rows.shape[0], -1), rows.shape[1]).reshape(nb, qt.block_size).astype(np.float64)
    x = rows.reshape(nb, qt.block_size).astype(np.float64)
    w = weights.reshape(nb, qt.block_size).astype(np.float64)
    A = (w * basis * basis).sum(axis=1)
    P = (w * x * basis).sum(axis=1)
    X2 = (w * x * x).sum(axis=1)
    d0 = get(blocks).astype(np.float64)
    best_d = d0.copy()
    best = X2 - 2 * d0 * P + d0 * d0 * A
    d_opt = np.where(A > 0, P / np.where(A > 0, A, 1), d0).astype(np.float32)
    bits = d_opt.astype(np.float16).view(np.uint16).astype(np.int64)
    for k in (-1, 0, 1):
        cand_bits = np.clip(bits + k, 0, 0xFFFF).astype(np.uint16)
        cand = cand_bits.view(np.float16).astype(np.float64)
        ok = np.isfinite(cand)
        cand = np.where(ok, cand, d0)
        e = X2 - 2 * cand * P + cand * cand * A
        better = ok & (e < best)
        best = np.where(better, e, best)
        best_d = np.where(better, cand, best_d)
    out = blocks.copy()
    put(out, best_d.astype(np.float32))
    return out.reshape(data.shape)


def _grid_candidates(qt, rows, imatrix, weights, default):
    """Grid types: the default search re-run with other weights, and the fp16 scale re-fitted."""
    alt_imatrix = np.ones(rows.shape[1], np.float32) if imatrix is None else np.sqrt(imatrix).astype(np.float32)
    alternative = qt.quantize_rows(rows, alt_imatrix)
    return [_refit_grid_scale(qt, rows, weights, default), alternative, _refit_grid_scale(qt, rows, weights, alternative)]


# ------------------------------------------------------------------------------------------ front


def optimize_rows(qt, rows: np.ndarray, imatrix: np.ndarray | None, default: np.ndarray) -> np.ndarray:
    """The optimized bytes of float32 ``rows`` (nrows, n_per_row) of type ``qt``, given the default
    kernel's bytes ``default`` (nrows, row bytes): per block, the candidate with the lowest weighted
    error, llama.cpp's block kept on ties. Same shape and size as ``default``."""
    weights = error_weights(qt.name, rows, imatrix)
    lay = layout(qt.name)
    if lay is not None:
        candidates = [_scaled_candidate(lay, rows, weights, default)]
    else:
        candidates = _grid_candidates(qt, rows, imatrix, weights, default)
    nrows, n_per_row = rows.shape
    nblocks = n_per_row // qt.block_size
    best = default.reshape(nrows, nblocks, qt.type_size).copy()
    best_err = block_errors(rows, qt.dequantize_rows(default, n_per_row), weights, qt.block_size)
    for cand in candidates:
        err = block_errors(rows, qt.dequantize_rows(cand, n_per_row), weights, qt.block_size)
        better = err < best_err
        best[better] = cand.reshape(nrows, nblocks, qt.type_size)[better]
        best_err = np.where(better, err, best_err)
    return best.reshape(default.shape)
