"""TQ1_0 and TQ2_0: ternary weights {-1, 0, 1} times one fp16 scale per 256 (BitNet b1.58, TriLMs).

Both take the block's absolute maximum as the scale ``d`` and store ``lroundf(x / d)``
(``x * (1/d)`` in float32, rounded half away from zero) plus 1, i.e. 0, 1 or 2. llama.cpp's
quantizers ignore an importance matrix, and so does this module.

Block layouts (as llama.cpp's ``block_tq1_0`` / ``block_tq2_0``):

- TQ1_0, 256 weights in 54 bytes: ``qs[48]`` | ``qh[4]`` | ``d`` (fp16). Five trits per byte,
  stored as ``ceil(t * 256 / 243)`` of the base-3 number ``t`` (first trit most significant):
  ``qs[0:32]`` holds weights ``m + 32n`` (m < 32, n < 5), ``qs[32:48]`` weights ``160 + m + 16n``
  (m < 16, n < 5), and ``qh[j]`` weights ``240 + j + 4n`` (n < 4, a fifth trit of 0).
- TQ2_0, 256 weights in 66 bytes: ``qs[64]`` | ``d`` (fp16). Two bits per weight: byte
  ``32c + m`` holds weight ``128c + m + 32n`` in bits ``2n``.
"""

from __future__ import annotations

import numba
import numpy as np

from ..types import QK_K
from .numeric import FP16_TO_FP32, fp32_to_fp16_bits, roundf



@numba.njit(inline="always", cache=True)
def _scale(x, out, d_off):
    """The block's abs max as fp16 into out[d_off:d_off+2]; returns 1/amax (0 for an all-zero block)."""
    amax = np.float32(0.0)
    for j in range(x.shape[0]):
        ax = np.abs(x[j])
        amax = amax if amax > ax else ax
    bits = fp32_to_fp16_bits(amax)
    out[d_off] = np.uint8(bits & np.uint16(0xFF))
    out[d_off + 1] = np.uint8(bits >> np.uint16(8))
    return np.float32(1.0) / amax if amax != np.float32(0.0) else np.float32(0.0)


@numba.njit(inline="always", cache=True)
def _trits(x, inv, t):
    """t[j] = lroundf(x[j] * id) + 1 for the block (a loop without branches: vectorizes)."""
    for j in range(QK_K):
        t[j] = np.int64(roundf(x[j] * inv)) + 1


