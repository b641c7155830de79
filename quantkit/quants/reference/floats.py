"""Plain references of F32, F16 and BF16 (llama.cpp's row conversions; no imatrix)."""

import numpy as np


def quantize_f32(rows, imatrix=None):
    return np.ascontiguousarray(rows, dtype=np.float32).view(np.uint8)


def quantize_f16(rows, imatrix=None):
    """IEEE binary16, round to nearest even (``ggml_fp32_to_fp16_row``)."""
    return np.ascontiguousarray(rows, dtype=np.float32).astype(np.float16).view(np.uint8)


def quantize_bf16(rows, imatrix=None):
    """The top 16 bits, rounded to nearest even (``ggml_fp32_to_bf16``: u + 0x7fff + (u >> 16 & 1), >> 16)."""
    u = np.ascontiguousarray(rows, dtype=np.float32).view(np.uint32).astype(np.uint64)
    return ((u + 0x7FFF + ((u >> 16) & 1)) >> 16).astype(np.uint16).view(np.uint8)
