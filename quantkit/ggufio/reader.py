"""A bounds-checked, memory-mapped GGUF v2/v3 reader.

Layout (little-endian; see docs/gguf.md): magic ``GGUF``, u32 version, u64 tensor count, u64 kv
count; the kvs (string key, u32 value type, value); the tensor infos (string name, u32 n_dims,
n_dims x u64 ne, u32 type, u64 offset relative to the data section); padding to the alignment;
the data section. A string is a u64 byte length and UTF-8 bytes; an array is a u32 element type,
a u64 count and the elements.

Every count and length is checked against the bytes left before anything is allocated, and every
problem raises a one-line :class:`GGUFFormatError` (or :class:`UnsupportedTypeError` /
:class:`ShapeError`) naming the file. Opening reads only the header: tensor data stays in the
page cache until used (``tensor.data`` is a zero-copy view into the map).
"""

from __future__ import annotations

import contextlib
import mmap
import os
import re
import struct
from collections.abc import ItemsView, Mapping, ValuesView
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from gguf import GGUFValueType

from ..errors import GGUFFormatError, QuantkitError, ShapeError, UnsupportedTypeError
from ..quants import dequantize
from ..types import GGMLType, known_type

GGUF_MAGIC = b"GGUF"
SPLIT_NO, SPLIT_COUNT, SPLIT_TENSORS = "split.no", "split.count", "split.tensors.count"
SHARD_NAME = "{stem}-{no:05d}-of-{count:05d}.gguf"  # llama.cpp's split file names (gguf-py's SHARD_NAME_FORMAT)
SHARD_PATTERN = re.compile(r"^(.*)-(\d{5})-of-(\d{5})\.gguf$")
SUPPORTED_VERSIONS = (2, 3)
DEFAULT_ALIGNMENT = 32
MAX_DIMS = 4  # GGML_MAX_DIMS
HEADER_BYTES = 4 + 4 + 8 + 8  # magic, version, tensor count, kv count
MAX_ARRAY_DEPTH = 8  # arrays of arrays nested deeper than this are refused
ARRAY_HEAD_BYTES = 4 + 8  # an array value starts with its u32 element type and u64 count
_U64 = struct.Struct("<Q")

# fixed-size value types: numpy little-endian dtype
SCALAR_DTYPES = {
    GGUFValueType.UINT8: np.dtype("<u1"),
    GGUFValueType.INT8: np.dtype("<i1"),
    GGUFValueType.UINT16: np.dtype("<u2"),
    GGUFValueType.INT16: np.dtype("<i2"),
    GGUFValueType.UINT32: np.dtype("<u4"),
    GGUFValueType.INT32: np.dtype("<i4"),
    GGUFValueType.FLOAT32: np.dtype("<f4"),
    GGUFValueType.BOOL: np.dtype("<u1"),
    GGUFValueType.UINT64: np.dtype("<u8"),
    GGUFValueType.INT64: np.dtype("<i8"),
    GGUFValueType.FLOAT64: np.dtype("<f8"),
}

# fewest bytes one element of each value type can take (a string: its u64 length; an array:
# its u32 element type and u64 count), used to check counts before allocating
MIN_VALUE_BYTES = {**{t: d.itemsize for t, d in SCALAR_DTYPES.items()}, GGUFValueType.STRING: 8, GGUFValueType.ARRAY: 12}
MIN_KV_BYTES = 8 + 4 + 1  # key length, value type, smallest value
MIN_TENSOR_INFO_BYTES = 8 + 4 + 4 + 8  # name length, n_dims, type, offset


def _quoted(name: str, limit: int = 40) -> str:
    """A key or tensor name for an error message: repr'd (invalid UTF-8 shows as escapes), cut to ``limit``."""
    text = repr(name)
    return text if len(text) <= limit else text[: limit - 4] + "...'"


@dataclass(frozen=True)
class ArrayType:
    """The GGUF type of an array value: its element type and, for an array of arrays, the
    ArrayType of each element in order (GGUF stores a type per nested array)."""

    elem: GGUFValueType
    items: tuple | None = None

    def __repr__(self) -> str:
        if self.items is None:
            return f"ArrayType({self.elem.name})"
        return f"ArrayType(ARRAY, {list(self.items)!r})"


def _type_label(spec) -> str:
    return f"ARRAY[{spec.elem.name}]" if isinstance(spec, ArrayType) else spec.name


