"""F32, F16, BF16: one value per element, stored little endian.

F16 is IEEE binary16 rounded to nearest even (``ggml_fp32_to_fp16_row``). BF16 is the top 16 bits
of the float32 rounded to nearest even (``ggml_fp32_to_bf16_row_ref``; NaN is refused before
quantizing, so its special case never applies).
"""

import numba
import numpy as np

from .numeric import FP16_TO_FP32, fp32_to_fp16_bits


@numba.njit(inline="always", cache=True)
def _bf16_bits(b):
    """The top 16 bits of float32 bits ``b``, rounded to nearest even."""
    return np.uint16((b + (np.uint32(0x7FFF) + ((b >> np.uint32(16)) & np.uint32(1)))) >> np.uint32(16))


@numba.njit(parallel=True, cache=True)
def _to_half_kernel(rows, bf16):
    """The 16-bit words of float32 rows: BF16 (``bf16``) or F16."""
    bits = rows.view(np.uint32)
    out = np.empty(rows.shape, dtype=np.uint16)
    for r in numba.prange(rows.shape[0]):
        for j in range(rows.shape[1]):
            out[r, j] = _bf16_bits(bits[r, j]) if bf16 else fp32_to_fp16_bits(rows[r, j])
    return out


def _to_f16_kernel(rows):
    return _to_half_kernel(rows, False)


def _to_bf16_kernel(bits):
    return _to_half_kernel(bits.view(np.float32), True)


@numba.njit(parallel=True, cache=True)
def _from_f16_kernel(halves):
    nrows, n = halves.shape
    out = np.empty((nrows, n), dtype=np.float32)
    for r in numba.prange(nrows):
        for j in range(n):
            out[r, j] = FP16_TO_FP32[halves[r, j]]
    return out


def quantize_rows(qt, rows, imatrix):
    if qt.name == "F32":
        return rows.view(np.uint8).copy()
    if qt.name == "F16":
        return _to_f16_kernel(rows).view(np.uint8)
    return _to_bf16_kernel(rows.view(np.uint32)).view(np.uint8)


def dequantize_rows(qt, data, n_per_row):
    if qt.name == "F32":
        return data.view(np.float32).copy()
    if qt.name == "F16":
        return _from_f16_kernel(data.view(np.uint16))
    return (data.view(np.uint16).astype(np.uint32) << np.uint32(16)).view(np.float32)
