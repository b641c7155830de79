"""FP8 checkpoints (``quantization_config.quant_method: "fp8"``): float8 weights times their scales.

DeepSeek-V3 and the Qwen3 FP8 releases store each linear weight ``W`` as float8 (e4m3) next to a
float32 or bfloat16 ``W_scale_inv`` tensor. With ``weight_block_size: [R, C]`` the scale has one
value per R x C block (``ceil(rows/R) x ceil(cols/C)``); without it the scale is one value per
tensor (shape ``()`` or ``(1,)``) or one per row. The real weight is ``float32(W) * float32(scale)``
- one float32 product per element, the dequantization of llama.cpp's converter (``dequant_simple``
in conversion/base.py), so the converted bytes equal its output.

:func:`fp8_scales` finds the scale of every FP8 weight and the tensors llama.cpp's converter drops
with them (``*_scale_inv``, activation scales); :func:`dequantize_rows` turns rows ``start:stop``
of a weight into float32 reading only the scale rows they need. Float8 bytes are read straight
from the safetensors file (numpy has no float8 type; ml_dtypes provides it).
"""

from __future__ import annotations

import functools
import json
import math
import struct
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .errors import FP8Error

FP8_DTYPES = ("F8_E4M3", "F8_E5M2")  # safetensors names
SCALE_DTYPES = ("F32", "BF16", "F16")
SCALE_SUFFIX = "_scale_inv"
UNUSED_SUFFIXES = (".activation_scale", "_activation_scale", ".input_scale")  # dropped, as llama.cpp does


@dataclass(frozen=True)
class FP8Scale:
    """How to dequantize one float8 weight: its scale tensor and block size (None: per tensor or row)."""

    scale: object  # quantkit.source.SourceTensor
    block: tuple | None


def fp8_scales(config: dict, tensors: dict, config_path: Path) -> tuple[dict, list[str]]:
    """(weight name -> FP8Scale, names of scale tensors to drop) for ``config``'s quantization.

    Empty for an unquantized checkpoint; a one-line :class:`FP8Error` for a quantization method
    other than ``fp8`` or a scale that does not fit its weight.
    """
    quant = config.get("quantization_config")
    if not isinstance(quant, dict) or quant.get("quant_method") is None:
        return {}, []
    method = quant.get("quant_method")
    if method != "fp8":
        raise FP8Error(f"{config_path}: quantization_config quant_method {method!r} is not supported "
                       "(quantkit reads unquantized and block-scaled 'fp8' checkpoints)")
    block = quant.get("weight_block_size")
    if block is not None and (not isinstance(block, list) or not all(isinstance(b, int) and b > 0 for b in block)):
        raise FP8Error(f"{config_path}: quantization_config weight_block_size {block!r} is not a list of positive ints")
    scales, dropped = {}, []
    for name, info in tensors.items():
        if name.endswith(UNUSED_SUFFIXES):
            dropped.append(name)
        if not name.endswith(SCALE_SUFFIX):
            continue
        weight_name = name[: -len(SCALE_SUFFIX)]
        weight = tensors.get(weight_name)
        if weight is None:
            raise FP8Error(f"{info.path}: scale {name!r} has no weight {weight_name!r}")
        _check_scale(weight, info, block)
        scales[weight_name] = FP8Scale(info, None if block is None else tuple(block))
        dropped.append(name)
    return scales, dropped


def _check_scale(weight, scale, block) -> None:
    if weight.dtype not in FP8_DTYPES:
        raise FP8Error(f"{weight.path.name}: tensor {weight.name!r} has a {SCALE_SUFFIX} scale but dtype {weight.dtype}, not float8")
    if scale.dtype not in SCALE_DTYPES:
        raise FP8Error(f"{scale.path.name}: scale {scale.name!r} has dtype {scale.dtype}; expected F32, BF16 or F16")
    if block is None:
        fits = len(scale.shape) == 0 or scale.shape in ((1,), weight.shape[:1])
        expected = "one value or one per row"
    else:
        fits = len(scale.shape) == len(weight.shape) >= len(block)
        lead = len(weight.shape) - len(block)
        want = weight.shape[:lead] + tuple(math.ceil(n / b) for n, b in zip(weight.shape[lead:], block))
        fits = fits and scale.shape == want
        expected = f"shape {want} for blocks of {tuple(block)}"
    if not fits:
        raise FP8Error(f"{scale.path.name}: scale {scale.name!r} has shape {scale.shape}; weight {weight.shape} needs {expected}")


@functools.lru_cache(maxsize=64)
def _data_start(path: Path) -> tuple[int, dict]:
    """(byte offset of the data section, header) of a safetensors file."""
    with open(path, "rb") as f:
        (size,) = struct.unpack("<Q", f.read(8))
        header = json.loads(f.read(size))
    return 8 + size, header


def read_raw_rows(info, start: int, stop: int) -> np.ndarray:
    """Rows ``start:stop`` of a float8 tensor as its ml_dtypes float8 type (read from the file, no mmap)."""
    import ml_dtypes

    dtype = {"F8_E4M3": ml_dtypes.float8_e4m3fn, "F8_E5M2": ml_dtypes.float8_e5m2}[info.dtype]
    data_start, header = _data_start(info.path)
    row_bytes = int(np.prod(info.shape[1:], dtype=np.int64))
    with open(info.path, "rb") as f:
        f.seek(data_start + header[info.name]["data_offsets"][0] + start * row_bytes)
        raw = f.read((stop - start) * row_bytes)
    return np.frombuffer(raw, dtype=dtype).reshape((stop - start, *info.shape[1:]))


def dequantize_rows(weight: np.ndarray, scale: np.ndarray, block: tuple | None, start: int) -> np.ndarray:
    """float32 ``weight * scale`` of weight rows ``start:start+len(weight)`` (llama.cpp's dequant_simple).

    ``scale`` is the whole float32 scale tensor. With ``block``, each of the last ``len(block)``
    axes of the weight takes the scale of its block (``index // block``); otherwise a per-tensor or
    per-row scale broadcasts over the rest of the row.
    """
    if block is None:
        if scale.ndim == 1 and scale.shape[0] > 1:  # one per row
            scale = scale[start:start + weight.shape[0]]
        scale = scale.reshape(scale.shape + (1,) * (weight.ndim - scale.ndim))
        return weight.astype(np.float32) * scale
    lead = weight.ndim - len(block)
    index = []
    for axis, n in enumerate(weight.shape):
        offset = start if axis == 0 else 0
        positions = np.arange(offset, offset + n)
        index.append(positions // block[axis - lead] if axis >= lead else positions)
    return weight.astype(np.float32) * scale[np.ix_(*index)]
