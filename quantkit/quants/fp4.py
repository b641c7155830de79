"""MXFP4 and NVFP4: E2M1 (4-bit float) values with a power-of-two or an FP8 scale per small group.

Both store each value as the index of the nearest entry of ggml's ``kvalues_fp4`` (E2M1 values
doubled: 0, 1, 2, 3, 4, 6, 8, 12 and their negatives at indices 8-15), first index on ties, two
per byte: value ``j`` of a group in the low nibble of byte ``j``, value ``j + half`` in the high
nibble. llama.cpp's quantizers ignore an importance matrix, and so does this module.

- MXFP4, 32 values in 17 bytes: ``e`` (E8M0 exponent) | ``qs[16]``. ``e = floor(log2f(amax)) - 2 +
  127`` (0 for an all-zero block) and the values are ``kvalues[q] * 2^(e - 128)`` (the halved E8M0
  scale, since the table is doubled).
- NVFP4, 64 values in 36 bytes: ``d[4]`` (UE4M3, one per 16 values) | ``qs[32]`` (16 bytes per
  16 values, halves 8 apart). ``d = ue4m3(amax / 6)`` rounds the mantissa to 3 bits by its next
  bit and saturates at 448; the values are ``kvalues[q] * ue4m3_value(d) / 2``.

The nearest entry: C tries all 16 entries with ``err = |kvalues[i] * d - x|``. The products are
exact, and the error of ``-k*d`` for ``x < 0`` is that of ``k*d`` for ``|x|`` (rounding is
symmetric), while an entry of the other sign never beats index 0 strictly; so the kernels search
the 8 non-negative entries for ``|x|`` (a loop over the values that vectorizes) and add 8 for a
negative ``x`` whose best entry is not 0. ``quants/reference/fp4.py`` is C's loop as written.
"""

from __future__ import annotations

import numba
import numpy as np

from .numeric import bits_f32, f32_bits

KVALUES = np.array([0, 1, 2, 3, 4, 6, 8, 12, 0, -1, -2, -3, -4, -6, -8, -12], dtype=np.int8)
_POSITIVE = KVALUES[:8].astype(np.float32)
# type name -> (values per scale group, groups per block, scale bytes per block)
GEOMETRY = {"MXFP4": (32, 1, 1), "NVFP4": (16, 4, 4)}


@numba.njit(inline="always", cache=True)
def e8m0_half(e):
    """ggml_e8m0_to_fp32_half: 2^(e - 128) as float32 (subnormal for e < 2)."""
    if e < 2:
        return bits_f32(np.uint32(0x00200000) << np.uint32(e))
    return bits_f32(np.uint32(e - 1) << np.uint32(23))


@numba.njit(inline="always", cache=True)
def mxfp4_exponent(amax):
    """C's ``(uint8_t)(floorf(log2f(amax)) - 2 + 127)``, 0 for amax 0. log2f is libm's (Numba calls the
    same one); a negative result (amax < 2^-125) wraps as x86's float -> int conversion does."""
    if amax > np.float32(0.0):
        return np.int32(np.floor(np.log2(amax)) - np.float32(2.0) + np.float32(127.0)) & 0xFF
    return np.int32(0)


@numba.njit(inline="always", cache=True)
def ue4m3_from_f32(x):
    """ggml_fp32_to_ue4m3: unsigned E4M3 (bias 7), mantissa rounded by its next bit, saturating at 0x7E."""
    if not x > np.float32(0.0):
        return np.int32(0)
    if x > np.float32(448.0):
        x = np.float32(448.0)
    bits = np.int64(f32_bits(np.float32(x)))
    exp = ((bits >> 23) & 0xFF) - 127 + 7
    man = (bits >> 20) & 0x7
    if exp <= 0:
        sub = np.int32(x * np.float32(512.0) + np.float32(0.5))
        return np.int32(min(sub, 7)) if sub >= 1 else np.int32(0)
    if exp >= 15:
        return np.int32(0x7E)
    man += (bits >> 19) & 1
    if man > 7:
        man = 0
        exp += 1
        if exp >= 15:
            return np.int32(0x7E)
    return np.int32((exp << 3) | man)


@numba.njit(inline="always", cache=True)
def ue4m3_half(u):
    """ggml_ue4m3_to_fp32: the UE4M3 value times 0.5 (0 for codes 0 and 0x7F), exact."""
    if u == 0 or u == 0x7F:
        return np.float32(0.0)
    exp = (u >> 3) & 0xF
    man = u & 0x7
    if exp == 0:
        return np.float32(man) * bits_f32(np.uint32(127 - 10) << np.uint32(23))  # man * 2^-9 / 2
    return bits_f32((np.uint32(exp - 7 - 1 + 127) << np.uint32(23)) | (np.uint32(man) << np.uint32(20)))


@numba.njit(inline="always", cache=True)
def _scale_code(fmt, amax):
    """(stored scale byte, float32 step d) for a group whose largest magnitude is ``amax``."""
    if fmt == 0:
        e = mxfp4_exponent(amax)
        return e, e8m0_half(e)
    u = ue4m3_from_f32(amax / np.float32(6.0))
    return u, ue4m3_half(u)


