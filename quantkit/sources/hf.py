"""A Hugging Face model folder, read lazily: config.json and safetensors weights (single or sharded).

``HFSource(folder)`` reads ``config.json`` and the safetensors headers only. Tensor data is read on
demand, whole or as a range of rows (``read(name, start, stop)``), as float32 numpy arrays. Each read
opens the shard with safetensors' ``safe_open`` and closes it again, so the mmap of a multi-GB shard
never stays resident: memory is the rows asked for. Weights must be float32, float16 or bfloat16,
or float8 with a scale in an FP8 checkpoint (:mod:`quantkit.sources.fp8`: dequantized as they are read;
the scale tensors are not listed in ``tensors``).
(The tokenizer files are read by :mod:`quantkit.sources.vocab`.)

Sharded checkpoints are ``model.safetensors.index.json`` (its ``weight_map``: tensor -> shard file)
next to the shards; single ones are ``model.safetensors``. Pickle checkpoints
(``pytorch_model.bin``) are refused: loading them runs arbitrary code.
"""

from __future__ import annotations

import json
import os
import struct
import sys
from dataclasses import dataclass
from pathlib import Path

import ml_dtypes  # noqa: F401  (gives numpy the bfloat16 dtype safetensors' numpy reader needs)
import numpy as np
from safetensors import safe_open

from ..errors import QuantkitError, ShapeError, first_line
from .fp8 import FP8_DTYPES, dequantize_rows, fp8_scales, read_raw_rows

DTYPE_BYTES = {"F64": 8, "F32": 4, "F16": 2, "BF16": 2, "I64": 8, "I32": 4, "I16": 2, "I8": 1, "U64": 8, "U32": 4,
               "U16": 2, "U8": 1, "BOOL": 1, "F8_E4M3": 1, "F8_E5M2": 1}  # safetensors dtype name -> bytes per element
MAX_HEADER_BYTES = 100_000_000  # the safetensors library's limit on the header's length
WEIGHT_DTYPES = ("F32", "F16", "BF16")  # what a converted tensor may be stored as
INDEX_FILE = "model.safetensors.index.json"
SINGLE_FILE = "model.safetensors"


class SourceError(QuantkitError):
    """A Hugging Face folder that is incomplete or inconsistent."""


@dataclass(frozen=True)
class SourceTensor:
    """Where a checkpoint tensor lives: its shard, safetensors dtype name and numpy shape."""

    name: str
    path: Path
    dtype: str
    shape: tuple

    @property
    def nbytes(self) -> int:
        return int(np.prod(self.shape, dtype=np.int64)) * DTYPE_BYTES[self.dtype]


def read_json(path: Path, kind: type = dict):
    """The JSON value in ``path``, which must be UTF-8 and a ``kind`` (object or list); one line otherwise."""
    try:
        text = Path(path).read_bytes().decode("utf-8")
    except UnicodeDecodeError as e:
        raise SourceError(f"{path}: not UTF-8 text (byte {e.start})") from None
    try:
        value = json.loads(text)
    except json.JSONDecodeError as e:
        raise SourceError(f"{path}: not valid JSON ({e.msg} at line {e.lineno})") from None
    except RecursionError:
        raise SourceError(f"{path}: not valid JSON (nested too deeply)") from None
    if not isinstance(value, kind):
        raise SourceError(f"{path}: expected a JSON {'object' if kind is dict else 'list'}")
    return value


def _entry(path: Path, name: str, entry) -> tuple[str, tuple, int, int]:
    """(dtype, shape, start, stop) of one safetensors header entry, checked for types and size."""
    where = f"{path}: tensor {name[:60]!r}"
    if not isinstance(entry, dict):
        raise SourceError(f"{where}: header entry is not a JSON object")
    dtype, shape, offsets = entry.get("dtype"), entry.get("shape"), entry.get("data_offsets")
    if not isinstance(dtype, str) or dtype not in DTYPE_BYTES:
        raise SourceError(f"{where} has unknown dtype {str(dtype)[:20]!r}")
    if not isinstance(shape, list) or not all(type(d) is int and d >= 0 for d in shape):
        raise SourceError(f"{where}: shape is not a list of non-negative integers")
    if not isinstance(offsets, list) or len(offsets) != 2 or not all(type(o) is int for o in offsets):
        raise SourceError(f"{where}: data_offsets is not a pair of integers")
    start, stop = offsets
    if not 0 <= start <= stop:
        raise SourceError(f"{where}: data_offsets [{start}, {stop}] are negative or reversed")
    size = DTYPE_BYTES[dtype]
    for d in shape:
        size *= d
    if stop - start != size:
        raise SourceError(f"{where}: data size {stop - start} does not match shape {str(tuple(shape))[:40]} {dtype}")
    return dtype, tuple(shape), start, stop


