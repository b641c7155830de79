"""IQ4_NL and IQ4_XS: 4-bit non-linear quants on llama.cpp's 16 levels ``kvalues_iq4nl``.

Block layouts (little-endian, as llama.cpp's ``block_iq4_nl`` / ``block_iq4_xs``):

- IQ4_NL, 32 weights in 18 bytes: ``d`` (fp16) | ``qs[16]`` (weight j in the low nibble of
  byte j, weight j+16 in the high nibble).
- IQ4_XS, 256 weights in 136 bytes: ``d`` (fp16) | ``scales_h`` (u16, 2 high bits of each of the 8
  sub-block scales) | ``scales_l[4]`` (4 low bits each) | ``qs[128]`` (8 x 16 bytes as in IQ4_NL).
  Sub-block ``ib`` has scale ``d * (ls - 32)`` with ``ls`` the 6-bit value.

The quantizer is ``quantize_row_iq4_nl_impl`` of ggml-quants.c as ``quantize_iq4_nl`` and
``quantize_iq4_xs`` call it (what ``ggml_quantize_chunk`` runs): weights ``x*x`` without an
importance matrix, ``imatrix[j] * sqrt(sigma2 + x*x)`` with one; a first scale from the largest
magnitude, refined by least squares, then 15 trial scales ``(itry - 127) / max``; for IQ4_XS the
8 sub-block scales are then quantized to 6 bits against ``-max_scale / 32`` and the weights
re-assigned with the quantized scale. All arithmetic is float32 in the C order of operations.
"""

from __future__ import annotations

import functools

import numba
import numpy as np

from ..types import QK_K, known_type
from .codebooks import iq4nl_values
from .numeric import FP16_TO_FP32, fp32_to_fp16_bits, nearest_int

IQ4_NL = known_type("IQ4_NL")
IQ4_XS = known_type("IQ4_XS")
QK4_NL = IQ4_NL.block_size
IQ4_NL_BYTES, IQ4_XS_BYTES = IQ4_NL.type_size, IQ4_XS.type_size

_NTRY = 7  # quantize_iq4_nl / quantize_iq4_xs pass ntry = 7
_GROUP_MAX_EPS = np.float32(1e-15)


def _values_f32() -> np.ndarray:
    return iq4nl_values().astype(np.float32)


@numba.njit(inline="always", cache=True)
def _best_index(values, x):
    """ggml's best_index_int8(16, values, x): index of the level nearest to x (ties go up)."""
    if x <= values[0]:
        return 0
    if x >= values[15]:
        return 15
    ml = 0
    mu = 15
    while mu - ml > 1:
        mav = (ml + mu) // 2
        if x < values[mav]:
            mu = mav
        else:
            ml = mav
    if x - values[mu - 1] < values[mu] - x:
        return mu - 1
    return mu


def _float_from_key(key: int) -> np.float32:
    bits = key if key >= 0 else (-key) | 0x80000000
    return np.array([bits], dtype=np.uint32).view(np.float32)[0]


def _key_from_float(value) -> int:
    bits = int(np.array([value], dtype=np.float32).view(np.uint32)[0])
    return bits if bits < 0x80000000 else -(bits & 0x7FFFFFFF)


@functools.cache
def index_thresholds() -> np.ndarray:
    """T[k-1] = the smallest float32 x with best_index_int8(x) >= k, for k = 1..15.

    best_index_int8 is monotone in x (its final ``x - a < b - x`` test is monotone too, float
    rounding included), so for any non-NaN float32 x it equals ``sum(x >= T)``: 15 comparisons
    without branches, which vectorize, instead of a data-dependent binary search. Found by
    bisection over the float32 values between two levels, with the binary search itself.
    """
    values = _values_f32()
    thresholds = np.empty(15, dtype=np.float32)
    for k in range(1, 16):
        lo, hi = _key_from_float(values[k - 1]), _key_from_float(values[k])  # index k-1 at lo, k at hi
        while hi - lo > 1:
            mid = (lo + hi) // 2
            if _best_index(values, _float_from_key(mid)) >= k:
                hi = mid
            else:
                lo = mid
        thresholds[k - 1] = _float_from_key(hi)
    thresholds.setflags(write=False)
    return thresholds


