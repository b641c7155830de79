"""F32, F16, BF16: one value per element, stored little endian.

F16 is IEEE binary16 rounded to nearest even (numpy's conversion, identical to
``ggml_fp32_to_fp16_row``). BF16 is the top 16 bits of the float32 rounded to nearest even
(``ggml_fp32_to_bf16_row_ref``: NaN is refused before quantizing, so only the rounding rule matters).
These are memory-bound conversions: numpy does them at memory speed, no kernel needed.
"""

import numpy as np


def _to_bf16_bits(rows):
    bits = rows.view(np.uint32)
    rounded = bits + (np.uint32(0x7FFF) + ((bits >> np.uint32(16)) & np.uint32(1)))
    return (rounded >> np.uint32(16)).astype(np.uint16)


def quantize_rows(qt, rows, imatrix):
    if qt.name == "F32":
        values = rows
    elif qt.name == "F16":
        values = rows.astype(np.float16)
    else:
        values = _to_bf16_bits(rows)
    return np.ascontiguousarray(values).view(np.uint8)


def dequantize_rows(qt, data, n_per_row):
    if qt.name == "F32":
        return data.view(np.float32).copy()
    if qt.name == "F16":
        return data.view(np.float16).astype(np.float32)
    return (data.view(np.uint16).astype(np.uint32) << np.uint32(16)).view(np.float32)
