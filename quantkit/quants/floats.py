"""F32, F16, BF16: one value per element, stored little endian.

F16 is IEEE binary16 rounded to nearest even (``ggml_fp32_to_fp16_row``). BF16 is the top 16 bits
of the float32 rounded to nearest even (``ggml_fp32_to_bf16_row_ref``; NaN is refused before
quantizing, so its special case never applies).
"""

import numba
import numpy as np

from .checks import nonfinite_rows
from .numeric import FP16_TO_FP32, bits_f32, fp32_to_fp16_bits


@numba.njit(inline="always", cache=True)
def _is_special(b):
    """1 where a float32 bit pattern is NaN or Inf (all exponent bits set), else 0."""
    return np.uint32((b & np.uint32(0x7F800000)) == np.uint32(0x7F800000))


@numba.njit(inline="always", cache=True)
def _bf16_bits(b):
    """ggml_fp32_to_bf16: the top 16 bits, rounded to nearest even."""
    return np.uint16((b + (np.uint32(0x7FFF) + ((b >> np.uint32(16)) & np.uint32(1)))) >> np.uint32(16))


def _convert_kernel(name):
    """F16 / BF16 conversion of float32 bit patterns into ``out`` in one pass that also finds
    NaN/Inf (returns per row whether one was met): the format a compile-time constant.

    ``out`` comes from numpy, which maps large arrays with huge pages: an array Numba allocates
    takes a page fault per 4 KiB on first write, two thirds of the time of these memory-bound
    conversions on a 64 MB tensor."""
    to_f16 = name == "F16"

    @numba.njit(parallel=True, cache=True)
    def kernel(bits, out):
        nrows, n = bits.shape
        nonfinite = np.zeros(nrows, dtype=np.bool_)
        for r in numba.prange(nrows):
            special = np.uint32(0)
            for j in range(n):  # an integer or-reduction beside the conversion: vectorizes
                b = bits[r, j]
                special |= _is_special(b)
                if to_f16:
                    out[r, j] = fp32_to_fp16_bits(bits_f32(b))
                else:
                    out[r, j] = _bf16_bits(b)
            nonfinite[r] = special != 0
        return nonfinite

    return kernel


_CONVERT = {name: _convert_kernel(name) for name in ("F16", "BF16")}


def _widen_kernel(name):
    """F16 / BF16 bits (uint16 rows) -> float32 into ``out`` (numpy's, see _convert_kernel), exact: BF16
    is the top half of a float32, F16 goes through the table. One parallel pass; the requantize of a
    BF16 model spends as long here as in its Q8_0 kernel when numpy widens in two passes."""
    bf16 = name == "BF16"

    @numba.njit(parallel=True, cache=True)
    def kernel(halves, out):
        nrows, n = halves.shape
        for r in numba.prange(nrows):
            for j in range(n):
                if bf16:
                    out[r, j] = bits_f32(np.uint32(halves[r, j]) << np.uint32(16))
                else:
                    out[r, j] = FP16_TO_FP32[halves[r, j]]

    return kernel


_WIDEN = {name: _widen_kernel(name) for name in ("F16", "BF16")}


# the quantize functions find NaN/Inf in their conversion pass and return (data, per-row non-finite flags)
CHECKS_FINITE = True


def _convert(name, rows):
    values = np.empty(rows.shape, dtype=np.uint16)
    nonfinite = _CONVERT[name](rows.view(np.uint32), values)
    return values.view(np.uint8), nonfinite


def quantize_f32(rows, imatrix):
    """The rows' own bytes, as a read-only view (no copy: F32 storage is the float32 values)."""
    data = rows.view(np.uint8)
    data.flags.writeable = False
    return data, nonfinite_rows(rows)


def quantize_f16(rows, imatrix):
    return _convert("F16", rows)


def quantize_bf16(rows, imatrix):
    return _convert("BF16", rows)


def dequantize_f32(data, n_per_row):
    return data.view(np.float32).copy()


def widen(halves, name):
    """float32 values of 2-D F16 or BF16 rows given as their uint16 bits (``name``: "F16" or "BF16")."""
    out = np.empty(halves.shape, dtype=np.float32)
    _WIDEN[name](halves, out)
    return out


def dequantize_f16(data, n_per_row):
    return widen(data.view(np.uint16), "F16")


def dequantize_bf16(data, n_per_row):
    return widen(data.view(np.uint16), "BF16")
