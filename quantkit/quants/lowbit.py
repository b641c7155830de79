"""Q1_0 and Q2_0: one fp16 scale per block and 1 or 2 bits per value.

- Q1_0, 128 values in 18 bytes: ``d`` (fp16) | ``qs[16]``. ``d`` is the mean of ``|x|`` (a float
  sum in order, divided by 128) and bit ``j % 8`` of byte ``j / 8`` is set when ``x[j] >= 0``;
  value ``j`` is ``d`` or ``-d``.
- Q2_0, 64 values in 18 bytes: ``d`` (fp16) | ``qs[16]``. ``d`` is the block's largest ``|x|``;
  ``q = clamp(roundf(x * (1/d)) + 1, 0, 3)`` (``1/d`` of the float max, 0 for an all-zero block)
  sits in bits ``2 * (j % 4)`` of byte ``j / 4``; value ``j`` is ``(q - 1) * d``: -d, 0, d or 2d.

llama.cpp's quantizers ignore an importance matrix, and so does this module.
``quants/reference/lowbit.py`` is C's loop over one block as written.
"""

from __future__ import annotations

import numba
import numpy as np

from .numeric import bits_f32, get_fp16, put_fp16, roundf

# type name -> (values per block, values per byte)
GEOMETRY = {"Q1_0": (128, 8), "Q2_0": (64, 4)}


@numba.njit(inline="always", cache=True)
def _block_q1_0(x, base, out, pos):
    total = np.float32(0.0)
    for j in range(128):  # C's float sum, in order
        total += np.abs(x[base + j])
    put_fp16(out, pos, total / np.float32(128.0))
    for k in range(16):
        byte = 0
        for t in range(8):
            byte |= (1 if x[base + 8 * k + t] >= np.float32(0.0) else 0) << t
        out[pos + 2 + k] = np.uint8(byte)


@numba.njit(inline="always", cache=True)
def _block_q2_0(x, xb, base, out, pos):
    amax_bits = np.uint32(0)
    for j in range(64):  # an integer max over |x| bit patterns (finite input): vectorizes
        amax_bits = max(amax_bits, xb[base + j] & np.uint32(0x7FFFFFFF))
    amax = bits_f32(amax_bits)
    inv = np.float32(1.0) / amax if amax > np.float32(0.0) else np.float32(0.0)
    put_fp16(out, pos, amax)
    for k in range(16):
        byte = 0
        for t in range(4):
            q = min(max(np.int32(roundf(x[base + 4 * k + t] * inv)) + 1, 0), 3)
            byte |= q << (2 * t)
        out[pos + 2 + k] = np.uint8(byte)


def _quantize_kernel(one_bit):
    """The Q1_0 (one_bit) or Q2_0 kernel, the type a compile-time constant (no per-block branch)."""
    block = 128 if one_bit else 64

    @numba.njit(parallel=True, cache=True)
    def kernel(rows):
        nrows, n = rows.shape
        nblocks = n // block
        bits = rows.view(np.uint32)
        out = np.empty((nrows, nblocks * 18), dtype=np.uint8)
        for r in numba.prange(nrows):
            x = rows[r]
            xb = bits[r]
            o = out[r]
            for b in range(nblocks):
                if one_bit:
                    _block_q1_0(x, b * block, o, b * 18)
                else:
                    _block_q2_0(x, xb, b * block, o, b * 18)
        return out

    return kernel


_QUANTIZE = {"Q1_0": _quantize_kernel(True), "Q2_0": _quantize_kernel(False)}


@numba.njit(parallel=True, cache=True)
def _dequantize_kernel(data, n, one_bit):
    nrows = data.shape[0]
    block = 128 if one_bit else 64
    nblocks = n // block
    out = np.empty((nrows, n), dtype=np.float32)
    for r in numba.prange(nrows):
        src = data[r]
        y = out[r]
        for b in range(nblocks):
            d = get_fp16(src, b * 18)
            qs = b * 18 + 2
            base = b * block
            if one_bit:
                for j in range(128):
                    y[base + j] = d if (src[qs + j // 8] >> (j % 8)) & 1 else -d
            else:
                for j in range(64):
                    y[base + j] = np.float32(np.int32((src[qs + j // 4] >> (2 * (j % 4))) & 3) - 1) * d
    return out


def quantize_q1_0(rows: np.ndarray, imatrix: np.ndarray | None) -> np.ndarray:
    """Q1_0 bytes of float32 rows; ``imatrix`` is ignored, as by llama.cpp."""
    return _QUANTIZE["Q1_0"](rows)


def quantize_q2_0(rows: np.ndarray, imatrix: np.ndarray | None) -> np.ndarray:
    """Q2_0 bytes of float32 rows; ``imatrix`` is ignored, as by llama.cpp."""
    return _QUANTIZE["Q2_0"](rows)


def dequantize_q1_0(data: np.ndarray, n_per_row: int) -> np.ndarray:
    return _dequantize_kernel(data, int(n_per_row), True)


def dequantize_q2_0(data: np.ndarray, n_per_row: int) -> np.ndarray:
    return _dequantize_kernel(data, int(n_per_row), False)
