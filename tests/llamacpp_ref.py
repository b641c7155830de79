"""llama.cpp's reference quantizer, called through ctypes from the xllamacpp wheel's library.

Used by the tests (the bytes quantkit must equal) and by benchmarks/ (the speed to beat).
``ggml_quantize_chunk`` is single-threaded; ``ggml_type`` values equal gguf.GGMLQuantizationType.
"""

from __future__ import annotations

import ctypes
import functools
import os

import numpy as np
from gguf import GGMLQuantizationType

from quantkit.types import known_type

_F32P = ctypes.POINTER(ctypes.c_float)


@functools.cache
def lib() -> ctypes.CDLL:
    import xllamacpp

    path = os.path.join(os.path.dirname(xllamacpp.__file__), "xllamacpp.abi3.so")
    so = ctypes.CDLL(path)
    so.ggml_quantize_chunk.restype = ctypes.c_size_t
    so.ggml_quantize_chunk.argtypes = [
        ctypes.c_int, _F32P, ctypes.c_void_p, ctypes.c_int64, ctypes.c_int64, ctypes.c_int64, _F32P,
    ]
    so.ggml_quantize_init.argtypes = [ctypes.c_int]
    so.ggml_quantize_requires_imatrix.argtypes = [ctypes.c_int]
    so.ggml_quantize_requires_imatrix.restype = ctypes.c_bool
    return so


def _qtype(qtype):
    """The ggml type (gguf's enum, or quantkit's for the types gguf lacks, e.g. Q2_0)."""
    return known_type(qtype).ggml


def requires_imatrix(qtype) -> bool:
    return bool(lib().ggml_quantize_requires_imatrix(int(_qtype(qtype))))


def quantize(x: np.ndarray, qtype, imatrix: np.ndarray | None = None) -> np.ndarray:
    """``ggml_quantize_chunk`` of float32 rows (last axis); returns the bytes as uint8."""
    t = _qtype(qtype)
    rows = np.ascontiguousarray(x, dtype=np.float32).reshape(-1, x.shape[-1])
    nrows, n_per_row = rows.shape
    block, size = known_type(t).block_size, known_type(t).type_size
    out = np.zeros(nrows * (n_per_row // block) * size, dtype=np.uint8)
    weights = None
    if imatrix is not None:
        weights = np.ascontiguousarray(imatrix, dtype=np.float32)
        weights_p = weights.ctypes.data_as(_F32P)
    lib().ggml_quantize_init(int(t))
    written = lib().ggml_quantize_chunk(
        int(t), rows.ctypes.data_as(_F32P), out.ctypes.data_as(ctypes.c_void_p), 0, nrows, n_per_row,
        weights_p if weights is not None else None,
    )
    assert written == out.size, (written, out.size)
    return out


def dequantize(data: np.ndarray, qtype, n: int) -> np.ndarray:
    """llama.cpp's ``dequantize_row_<type>`` (or its f16/bf16 row conversion) of ``n`` values."""
    t = _qtype(qtype)
    out = np.empty(n, dtype=np.float32)
    src = np.ascontiguousarray(data).view(np.uint8)
    if t == GGMLQuantizationType.F32:
        return src.view(np.float32).copy()
    fn_name = {"F16": "ggml_fp16_to_fp32_row", "BF16": "ggml_bf16_to_fp32_row"}.get(
        t.name, f"dequantize_row_{t.name.lower().replace('_k', '_K')}"
    )
    fn = getattr(lib(), fn_name)
    fn.argtypes = [ctypes.c_void_p, _F32P, ctypes.c_int64]
    fn.restype = None
    fn(src.ctypes.data_as(ctypes.c_void_p), out.ctypes.data_as(_F32P), n)
    return out