def parse_header(path: Path, raw: bytes, data_size: int) -> dict[str, tuple[str, tuple]]:
    """A safetensors header (the JSON after the length) checked as the safetensors library checks it
    when it opens the file, against a data section of ``data_size`` bytes: name -> (dtype, shape).

    The tensors' byte ranges, in offset order, must tile the data section: each starts where the
    previous one stopped (no overlap, no gap) and the last stops at its end (no truncation).
    """
    try:
        header = json.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError, RecursionError):
        raise SourceError(f"{path}: corrupt safetensors header (not UTF-8 JSON)") from None
    if not isinstance(header, dict):
        raise SourceError(f"{path}: safetensors header is not a JSON object")
    metadata = header.pop("__metadata__", None)
    if metadata is not None and not (isinstance(metadata, dict) and all(isinstance(v, str) for v in metadata.values())):
        raise SourceError(f"{path}: safetensors __metadata__ is not an object of strings")
    entries = {name: _entry(path, name, entry) for name, entry in header.items()}
    end = 0
    for name, (_, _, start, stop) in sorted(entries.items(), key=lambda item: item[1][2:]):
        if stop > data_size:
            raise SourceError(f"{path}: tensor {name[:60]!r} data [{start}, {stop}] runs past the end of the file "
                              f"(data section of {data_size} bytes; truncated?)")
        if start != end:
            what = "overlaps the tensor before it" if start < end else f"leaves a gap at byte {end}"
            raise SourceError(f"{path}: tensor {name[:60]!r} data at offset {start} {what}")
        end = stop
    if end != data_size:
        raise SourceError(f"{path}: {data_size - end} bytes after the last tensor's data")
    return {name: (dtype, shape) for name, (dtype, shape, _, _) in entries.items()}


def _header(path: Path) -> dict[str, tuple[str, tuple]]:
    """The checked safetensors header of ``path``: tensor name -> (dtype, shape); offsets are
    validated against the file's size before anything else is read."""
    try:
        with open(path, "rb") as f:
            file_size = os.fstat(f.fileno()).st_size
            head = f.read(8)
            if len(head) < 8:
                raise SourceError(f"{path}: truncated safetensors file (no header)")
            (size,) = struct.unpack("<Q", head)
            if size > min(MAX_HEADER_BYTES, file_size - 8):
                raise SourceError(f"{path}: safetensors header of {size} bytes does not fit the file ({file_size} bytes)")
            raw = f.read(size)
    except FileNotFoundError:
        raise SourceError(f"{path}: shard listed in {INDEX_FILE} is missing") from None
    if len(raw) < size:
        raise SourceError(f"{path}: truncated safetensors header")
    return parse_header(path, raw, file_size - 8 - size)


def file_tensors(path: Path) -> list[SourceTensor]:
    """The tensors of one safetensors file, in name order (as llama.cpp's converter reads a shard)."""
    return [SourceTensor(name, path, dtype, shape) for name, (dtype, shape) in sorted(_header(path).items())]


def load_pretrained(loader, folder, what: str, **kwargs):
    """``loader(folder, trust_remote_code=False, **kwargs)``: a transformers or sentence-transformers
    ``from_pretrained`` (or constructor) that never imports Python code from the folder (an ``auto_map``
    in config.json or tokenizer_config.json), and whose errors for a broken folder become one line."""
    try:
        return loader(str(folder), trust_remote_code=False, **kwargs)
    except QuantkitError:
        raise
    except Exception as e:  # transformers raises many kinds (ValueError, OSError, KeyError, ...) for a bad folder
        raise load_error(folder, what, e) from None


def load_error(folder, what: str, error: Exception) -> SourceError:
    """The one-line error for a folder transformers could not load: it names the folder's own code
    (an ``auto_map``) when there is some, else gives the first line of transformers' error."""
    for name in ("config.json", "tokenizer_config.json"):
        try:
            if "auto_map" in read_json(Path(folder) / name):
                return SourceError(f"{folder}: cannot load the {what}: {name}'s auto_map names Python code in the "
                                   "folder, which quantkit never runs")
        except (OSError, QuantkitError):
            continue
    return SourceError(f"{folder}: cannot load the {what}: {first_line(error, 80)}")


def bf16_to_f32(bits: np.ndarray) -> np.ndarray:
    """bfloat16 bit patterns (uint16) -> the float32 values with those top 16 bits (exact).

    Stores them as the high halves of a zeroed float32 array: three times faster than a ``left_shift``
    to uint32.
    """
    out = np.zeros(bits.size, dtype=np.float32)
    out.view(np.uint16)[1 if sys.byteorder == "little" else 0::2] = bits.reshape(-1)
    return out.reshape(bits.shape)


