"""FP8 checkpoints: float8 weights times their scales, dequantized as llama.cpp's converter does.

Two ways of saying so in ``config.json``'s ``quantization_config``, both read by llama.cpp's converter:

- ``quant_method: "fp8"`` (DeepSeek-V3, the Qwen3 FP8 releases): each linear weight ``W`` is float8
  (e4m3) next to a float32 or bfloat16 ``W_scale_inv``. With ``weight_block_size: [R, C]`` the
  scale has one value per R x C block (``ceil(rows/R) x ceil(cols/C)``); without it one value per
  tensor (shape ``()`` or ``(1,)``) or per row.
- ``quant_method: "compressed-tensors"`` with ``format: "float-quantized"`` and 8-bit float weights
  (llm-compressor's FP8 models): the scale is ``W_scale``, per row (``strategy: "channel"``, shape
  ``(rows, 1)``) or per ``block_structure`` block (``strategy: "block"``).

The real weight is ``float32(W) * float32(scale)``: one float32 product per element, llama.cpp's
``dequant_simple`` (conversion/base.py), so the converted bytes equal its output.

:func:`fp8_scales` finds the scale of every float8 weight and the tensors to drop with them (the
scales, unused activation scales); :func:`dequantize_rows` turns rows ``start:stop`` of a weight into
float32 expanding only the scale rows they need. Float8 bytes are read straight from the safetensors
file (numpy has no float8 type; ml_dtypes provides it).
"""

from __future__ import annotations

import functools
import json
import math
import struct
from dataclasses import dataclass
from pathlib import Path

import ml_dtypes
import numpy as np

from ..errors import FP8Error

FP8_DTYPES = ("F8_E4M3", "F8_E5M2")  # safetensors names
SCALE_DTYPES = ("F32", "BF16", "F16")
UNUSED_SUFFIXES = (".activation_scale", "_activation_scale", ".input_scale")  # activation scales: dropped


@dataclass(frozen=True)
class FP8Scale:
    """How to dequantize one float8 weight: its scale tensor and block size (None: per tensor or row)."""

    scale: object  # quantkit.sources.hf.SourceTensor
    block: tuple | None


def _scale_layout(quant: dict, config_path: Path) -> tuple[str, list | None]:
    """(scale name suffix, block size or None) of a quantization_config llama.cpp reads as FP8."""
    method = quant.get("quant_method")
    if method == "fp8":
        return "_scale_inv", quant.get("weight_block_size")
    if method == "compressed-tensors":
        groups = list((quant.get("config_groups") or {}).values())
        weights = (groups[0].get("weights") or {}) if len(groups) == 1 and isinstance(groups[0], dict) else {}
        if (quant.get("format") == "float-quantized" and weights.get("type") == "float" and weights.get("num_bits") == 8
                and weights.get("strategy") in ("channel", "block")):
            return "_scale", weights.get("block_structure")
        raise FP8Error(f"{config_path}: compressed-tensors format {quant.get('format')!r} not supported "
                       "(only FP8 float-quantized, 1 group, channel or block)")
    raise FP8Error(f"{config_path}: quantization_config quant_method {method!r} is not supported "
                   "(quantkit reads unquantized and FP8 checkpoints)")


def fp8_scales(config: dict, tensors: dict, config_path: Path) -> tuple[dict, list[str]]:
    """(weight name -> FP8Scale, names of tensors to drop) for ``config``'s quantization.

    Empty for an unquantized checkpoint; a one-line :class:`FP8Error` for another quantization
    or a scale that does not fit its weight.
    """
    quant = config.get("quantization_config")
    if not isinstance(quant, dict) or quant.get("quant_method") is None:
        return {}, []
    suffix, block = _scale_layout(quant, config_path)
    if block is not None and (not isinstance(block, list) or not all(isinstance(b, int) and b > 0 for b in block)):
        raise FP8Error(f"{config_path}: quantization_config block size {block!r} is not a list of positive ints")
    scales, dropped = {}, []
    for name, info in tensors.items():
        if name.endswith(UNUSED_SUFFIXES):
            dropped.append(name)
        if not name.endswith(".weight" + suffix):
            continue
        weight_name = name[: -len(suffix)]
        weight = tensors.get(weight_name)
        if weight is None:
            raise FP8Error(f"{info.path}: scale {name!r} has no weight {weight_name!r}")
        _check_scale(weight, info, block)
        scales[weight_name] = FP8Scale(info, None if block is None else tuple(block))
        dropped.append(name)
    return scales, dropped


def _check_scale(weight, scale, block) -> None:
    if weight.dtype not in FP8_DTYPES:
        raise FP8Error(f"{weight.path.name}: tensor {weight.name!r} has a scale ({scale.name!r}) but dtype {weight.dtype}, not float8")
    if scale.dtype not in SCALE_DTYPES:
        raise FP8Error(f"{scale.path.name}: scale {scale.name!r} has dtype {scale.dtype}; expected F32, BF16 or F16")
    if block is None:
        fits = len(scale.shape) == 0 or scale.shape in ((1,), weight.shape[:1], (weight.shape[0], 1))
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
        if scale.ndim >= 1 and scale.shape[0] > 1:  # one per row: (rows,) or (rows, 1)
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