class LazyArray:
    """A flat array value still in its GGUF bytes: ``raw`` is the whole encoded value (u32 element
    type, u64 count, the elements), checked when the file was opened; parsed on first use."""

    __slots__ = ("raw", "elem", "count")

    def __init__(self, raw: bytes, elem: GGUFValueType, count: int):
        self.raw = raw
        self.elem = elem
        self.count = count

    def values(self, limit: int | None = None) -> list:
        """The first ``limit`` elements (all when None) as plain Python values."""
        n = self.count if limit is None else min(limit, self.count)
        if self.elem == GGUFValueType.STRING:
            out, pos, raw = [], ARRAY_HEAD_BYTES, self.raw
            for _ in range(n):
                (length,) = _U64.unpack_from(raw, pos)
                out.append(raw[pos + 8 : pos + 8 + length].decode("utf-8", "surrogateescape"))
                pos += 8 + length
            return out
        raw = np.frombuffer(self.raw, dtype=SCALAR_DTYPES[self.elem], count=n, offset=ARRAY_HEAD_BYTES)
        return (raw.astype(bool) if self.elem == GGUFValueType.BOOL else raw).tolist()


class GGUFMetadata(dict):
    """An ordered dict key -> plain Python value that also remembers each key's GGUF type.

    ``value_type(key)`` is a :class:`gguf.GGUFValueType` for scalars or an :class:`ArrayType`.
    The writer uses the remembered type while the value still fits it (so a file read and
    written back is byte-identical) and infers a type otherwise.

    Flat arrays read from a file (the tokenizer's 50-250 thousand strings and numbers) stay in their
    GGUF bytes until a value is asked for: every read (``[]``, ``get``, ``items``, ``values``, ``pop``,
    ``==``, ``dict(m)``) sees plain lists, while ``copy()`` keeps the bytes and the writer copies the
    bytes of an array never read (``raw_value``), so a quantize job builds no Python object per token.
    """

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self._types: dict = {}

    def value_type(self, key):
        """The remembered GGUF type of ``key``, or None."""
        return self._types.get(key)

    def set_value_type(self, key, vtype) -> None:
        """Remember ``vtype`` (GGUFValueType or ArrayType) as the GGUF type of ``key``."""
        self._types[key] = vtype

    def raw_value(self, key) -> bytes | None:
        """The GGUF bytes of ``key``'s value (after its type tag) while it is an array not read yet, else None."""
        value = dict.get(self, key)
        return value.raw if isinstance(value, LazyArray) else None

    def head(self, key, limit: int):
        """(first ``limit`` elements, length) of an array value, without parsing the rest; (value, None)
        for a scalar."""
        value = dict.__getitem__(self, key)
        if isinstance(value, LazyArray):
            return value.values(limit), value.count
        if isinstance(value, list):
            return value[:limit], len(value)
        return value, None

    def __getitem__(self, key):
        value = dict.__getitem__(self, key)
        if isinstance(value, LazyArray):
            value = value.values()
            dict.__setitem__(self, key, value)  # parsed once; the list may be edited in place from now on
        return value

    def get(self, key, default=None):
        return self[key] if key in self else default

    def pop(self, key, *default):
        if key not in self:
            return dict.pop(self, key, *default)
        value = self[key]
        dict.__delitem__(self, key)
        return value

    def popitem(self):
        key = next(reversed(self))
        return key, self.pop(key)

    def setdefault(self, key, default=None):
        if key not in self:
            self[key] = default
        return self[key]

    def __iter__(self):  # defined so that dict(m), {**m} and update(m) read values through __getitem__
        return dict.__iter__(self)

    def items(self):
        return ItemsView(self)

    def values(self):
        return ValuesView(self)

    def __eq__(self, other):
        if not isinstance(other, Mapping):
            return NotImplemented
        return dict(self) == dict(other)

    def __ne__(self, other):
        equal = self.__eq__(other)
        return equal if equal is NotImplemented else not equal

    __hash__ = None

    def __repr__(self) -> str:
        return f"GGUFMetadata({dict(self)!r})"

    def copy(self) -> GGUFMetadata:
        """A copy that keeps unread arrays as bytes (they are immutable) and the remembered types."""
        out = GGUFMetadata()
        for key, value in dict.items(self):
            dict.__setitem__(out, key, value)
        out._types = dict(self._types)
        return out