@numba.njit(inline="always", cache=True)
def _index(thresholds, x):
    """best_index_int8(16, kvalues_iq4nl, x) without branches (NaN: 15, as the binary search gives)."""
    l = np.int64(x != x) * 15
    for k in range(15):
        l += np.int64(x >= thresholds[k])
    return l


@numba.njit(inline="always", cache=True)
def _levels_and_sums(thresholds, values, x, o, inv, weight, idx):
    """Levels of inv*x[o:o+32] into idx; returns sum w*q*x and sum w*q*q, accumulated in C's order."""
    for j in range(32):
        idx[j] = _index(thresholds, inv * x[o + j])
    sumqx = np.float32(0.0)
    sumq2 = np.float32(0.0)
    for j in range(32):
        q = values[idx[j]]
        w = weight[j]
        sumqx += w * q * x[o + j]
        sumq2 += w * q * q
    return sumqx, sumq2


@numba.njit(cache=True)
def _quantize_superblock(x, qw, use_w, values, thresholds, out, L, scales, weight, idx):
    """quantize_row_iq4_nl_impl(len(x), 32, ...) with ntry = 7, writing one block into ``out``.

    ``x``: the super-block's float32 values (32 for IQ4_NL, 256 for IQ4_XS); ``qw``: its imatrix
    slice when ``use_w``; ``out``: the block's bytes (zeroed by the caller).
    """
    sb = x.shape[0]
    nb = sb // 32
    zero = np.float32(0.0)

    sigma2 = zero
    for j in range(sb):
        sigma2 += x[j] * x[j]
    sigma2 *= np.float32(2.0 / sb)  # 2.f/super_block_size: a power of two, exact

    max_scale = zero
    amax_scale = zero
    for ib in range(nb):
        o = ib * 32
        if use_w:
            for j in range(32):
                xj = x[o + j]
                weight[j] = qw[o + j] * np.float32(np.sqrt(sigma2 + xj * xj))
        else:
            for j in range(32):
                weight[j] = x[o + j] * x[o + j]
        amax = zero
        vmax = zero
        for j in range(32):
            ax = np.abs(x[o + j])
            if ax > amax:
                amax = ax
                vmax = x[o + j]
        if amax < _GROUP_MAX_EPS:
            scales[ib] = zero
            continue
        d = -vmax / values[0]
        sumqx, sumq2 = _levels_and_sums(thresholds, values, x, o, np.float32(1.0) / d, weight, idx)
        for j in range(32):
            L[o + j] = idx[j]
        d = sumqx / sumq2 if sumq2 > zero else zero
        best = d * sumqx
        for itry in range(-_NTRY, _NTRY + 1):
            inv = np.float32(itry - 127) / vmax  # (itry + values[0]) / max
            sumqx, sumq2 = _levels_and_sums(thresholds, values, x, o, inv, weight, idx)
            if sumq2 > zero and sumqx * sumqx > best * sumq2:
                d = sumqx / sumq2
                best = d * sumqx
        scales[ib] = d
        abs_d = np.abs(d)
        if abs_d > amax_scale:
            amax_scale = abs_d
            max_scale = d

    if nb > 1:  # IQ4_XS: 6-bit sub-block scales against d = -max_scale/32
        d = -max_scale / np.float32(32.0)
        bits = fp32_to_fp16_bits(d)
        out[0] = np.uint8(bits & np.uint16(0xFF))
        out[1] = np.uint8(bits >> np.uint16(8))
        inv = np.float32(1.0) / d if d != zero else zero
        scales_h = 0
        for ib in range(nb):
            l = nearest_int(inv * scales[ib])
            l = max(-32, min(31, l))
            dl = d * np.float32(l)
            idl = np.float32(1.0) / dl if dl != zero else zero
            o = ib * 32
            for j in range(32):
                L[o + j] = _index(thresholds, idl * x[o + j])
            l += 32
            l_l = l & 0xF
            l_h = l >> 4
            if ib % 2 == 0:
                out[4 + ib // 2] = np.uint8(l_l)
            else:
                out[4 + ib // 2] |= np.uint8(l_l << 4)
            scales_h |= l_h << (2 * (ib % 8))
        out[2] = np.uint8(scales_h & 0xFF)
        out[3] = np.uint8((scales_h >> 8) & 0xFF)
        qoff = 8
    else:  # IQ4_NL
        s = scales[0]
        bits = fp32_to_fp16_bits(s)
        out[0] = np.uint8(bits & np.uint16(0xFF))
        out[1] = np.uint8(bits >> np.uint16(8))
        inv = np.float32(1.0) / s if s != zero else zero
        for j in range(sb):
            L[j] = _index(thresholds, inv * x[j])
        qoff = 2

    for i in range(sb // 32):
        for j in range(16):
            out[qoff + 16 * i + j] = np.uint8(L[32 * i + j] | (L[32 * i + 16 + j] << 4))


@numba.njit(parallel=True, cache=True)
def _quantize_rows(rows, imatrix, use_w, values, thresholds, sb, block_bytes):
    nrows, n = rows.shape
    nblocks = n // sb
    out = np.zeros((nrows, nblocks * block_bytes), dtype=np.uint8)
    for r in numba.prange(nrows):
        L = np.zeros(sb, dtype=np.uint8)
        scales = np.zeros(sb // 32, dtype=np.float32)
        weight = np.zeros(32, dtype=np.float32)
        idx = np.zeros(32, dtype=np.int64)
        for ibl in range(nblocks):
            x = rows[r, ibl * sb:(ibl + 1) * sb]
            qw = imatrix[ibl * sb:(ibl + 1) * sb] if use_w else imatrix[0:0]
            _quantize_superblock(x, qw, use_w, values, thresholds,
                                 out[r, ibl * block_bytes:(ibl + 1) * block_bytes], L, scales, weight, idx)
    return out


@numba.njit(inline="always", cache=True)
def _unpack_nibbles(q, qoff, dl, values, y, yoff):
    """32 weights from q[qoff:qoff+16] (weight j in the low nibble of byte j, j+16 in the high one)."""
    for j in range(16):
        v = q[qoff + j]
        y[yoff + j] = dl * values[v & 0xF]
        y[yoff + 16 + j] = dl * values[v >> 4]


@numba.njit(parallel=True, cache=True)
def _dequantize_blocks(data, n, values, fp16, xs):
    """float32 rows from IQ4_XS (``xs``: 256 weights in 136 bytes) or IQ4_NL (32 in 18) blocks."""
    sb = QK_K if xs else QK4_NL
    block_bytes = IQ4_XS_BYTES if xs else IQ4_NL_BYTES
    nrows = data.shape[0]
    out = np.empty((nrows, n), dtype=np.float32)
    for r in numba.prange(nrows):
        q = data[r]
        y = out[r]
        for ibl in range(n // sb):
            b = ibl * block_bytes
            d = fp16[np.int64(q[b]) | (np.int64(q[b + 1]) << 8)]
            if not xs:
                _unpack_nibbles(q, b + 2, d, values, y, ibl * QK4_NL)
                continue
            scales_h = np.int64(q[b + 2]) | (np.int64(q[b + 3]) << 8)
            for ib in range(8):
                ls = ((np.int64(q[b + 4 + ib // 2]) >> (4 * (ib % 2))) & 0xF) | (((scales_h >> (2 * ib)) & 3) << 4)
                _unpack_nibbles(q, b + 8 + ib * 16, d * np.float32(ls - 32), values, y, ibl * QK_K + ib * 32)
    return out


def _quantize(qt, rows: np.ndarray, imatrix: np.ndarray | None) -> np.ndarray:
    use_w = imatrix is not None
    weights = imatrix if use_w else np.zeros(0, np.float32)
    return _quantize_rows(rows, weights, use_w, _values_f32(), index_thresholds(), qt.block_size, qt.type_size)


def quantize_iq4_nl(rows: np.ndarray, imatrix: np.ndarray | None) -> np.ndarray:
    return _quantize(IQ4_NL, rows, imatrix)


def quantize_iq4_xs(rows: np.ndarray, imatrix: np.ndarray | None) -> np.ndarray:
    return _quantize(IQ4_XS, rows, imatrix)


def dequantize_iq4_nl(data: np.ndarray, n_per_row: int) -> np.ndarray:
    return _dequantize_blocks(data, int(n_per_row), _values_f32(), FP16_TO_FP32, False)


def dequantize_iq4_xs(data: np.ndarray, n_per_row: int) -> np.ndarray:
    return _dequantize_blocks(data, int(n_per_row), _values_f32(), FP16_TO_FP32, True)
