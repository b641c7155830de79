"""F32, F16, BF16: one value per element, stored little endian.

F16 is IEEE binary16 rounded to nearest even (``ggml_fp32_to_fp16_row``). BF16 is the top 16 bits
of the float32 rounded to nearest even (``ggml_fp32_to_bf16_row_ref``; NaN is refused before
quantizing, so its special case never applies).
"""

import numba
import numpy as np

from .numeric import FP16_TO_FP32, fp32_to_fp16_bits


@numba.njit(parallel=True, cache=True)
def _to_f16_kernel(rows):
    nrows, n = rows.shape
    out = np.empty((nrows, n), dtype=np.uint16)
    for r in numba.prange(nrows):
        for j in range(n):
            out[r, j] = fp32_to_fp16_bits(rows[r, j])
    return out


@numba.njit(parallel=True, cache=True)
def _to_bf16_kernel(bits):
    nrows, n = bits.shape
    out = np.empty((nrows, n), dtype=np.uint16)
    for r in numba.prange(nrows):
        for j in range(n):
            b = bits[r, j]
            out[r, j] = np.uint16((b + (np.uint32(0x7FFF) + ((b >> np.uint32(16)) & np.uint32(1)))) >> np.uint32(16))
    return out


@numba.njit(parallel=True, cache=True)
def _from_f16_kernel(halves):
    nrows, n = halves.shape
    out = np.empty((nrows, n), dtype=np.float32)
    for r in numba.prange(nrows):
        for j in range(n):
            out[r, j] = FP16_TO_FP32[halves[r, j]]
    return out


def quantize_f32(rows, imatrix):
    return rows.view(np.uint8).copy()


def quantize_f16(rows, imatrix):
    return _to_f16_kernel(rows).view(np.uint8)


def quantize_bf16(rows, imatrix):
    return _to_bf16_kernel(rows.view(np.uint32)).view(np.uint8)


def dequantize_f32(data, n_per_row):
    return data.view(np.float32).copy()


def dequantize_f16(data, n_per_row):
    return _from_f16_kernel(data.view(np.uint16))


def dequantize_bf16(data, n_per_row):
    return (data.view(np.uint16).astype(np.uint32) << np.uint32(16)).view(np.float32)