class GGUFTensor:
    """One tensor of a GGUF file: ``data`` is a zero-copy uint8 view of exactly ``nbytes``."""

    __slots__ = ("name", "qtype", "shape", "offset", "nbytes", "source_path", "_file")

    def __init__(self, name: str, qtype: GGMLType, shape: tuple, offset: int, nbytes: int, file: GGUFFile):
        self.name = name
        self.qtype = qtype
        self.shape = shape  # numpy order: last axis = GGUF ne[0], the row
        self.offset = offset  # absolute offset in the file
        self.nbytes = nbytes
        self.source_path = file.path
        self._file = file

    @property
    def data(self) -> np.ndarray:
        return np.frombuffer(self._file._map(), dtype=np.uint8, count=self.nbytes, offset=self.offset)

    def dequantize(self, threads: int | None = None) -> np.ndarray:
        """float32 values in numpy shape; UnsupportedTypeError for types quantkit cannot decode."""
        return dequantize(self, threads=threads)

    def __repr__(self) -> str:
        return f"GGUFTensor({self.name!r}, {self.qtype.name}, shape={self.shape}, nbytes={self.nbytes})"


class _Cursor:
    """Reads little-endian values from a buffer, raising GGUFFormatError past its end."""

    def __init__(self, buf, size: int, label: str):
        self.buf = buf
        self.size = size
        self.pos = 0
        self.label = label

    def fail(self, message: str) -> GGUFFormatError:
        return GGUFFormatError(f"{self.label}: {message}")

    def need(self, n: int, what: str) -> None:
        if n > self.size - self.pos:
            raise self.fail(f"truncated: {what} at offset {self.pos} needs {n} bytes, {self.size - self.pos} left")

    def unpack(self, fmt: str, what: str):
        n = struct.calcsize(fmt)
        self.need(n, what)
        values = struct.unpack_from("<" + fmt, self.buf, self.pos)
        self.pos += n
        return values[0] if len(values) == 1 else values

    def count(self, min_item_bytes: int, what: str) -> int:
        """A u64 count of items each taking at least ``min_item_bytes``, checked against the bytes left."""
        start = self.pos
        n = self.unpack("Q", what)
        if n * min_item_bytes > self.size - self.pos:
            raise self.fail(
                f"{what} {n} at offset {start} is larger than the {self.size - self.pos} bytes left (truncated or corrupt file)"
            )
        return n

    def string(self, what: str) -> str:
        start = self.pos
        n = self.unpack("Q", f"{what} length")
        if n > self.size - self.pos:
            raise self.fail(
                f"{what} length {n} at offset {start} runs past the end of the file "
                f"({self.size - self.pos} bytes left; truncated or corrupt file)"
            )
        raw = bytes(self.buf[self.pos : self.pos + n])
        self.pos += n
        # invalid UTF-8 bytes become lone surrogates and are written back unchanged
        return raw.decode("utf-8", "surrogateescape")

    def value_type(self, what: str) -> GGUFValueType:
        start = self.pos
        raw = self.unpack("I", f"{what} type")
        try:
            return GGUFValueType(raw)
        except ValueError:
            raise self.fail(f"{what}: unknown value type {raw} at offset {start}") from None

    def value(self, vtype: GGUFValueType, what: str, depth: int = 0):
        """One value of ``vtype``: returns (plain value, type spec)."""
        if vtype == GGUFValueType.STRING:
            return self.string(what), vtype
        if vtype == GGUFValueType.ARRAY:
            return self.array(what, depth + 1)
        dtype = SCALAR_DTYPES[vtype]
        self.need(dtype.itemsize, what)
        value = np.frombuffer(self.buf, dtype=dtype, count=1, offset=self.pos)[0].item()
        self.pos += dtype.itemsize
        if vtype == GGUFValueType.BOOL:
            value = self._bool(value, what)
        return value, vtype

    def _bool(self, raw: int, what: str) -> bool:
        if raw not in (0, 1):
            raise self.fail(f"{what}: bool byte {raw} at offset {self.pos - 1} is neither 0 nor 1")
        return bool(raw)

    def flat_array(self, what: str):
        """A key's array value: a :class:`LazyArray` of its bytes, checked now, unless it holds arrays
        (parsed now); returns (value, ArrayType)."""
        start = self.pos
        elem = self.value_type(f"{what} array element")
        if elem == GGUFValueType.ARRAY:
            self.pos = start
            return self.array(what, 1)
        n = self.count(MIN_VALUE_BYTES[elem], f"{what} array length")
        if elem == GGUFValueType.STRING:
            self.skip_strings(n, what)
        else:
            raw = np.frombuffer(self.buf, dtype=SCALAR_DTYPES[elem], count=n, offset=self.pos)
            if elem == GGUFValueType.BOOL and raw.size and raw.max() > 1:
                raise self.fail(f"{what}: bool array holds a byte other than 0 or 1")
            self.pos += raw.nbytes
        return LazyArray(bytes(self.buf[start : self.pos]), elem, n), ArrayType(elem)

    def skip_strings(self, n: int, what: str) -> None:
        """Step over ``n`` strings, checking each length against the bytes left (as :meth:`string`)."""
        buf, pos, size, unpack = self.buf, self.pos, self.size, _U64.unpack_from
        for i in range(n):
            if size - pos < 8:
                self.pos = pos
                self.need(8, f"{what}[{i}] length")
            (length,) = unpack(buf, pos)
            if length > size - pos - 8:
                raise self.fail(f"{what}[{i}] length {length} at offset {pos} runs past the end of the file "
                                f"({size - pos - 8} bytes left; truncated or corrupt file)")
            pos += 8 + length
        self.pos = pos

    def array(self, what: str, depth: int):
        if depth > MAX_ARRAY_DEPTH:
            raise self.fail(f"{what}: arrays nested deeper than {MAX_ARRAY_DEPTH}")
        elem = self.value_type(f"{what} array element")
        n = self.count(MIN_VALUE_BYTES[elem], f"{what} array length")
        if elem in SCALAR_DTYPES:
            dtype = SCALAR_DTYPES[elem]
            raw = np.frombuffer(self.buf, dtype=dtype, count=n, offset=self.pos)
            self.pos += n * dtype.itemsize
            if elem == GGUFValueType.BOOL:
                if raw.size and raw.max() > 1:
                    raise self.fail(f"{what}: bool array holds a byte other than 0 or 1")
                return raw.astype(bool).tolist(), ArrayType(elem)
            return raw.tolist(), ArrayType(elem)
        if elem == GGUFValueType.STRING:
            return [self.string(f"{what}[{i}]") for i in range(n)], ArrayType(elem)
        values, specs = [], []
        for i in range(n):
            value, spec = self.array(f"{what}[{i}]", depth + 1)
            values.append(value)
            specs.append(spec)
        return values, ArrayType(elem, tuple(specs))