class HFSource:
    """A Hugging Face folder: ``config`` (dict), ``tensors`` (name -> SourceTensor, file order)."""

    def __init__(self, folder):
        self.folder = Path(folder)
        if not self.folder.is_dir():
            raise SourceError(f"{self.folder}: not a folder (expected a Hugging Face model folder)")
        config_path = self.folder / "config.json"
        if not config_path.is_file():
            raise SourceError(f"{self.folder}: no config.json; is this a Hugging Face model folder?")
        self.config = read_json(config_path)
        self.tensors = self._index()
        self.fp8_scales, dropped = fp8_scales(self.config, self.tensors, config_path)
        for name in dropped:
            del self.tensors[name]

    def _shards(self) -> tuple[list[Path], dict | None]:
        index_path = self.folder / INDEX_FILE
        if index_path.is_file():
            weight_map = read_json(index_path).get("weight_map")
            if not isinstance(weight_map, dict) or not weight_map or not all(isinstance(f, str) for f in weight_map.values()):
                raise SourceError(f"{index_path}: no weight_map (an object of tensor name -> shard file)")
            return sorted({self.folder / f for f in weight_map.values()}), weight_map
        if (self.folder / SINGLE_FILE).is_file():
            return [self.folder / SINGLE_FILE], None
        loose = sorted(self.folder.glob("*.safetensors"))
        if len(loose) == 1:
            return loose, None
        pickles = sorted(p.name for p in self.folder.glob("*.bin")) + sorted(p.name for p in self.folder.glob("*.pt*"))
        if pickles:
            raise SourceError(
                f"{self.folder}: only pickle checkpoints ({pickles[0]}); quantkit reads safetensors only "
                "(loading pickles runs arbitrary code) - save the model with safe_serialization=True"
            )
        raise SourceError(f"{self.folder}: no {SINGLE_FILE} or {INDEX_FILE}")

    def _index(self) -> dict[str, SourceTensor]:
        shards, weight_map = self._shards()
        tensors: dict[str, SourceTensor] = {}
        for path in shards:
            for t in file_tensors(path):
                if t.name in tensors:
                    raise SourceError(f"{path.name}: tensor {t.name[:60]!r} is also in {tensors[t.name].path.name}")
                tensors[t.name] = t
        if weight_map is not None:
            missing = sorted(set(weight_map) - set(tensors))
            if missing:
                raise SourceError(
                    f"{self.folder / weight_map[missing[0]]}: tensor {missing[0]!r} listed in {INDEX_FILE} is not there"
                    + (f" ({len(missing) - 1} more missing)" if len(missing) > 1 else "")
                )
        return tensors

    @property
    def inputs(self) -> list[Path]:
        """The files of the folder (an output must not be one of them)."""
        return [p for p in self.folder.iterdir() if p.is_file()]

    def tensor(self, name: str) -> SourceTensor:
        try:
            return self.tensors[name]
        except KeyError:
            raise SourceError(f"{self.folder}: tensor {name!r} is missing from the checkpoint") from None

    def weight(self, name: str) -> SourceTensor:
        """A tensor to convert: it must exist and be F32, F16 or BF16 (or FP8 with a scale)."""
        info = self.tensor(name)
        if info.dtype in FP8_DTYPES and name in self.fp8_scales:
            return info
        if info.dtype not in WEIGHT_DTYPES:
            raise SourceError(f"{info.path}: tensor {name!r} has dtype {info.dtype}; quantkit converts F32, F16 and BF16 weights")
        return info

    def read(self, name: str, start: int = 0, stop: int | None = None) -> np.ndarray:
        """Rows ``start:stop`` (first axis) of tensor ``name`` as a float32 array."""
        info = self.weight(name)
        scale = self.fp8_scales.get(name)
        if scale is None:
            return read_rows(info, start, stop)
        stop = _check_rows(info, start, stop)
        return dequantize_rows(read_raw_rows(info, start, stop), read_rows(scale.scale), scale.block, start)


def _check_rows(info: SourceTensor, start: int, stop: int | None) -> int:
    """``stop`` (the row count when None), checked: 0 <= start <= stop <= rows."""
    rows = info.shape[0] if info.shape else 1
    stop = rows if stop is None else stop
    if not 0 <= start <= stop <= rows:
        raise ShapeError(f"{info.path.name}: tensor {info.name!r}: rows {start}:{stop} out of range (it has {rows})")
    return stop


def read_rows(info: SourceTensor, start: int = 0, stop: int | None = None) -> np.ndarray:
    """Rows ``start:stop`` (first axis) of the F32, F16 or BF16 safetensors tensor ``info`` as float32."""
    stop = _check_rows(info, start, stop)
    with safe_open(str(info.path), framework="np") as f:
        part = f.get_slice(info.name)[start:stop] if info.shape else f.get_tensor(info.name)
    if info.dtype == "BF16":
        return bf16_to_f32(part.view(np.uint16))
    return part.astype(np.float32)