@numba.njit(inline="always", cache=True)
def _put_group(x, base, n, d, positive, mag, best_err, best_idx, out, pos):
    """Nearest-entry indices of x[base:base+n] for step d, packed (j | j + n/2 << 4) into out[pos:pos+n/2]."""
    for j in range(n):
        mag[j] = np.abs(x[base + j])
        best_err[j] = mag[j]  # entry 0: |0*d - |x||
        best_idx[j] = 0
    for i in range(1, 8):
        v = positive[i] * d
        for j in range(n):  # branch-free: vectorizes
            err = np.abs(v - mag[j])
            better = err < best_err[j]
            best_err[j] = err if better else best_err[j]
            best_idx[j] = i if better else best_idx[j]
    half = n // 2
    for j in range(half):
        lo = best_idx[j] + (8 if (x[base + j] < np.float32(0.0) and best_idx[j] != 0) else 0)
        hi = best_idx[j + half] + (8 if (x[base + j + half] < np.float32(0.0) and best_idx[j + half] != 0) else 0)
        out[pos + j] = np.uint8(lo | (hi << 4))


def _quantize_kernel(name):
    """The MXFP4 or NVFP4 kernel, its block geometry and scale format compile-time constants (but the
    group length a runtime argument: as a constant, LLVM unrolls NVFP4's 16-value loops fully and no
    longer vectorizes them, 4x slower)."""
    fmt = 0 if name == "MXFP4" else 1
    group, groups_per_block, scale_bytes = GEOMETRY[name]
    block = group * groups_per_block
    block_bytes = scale_bytes + block // 2

    @numba.njit(parallel=True, cache=True)
    def kernel(rows, positive, group_len):
        nrows, n = rows.shape
        nblocks = n // block
        bits = rows.view(np.uint32)
        out = np.empty((nrows, nblocks * block_bytes), dtype=np.uint8)
        for r in numba.prange(nrows):
            x = rows[r]
            xb = bits[r]
            o = out[r]
            mag = np.empty(group_len, dtype=np.float32)
            best_err = np.empty(group_len, dtype=np.float32)
            best_idx = np.empty(group_len, dtype=np.int32)
            for b in range(nblocks):
                pos = b * block_bytes
                for s in range(groups_per_block):
                    base = b * block + s * group_len
                    amax_bits = np.uint32(0)
                    for j in range(group_len):  # an integer max over |x| bit patterns (finite input): vectorizes
                        amax_bits = max(amax_bits, xb[base + j] & np.uint32(0x7FFFFFFF))
                    code, d = _scale_code(fmt, bits_f32(amax_bits))
                    o[pos + s] = np.uint8(code)
                    _put_group(x, base, group_len, d, positive, mag, best_err, best_idx, o,
                               pos + scale_bytes + s * (group_len // 2))
        return out

    return kernel


_QUANTIZE = {name: _quantize_kernel(name) for name in GEOMETRY}


@numba.njit(parallel=True, cache=True)
def _dequantize_kernel(data, n, fmt, group, groups_per_block, scale_bytes, kvalues):
    nrows = data.shape[0]
    block = group * groups_per_block
    block_bytes = scale_bytes + block // 2
    nblocks = n // block
    half = group // 2
    out = np.empty((nrows, n), dtype=np.float32)
    for r in numba.prange(nrows):
        src = data[r]
        y = out[r]
        for b in range(nblocks):
            pos = b * block_bytes
            for s in range(groups_per_block):
                d = e8m0_half(np.int32(src[pos + s])) if fmt == 0 else ue4m3_half(np.int32(src[pos + s]))
                qs = pos + scale_bytes + s * half
                base = b * block + s * group
                for j in range(half):
                    y[base + j] = np.float32(kvalues[src[qs + j] & 0x0F]) * d
                    y[base + j + half] = np.float32(kvalues[src[qs + j] >> 4]) * d
    return out


def _dequantize(name: str, data: np.ndarray, n_per_row: int) -> np.ndarray:
    group, groups_per_block, scale_bytes = GEOMETRY[name]
    return _dequantize_kernel(data, int(n_per_row), 0 if name == "MXFP4" else 1, group, groups_per_block,
                              scale_bytes, KVALUES)


def quantize_mxfp4(rows: np.ndarray, imatrix: np.ndarray | None) -> np.ndarray:
    """MXFP4 bytes of float32 rows; ``imatrix`` is ignored, as by llama.cpp."""
    return _QUANTIZE["MXFP4"](rows, _POSITIVE, GEOMETRY["MXFP4"][0])


def quantize_nvfp4(rows: np.ndarray, imatrix: np.ndarray | None) -> np.ndarray:
    """NVFP4 bytes of float32 rows; ``imatrix`` is ignored, as by llama.cpp."""
    return _QUANTIZE["NVFP4"](rows, _POSITIVE, GEOMETRY["NVFP4"][0])


def dequantize_mxfp4(data: np.ndarray, n_per_row: int) -> np.ndarray:
    return _dequantize("MXFP4", data, n_per_row)


def dequantize_nvfp4(data: np.ndarray, n_per_row: int) -> np.ndarray:
    return _dequantize("NVFP4", data, n_per_row)