def close_quietly(handle, ignored: type[BaseException]) -> None:
    """Close ``handle`` unless it is None; an ``ignored`` error from closing is dropped."""
    if handle is not None:
        with contextlib.suppress(ignored):
            handle.close()


class GGUFFile:
    """A GGUF file opened read-only and memory-mapped.

    ``metadata``: :class:`GGUFMetadata` in file order; ``tensors``: :class:`GGUFTensor` list in
    file order; ``version``; ``alignment``; ``data_offset`` (start of the data section).
    Use as a context manager or call ``close()``.
    """

    def __init__(self, path, whole_set: bool = True):
        self.path = Path(path)
        self.shards: list[GGUFFile] = []  # the other files of a split set (first shard opened whole)
        self.label = str(path)  # as the user gave it, for messages
        self.metadata = GGUFMetadata()
        self.tensors: list[GGUFTensor] = []
        self._by_name: dict[str, GGUFTensor] = {}
        self._mm = None
        try:
            with open(self.path, "rb") as fh:
                self.size = os.fstat(fh.fileno()).st_size
                if self.size < HEADER_BYTES:
                    self._check_magic(fh.read())
                    raise GGUFFormatError(f"{self.label}: truncated: {self.size} bytes, a GGUF header takes {HEADER_BYTES}")
                self._mm = mmap.mmap(fh.fileno(), 0, access=mmap.ACCESS_READ)
        except FileNotFoundError:
            raise QuantkitError(f"{self.path}: no such file") from None
        except IsADirectoryError:
            raise QuantkitError(f"{self.path}: is a directory, not a GGUF file") from None
        except PermissionError:
            raise QuantkitError(f"{self.path}: permission denied") from None
        try:
            self._parse()
            if whole_set:
                self._open_shards()
        except BaseException:
            self.close()
            raise

    def _open_shards(self) -> None:
        """A split set's first shard (split.count > 1, split.no 0): add the other shards' tensors."""
        count, no = self.metadata.get(SPLIT_COUNT, 1), self.metadata.get(SPLIT_NO, 0)
        if not isinstance(count, int) or count <= 1:
            return
        if isinstance(no, bool) or not isinstance(no, int) or not 0 <= no < count:
            raise GGUFFormatError(f"{self.label}: split.no {no!r} is not a shard number below split.count {count}")
        match = SHARD_PATTERN.match(self.path.name)
        paths = shard_paths(self.path.with_name(match.group(1) + ".gguf"), count) if match else None
        if no != 0:
            raise GGUFFormatError(f"{self.label}: shard {no + 1} of {count} of a split model; open "
                                  f"{paths[0].name if paths else 'the first shard'}")
        if paths is None or paths[0].name != self.path.name:
            raise GGUFFormatError(
                f"{self.label}: first of {count} shards, but its name does not end in -00001-of-{count:05d}.gguf"
            )
        for i, path in enumerate(paths[1:], 1):
            if not path.is_file():
                raise GGUFFormatError(f"{path}: shard {i + 1} of {count} of {self.path.name} is missing")
            shard = GGUFFile(path, whole_set=False)
            self.shards.append(shard)
            if (shard.metadata.get(SPLIT_NO), shard.metadata.get(SPLIT_COUNT)) != (i, count):
                raise GGUFFormatError(f"{path}: its split.no/split.count do not say shard {i + 1} of {count}")
            for t in shard.tensors:
                if t.name in self._by_name:
                    raise GGUFFormatError(f"{path}: tensor {t.name!r} is also in an earlier shard")
                self._by_name[t.name] = t
                self.tensors.append(t)
        expected = self.metadata.get(SPLIT_TENSORS, len(self.tensors))
        if expected != len(self.tensors):
            raise GGUFFormatError(
                f"{self.label}: split.tensors.count is {expected}, the {count} shards hold {len(self.tensors)}"
            )

    @property
    def set_size(self) -> int:
        """Bytes of this file and its other shards."""
        return self.size + sum(s.size for s in self.shards)

    def _check_magic(self, head: bytes) -> None:
        """Refuse a file whose first bytes (all of them, if fewer than 4) are not GGUF's magic."""
        head = bytes(head[:4])
        if head != GGUF_MAGIC[: len(head)]:
            raise GGUFFormatError(f"{self.label}: not a GGUF file (starts with {head[:4]!r}, expected b'GGUF')")

    def _parse(self) -> None:
        cur = _Cursor(self._mm, self.size, self.label)
        self._check_magic(self._mm[:4])
        cur.pos = 4
        version = cur.unpack("I", "version")
        if version not in SUPPORTED_VERSIONS:
            if int.from_bytes(version.to_bytes(4, "little"), "big") in SUPPORTED_VERSIONS:
                raise cur.fail("big-endian GGUF is not supported")
            raise cur.fail(f"GGUF version {version} is not supported (only versions 2 and 3)")
        self.version = version
        n_tensors = cur.count(MIN_TENSOR_INFO_BYTES, "tensor count")
        n_kv = cur.count(MIN_KV_BYTES, "metadata key count")
        for _ in range(n_kv):
            start = cur.pos
            key = cur.string("metadata key")
            if key in self.metadata:
                raise cur.fail(f"duplicate metadata key {_quoted(key)} at offset {start}")
            vtype = cur.value_type(f"key {_quoted(key)}")
            if vtype == GGUFValueType.ARRAY:
                value, spec = cur.flat_array(f"key {_quoted(key)}")
            else:
                value, spec = cur.value(vtype, f"key {_quoted(key)}")
            self.metadata[key] = value
            self.metadata.set_value_type(key, spec)
        self.alignment = self._alignment()
        infos = [self._tensor_info(cur) for _ in range(n_tensors)]
        self.data_offset = -(-cur.pos // self.alignment) * self.alignment
        self._place(infos)

    def _alignment(self) -> int:
        if "general.alignment" not in self.metadata:
            return DEFAULT_ALIGNMENT
        value = self.metadata["general.alignment"]
        vtype = self.metadata.value_type("general.alignment")
        if isinstance(value, bool) or not isinstance(value, int):
            raise GGUFFormatError(f"{self.label}: general.alignment has type {_type_label(vtype)}, expected an integer")
        if value <= 0 or value & (value - 1):
            raise GGUFFormatError(f"{self.label}: general.alignment {value} is not a power of two")
        return value

    def _tensor_info(self, cur: _Cursor):
        start = cur.pos
        name = cur.string("tensor name")
        n_dims = cur.unpack("I", f"tensor {_quoted(name)} n_dims")
        if n_dims > MAX_DIMS:
            raise cur.fail(f"tensor {_quoted(name)} has {n_dims} dimensions, at most {MAX_DIMS} are allowed")
        ne = [cur.unpack("Q", f"tensor {_quoted(name)} dimension") for _ in range(n_dims)]
        raw_type = cur.unpack("I", f"tensor {_quoted(name)} type")
        offset = cur.unpack("Q", f"tensor {_quoted(name)} offset")
        if name in self._by_name:
            raise cur.fail(f"duplicate tensor name {_quoted(name)} at offset {start}")
        try:
            qt = known_type(raw_type)
        except UnsupportedTypeError:
            raise UnsupportedTypeError(f"{self.label}: tensor {_quoted(name)} has unknown type {raw_type}") from None
        qtype, block_size, type_size = qt.ggml, qt.block_size, qt.type_size
        n_elements = 1
        for d in ne:
            n_elements *= d
        if n_elements >= 2**63:
            raise cur.fail(f"tensor {_quoted(name)} has {n_elements} elements, more than GGUF's int64 allows")
        row = ne[0] if ne else 1
        if row % block_size:
            raise ShapeError(
                f"{self.label}: tensor {_quoted(name)} row length {row} is not a multiple of {qtype.name}'s block size {block_size}"
            )
        nbytes = n_elements // block_size * type_size
        tensor = GGUFTensor(name, qtype, tuple(reversed(ne)), offset, nbytes, self)
        self._by_name[name] = tensor
        return tensor

    def _place(self, infos: list[GGUFTensor]) -> None:
        """Turn relative offsets absolute and check alignment, bounds and overlaps."""
        for t in infos:
            if t.offset % self.alignment:
                raise GGUFFormatError(f"{self.label}: tensor {_quoted(t.name)} offset {t.offset} is not a multiple of the alignment {self.alignment}")
            t.offset += self.data_offset
            if t.offset + t.nbytes > self.size:
                raise GGUFFormatError(
                    f"{self.label}: tensor {_quoted(t.name)} data [offset {t.offset}, {t.nbytes} bytes] runs past the end of the file (size {self.size})"
                )
        previous = None
        for t in sorted(infos, key=lambda t: t.offset):
            if previous is not None and t.offset < previous.offset + previous.nbytes:
                raise GGUFFormatError(
                    f"{self.label}: tensor {_quoted(t.name)} data at offset {t.offset} overlaps tensor {_quoted(previous.name)} "
                    f"[offset {previous.offset}, {previous.nbytes} bytes]"
                )
            if t.nbytes:
                previous = t
        self.tensors = infos

    def _map(self):
        if self._mm is None:
            raise QuantkitError(f"{self.label}: file is closed")
        return self._mm

    def tensor(self, name: str) -> GGUFTensor:
        """The tensor called ``name``; QuantkitError if there is none."""
        try:
            return self._by_name[name]
        except KeyError:
            raise QuantkitError(f"{self.label}: no tensor named {_quoted(name)}") from None

    def close(self) -> None:
        """Release the map; tensor data views taken earlier keep it alive until they are dropped."""
        for shard in self.shards:
            shard.close()
        mm, self._mm = self._mm, None
        close_quietly(mm, BufferError)  # numpy views still point into it: it is unmapped when the last one goes

    def __enter__(self) -> GGUFFile:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"GGUFFile({str(self.path)!r}, version={self.version}, {len(self.metadata)} keys, {len(self.tensors)} tensors)"


def shard_paths(path, count: int) -> list[Path]:
    """``OUT-00001-of-0000N.gguf``, ... for ``OUT.gguf`` split in ``count`` shards."""
    path = Path(path)
    return [path.with_name(SHARD_NAME.format(stem=path.stem, no=i + 1, count=count)) for i in range(count)]


def read_gguf(path: str | os.PathLike, whole_set: bool = True) -> GGUFFile:
    """Open a GGUF v2/v3 file: header, metadata and tensor infos parsed, tensor data mapped lazily.

    The first shard of llama.cpp's split set (``OUT-00001-of-0000N.gguf``) opens as the whole model
    (``tensors`` holds every shard's); ``whole_set=False`` opens one file as it is.
    """
    return GGUFFile(path, whole_set)