@numba.njit(inline="always", cache=True)
def _pack_tq1_0(t, y):
    """TQ1_0's qs and qh from the block's trits t (0..2)."""
    for m in range(32):  # 5 trits per byte along 32 bytes: weights 0..159
        q = (((t[m] * 3 + t[m + 32]) * 3 + t[m + 64]) * 3 + t[m + 96]) * 3 + t[m + 128]
        y[m] = np.uint8((q * 256 + 242) // 243)
    for m in range(16):  # along 16 bytes: weights 160..239
        q = (((t[160 + m] * 3 + t[176 + m]) * 3 + t[192 + m]) * 3 + t[208 + m]) * 3 + t[224 + m]
        y[32 + m] = np.uint8((q * 256 + 242) // 243)
    for j in range(4):  # 4 trits per byte (+ a 0 trit): weights 240..255
        q = (((t[240 + j] * 3 + t[244 + j]) * 3 + t[248 + j]) * 3 + t[252 + j]) * 3
        y[48 + j] = np.uint8((q * 256 + 242) // 243)


@numba.njit(inline="always", cache=True)
def _pack_tq2_0(t, y):
    """TQ2_0's qs from the block's trits t (0..2)."""
    for c in range(2):
        for m in range(32):
            o = 128 * c + m
            y[32 * c + m] = np.uint8((t[o] & 3) | ((t[o + 32] & 3) << 2) | ((t[o + 64] & 3) << 4)
                                     | ((t[o + 96] & 3) << 6))


@numba.njit(parallel=True, cache=True)
def _quantize_ternary(rows, tq1):
    """TQ1_0 (``tq1``) or TQ2_0 blocks of float32 rows; the fp16 scale is each block's last 2 bytes."""
    block_bytes = 54 if tq1 else 66
    nrows, n = rows.shape
    nb = n // QK_K
    out = np.zeros((nrows, nb * block_bytes), dtype=np.uint8)
    for r in numba.prange(nrows):
        t = np.empty(QK_K, dtype=np.int64)
        for ib in range(nb):
            x = rows[r, ib * QK_K:(ib + 1) * QK_K]
            y = out[r, ib * block_bytes:(ib + 1) * block_bytes]
            _trits(x, _scale(x, y, block_bytes - 2), t)
            if tq1:
                _pack_tq1_0(t, y)
            else:
                _pack_tq2_0(t, y)
    return out


def _quantize_tq1_0(rows):
    return _quantize_ternary(rows, True)


def _quantize_tq2_0(rows):
    return _quantize_ternary(rows, False)


@numba.njit(inline="always", cache=True)
def _untrit(byte, pow3):
    """Trit of a TQ1_0 byte after multiplying by 3^n (mod 256): ((q * 3) >> 8) - 1."""
    q = (np.int64(byte) * pow3) & 0xFF
    return np.float32(((q * 3) >> 8) - 1)


@numba.njit(inline="always", cache=True)
def _unpack_tq1_0(q, d, y):
    """The 256 values of a TQ1_0 block (bytes q, scale d) into y."""
    o = 0
    for start, nbytes, ntrits in ((0, 32, 5), (32, 16, 5), (48, 4, 4)):
        p = 1
        for k in range(ntrits):
            for m in range(nbytes):
                y[o] = _untrit(q[start + m], p) * d
                o += 1
            p *= 3


@numba.njit(inline="always", cache=True)
def _unpack_tq2_0(q, d, y):
    """The 256 values of a TQ2_0 block (bytes q, scale d) into y."""
    o = 0
    for c in range(2):
        for k in range(4):
            for m in range(32):
                y[o] = np.float32(((np.int64(q[32 * c + m]) >> (2 * k)) & 3) - 1) * d
                o += 1


@numba.njit(parallel=True, cache=True)
def _dequantize_ternary(data, n, fp16, tq1):
    """float32 rows from TQ1_0 (``tq1``) or TQ2_0 blocks."""
    block_bytes = 54 if tq1 else 66
    nrows = data.shape[0]
    nb = n // QK_K
    out = np.empty((nrows, n), dtype=np.float32)
    for r in numba.prange(nrows):
        for ib in range(nb):
            q = data[r, ib * block_bytes:(ib + 1) * block_bytes]
            d = fp16[np.int64(q[block_bytes - 2]) | (np.int64(q[block_bytes - 1]) << 8)]
            y = out[r, ib * QK_K:(ib + 1) * QK_K]
            if tq1:
                _unpack_tq1_0(q, d, y)
            else:
                _unpack_tq2_0(q, d, y)
    return out


def _dequantize_tq1_0(data, n, fp16):
    return _dequantize_ternary(data, n, fp16, True)


def _dequantize_tq2_0(data, n, fp16):
    return _dequantize_ternary(data, n, fp16, False)


def quantize_tq1_0(rows: np.ndarray, imatrix: np.ndarray | None) -> np.ndarray:
    """TQ1_0 bytes of float32 rows; ``imatrix`` is ignored, as by llama.cpp."""
    return _quantize_tq1_0(rows)


def quantize_tq2_0(rows: np.ndarray, imatrix: np.ndarray | None) -> np.ndarray:
    """TQ2_0 bytes of float32 rows; ``imatrix`` is ignored, as by llama.cpp."""
    return _quantize_tq2_0(rows)


def dequantize_tq1_0(data: np.ndarray, n_per_row: int) -> np.ndarray:
    return _dequantize_tq1_0(data, int(n_per_row), FP16_TO_FP32)


def dequantize_tq2_0(data: np.ndarray, n_per_row: int) -> np.ndarray:
    return _dequantize_tq2_0(data, int(n_per_row), FP16_TO_FP32)
