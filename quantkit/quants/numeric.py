"""Scalar helpers for Numba kernels that reproduce ggml's float conversions bit for bit.

- ``fp32_to_fp16_bits``: IEEE round-to-nearest-even float32 -> binary16 bits, subnormals included
  (what ``GGML_FP32_TO_FP16`` does on every build); takes a float32.
- ``FP16_TO_FP32``: a 65536-entry table, binary16 bits -> float32 (exact).
- ``nearest_int``: ggml's ``nearest_int`` (add 1.5*2^23, read the mantissa), i.e. round half to
  even, valid for ``|x| <= 4194303``.
- ``roundf``: C ``roundf`` (half away from zero), which numpy does not offer.
- ``f32_bits`` / ``bits_f32``: reinterpret a float32 as uint32 and back.

All arithmetic stays in float32: callers must pass float32 values (a bare Python literal in a
Numba kernel is float64 and would change the rounding).
"""

import numpy as np
from llvmlite import ir
from numba import njit, types
from numba.core.extending import intrinsic

FP16_TO_FP32 = np.arange(65536, dtype=np.uint32).astype(np.uint16).view(np.float16).astype(np.float32)


@intrinsic
def f32_bits(typingctx, value):
    """The uint32 bit pattern of a float32."""
    if value != types.float32:
        return None

    def codegen(context, builder, signature, args):
        return builder.bitcast(args[0], ir.IntType(32))

    return types.uint32(types.float32), codegen


@intrinsic
def bits_f32(typingctx, value):
    """The float32 whose bit pattern is the low 32 bits of an integer."""
    if not isinstance(value, types.Integer):
        return None

    def codegen(context, builder, signature, args):
        low32 = args[0] if value.bitwidth == 32 else builder.trunc(args[0], ir.IntType(32))
        return builder.bitcast(low32, ir.FloatType())

    return types.float32(value), codegen


@intrinsic
def fp32_to_fp16_bits(typingctx, value):
    """float32 -> binary16 bits, round to nearest even, subnormals included (GGML_FP32_TO_FP16).

    LLVM's fptrunc to half: IEEE conversion, which x86's F16C (vcvtps2ph) does in hardware and
    vectorizes.
    """
    if not isinstance(value, types.Float):
        return None

    def codegen(context, builder, signature, args):
        single = args[0] if value == types.float32 else builder.fptrunc(args[0], ir.FloatType())
        half = builder.fptrunc(single, ir.HalfType())
        return builder.bitcast(half, ir.IntType(16))

    return types.uint16(value), codegen


@njit(inline="always", cache=True)
def nearest_int(value):
    """ggml's nearest_int: add 1.5*2^23 and read the mantissa, i.e. round half to even (|value| <= 4194303)."""
    shifted = f32_bits(np.float32(value) + np.float32(12582912.0))
    return np.int32(shifted & np.uint32(0x007FFFFF)) - np.int32(0x00400000)


@njit(inline="always", cache=True)
def roundf(value):
    """C roundf: round half away from zero, in float32."""
    t = np.float32(np.trunc(value))
    if np.abs(value - t) >= np.float32(0.5):
        t += np.float32(1.0) if value > np.float32(0.0) else np.float32(-1.0)
    return t


@njit(inline="always", cache=True)
def put_fp16(out, pos, value):
    """Store ``value`` as little-endian fp16 at out[pos:pos+2]; returns the value as stored
    (llama.cpp's later steps often re-read the rounded scale)."""
    h = fp32_to_fp16_bits(np.float32(value))
    out[pos] = np.uint8(h & 0xFF)
    out[pos + 1] = np.uint8(h >> 8)
    return FP16_TO_FP32[np.int64(h)]


@njit(inline="always", cache=True)
def get_fp16(data, pos):
    """The float32 value of the little-endian fp16 at data[pos:pos+2]."""
    return FP16_TO_FP32[np.int64(data[pos]) | (np.int64(data[pos + 1]) << 8)]
