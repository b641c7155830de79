"""A streaming, atomic GGUF v3 writer.

``GGUFStreamWriter`` writes the header, the metadata and the tensor infos (offsets are the aligned
cumulative tensor sizes) when it opens, then takes each tensor's bytes in file order, in as many
chunks as the caller likes, padding every tensor with zero bytes to the alignment. Memory use is
one chunk plus the encoded metadata.

Output is atomic: everything goes to ``.<name>.tmp-<random>`` in the target folder, which is
fsynced and renamed over the final name only when every tensor is complete; on any exception
(KeyboardInterrupt included) the temporary file is deleted and the final name is left untouched.

Metadata types: a value wrapped in :func:`typed` has that type; otherwise the type remembered by
:class:`GGUFMetadata` (from the reader) is used while the value fits it; otherwise the type is
inferred as gguf-py's GGUFWriter does: bool -> BOOL, int -> INT32 (INT64, then UINT64 when out of
range), float -> FLOAT32, str -> STRING, list/tuple -> ARRAY of the elements' inferred type;
numpy scalars and arrays take the type of their dtype. ``general.alignment`` is always UINT32.
"""

from __future__ import annotations

import os
import struct
import threading
import weakref
from collections import deque
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable, Mapping, NamedTuple

import numpy as np
from gguf import GGMLQuantizationType, GGUFValueType

from ..errors import OutputError, QuantkitError, ShapeError
from ..files import create_temp
from ..types import known_type
from .reader import (
    DEFAULT_ALIGNMENT,
    GGUF_MAGIC,
    MAX_ARRAY_DEPTH,
    MAX_DIMS,
    SCALAR_DTYPES,
    SPLIT_COUNT,
    SPLIT_NO,
    SPLIT_TENSORS,
    ArrayType,
    close_quietly,
    shard_paths,
)

GGUF_VERSION = 3
COPY_CHUNK_BYTES = 16 << 20  # write_gguf copies tensor data in slices of this size
EARLY_SYNC_BYTES = 32 << 20  # with write-behind, data is sent to disk each time this much more is written

_INT_TYPES = (GGUFValueType.INT32, GGUFValueType.INT64, GGUFValueType.UINT64)  # inference order
_NUMPY_KINDS = {**{d: t for t, d in SCALAR_DTYPES.items() if t != GGUFValueType.BOOL}, np.dtype(bool): GGUFValueType.BOOL}


class MetadataError(QuantkitError):
    """A metadata value that cannot be written with its (given or inferred) GGUF type."""


@dataclass(frozen=True)
class Typed:
    """A metadata value with an explicit GGUF type (see :func:`typed`)."""

    value: object
    vtype: object  # GGUFValueType or ArrayType


def typed(value, vtype: GGUFValueType) -> Typed:
    """Give a metadata value an explicit GGUF type.

    For a scalar ``vtype`` is its type (``typed(3, GGUFValueType.UINT32)``); for a list it is the
    element type (``typed([1, 2], GGUFValueType.UINT32)``; elements of an array of arrays may be
    ``typed`` themselves). An :class:`ArrayType` spelling the whole array type is accepted too.
    """
    if isinstance(vtype, ArrayType):
        return Typed(value, vtype)
    vtype = GGUFValueType(vtype)
    if isinstance(value, (list, tuple, np.ndarray)) and vtype != GGUFValueType.ARRAY:
        return Typed(list(value), ArrayType(vtype))
    return Typed(value, vtype)


class TensorInfo(NamedTuple):
    """What the writer must know of a tensor before its data: name, type and numpy shape."""

    name: str
    qtype: GGMLQuantizationType
    shape: tuple


class _Mismatch(Exception):
    """A value does not fit a GGUF type (internal: the writer then infers one)."""


def _pack_string(value) -> bytes:
    raw = value.encode("utf-8", "surrogateescape") if isinstance(value, str) else bytes(value)
    return struct.pack("<Q", len(raw)) + raw


def _infer(value, depth: int = 0):
    """The GGUF type of a plain value, following gguf-py's GGUFWriter."""
    if isinstance(value, Typed):
        return value.vtype
    if isinstance(value, (bool, np.bool_)):
        return GGUFValueType.BOOL
    if isinstance(value, int):
        for vtype in _INT_TYPES:
            info = np.iinfo(SCALAR_DTYPES[vtype])
            if info.min <= value <= info.max:
                return vtype
        raise _Mismatch(f"integer {value} does not fit in 64 bits")
    if isinstance(value, (np.generic, np.ndarray)) and value.dtype.newbyteorder("<") in _NUMPY_KINDS:
        vtype = _NUMPY_KINDS[value.dtype.newbyteorder("<")]
        return ArrayType(vtype) if isinstance(value, np.ndarray) else vtype
    if isinstance(value, float):
        return GGUFValueType.FLOAT32
    if isinstance(value, (str, bytes)):
        return GGUFValueType.STRING
    if isinstance(value, (list, tuple)):
        if depth >= MAX_ARRAY_DEPTH:
            raise _Mismatch(f"arrays nested deeper than {MAX_ARRAY_DEPTH}")
        if not value:
            raise _Mismatch("cannot infer the element type of an empty list; wrap it: typed([], GGUFValueType.X)")
        specs = [_infer(v, depth + 1) for v in value]
        if all(isinstance(s, ArrayType) for s in specs):
            return ArrayType(GGUFValueType.ARRAY, tuple(specs))
        kinds = set(specs)
        if kinds <= set(_INT_TYPES):
            return ArrayType(max(kinds, key=_INT_TYPES.index))
        if len(kinds) == 1:
            return ArrayType(kinds.pop())
        raise _Mismatch(f"list mixes element types {sorted(getattr(k, 'name', 'ARRAY') for k in kinds)}")
    raise _Mismatch(f"no GGUF type for a {type(value).__name__}")


def _encode(value, vtype) -> bytes:
    """The GGUF bytes of ``value`` (without its type tag) as ``vtype``; _Mismatch if it does not fit."""
    if isinstance(vtype, ArrayType):
        return _encode_array(value, vtype)
    if vtype == GGUFValueType.STRING:
        if not isinstance(value, (str, bytes)):
            raise _Mismatch(f"{type(value).__name__} is not a string")
        return _pack_string(value)
    if vtype == GGUFValueType.ARRAY:
        raise _Mismatch("ARRAY needs an element type")
    return _encode_numbers([value], vtype)


def _encode_numbers(values, vtype: GGUFValueType) -> bytes:
    """Packed little-endian numbers of a fixed-size ``vtype``; no silent bool/int/float conversions."""
    dtype = SCALAR_DTYPES[vtype]
    if isinstance(values, np.ndarray):
        items = values.reshape(-1).tolist()
    else:
        items = [v.item() if isinstance(v, np.generic) else v for v in values]
    if vtype == GGUFValueType.BOOL:
        if not all(isinstance(v, bool) for v in items):
            raise _Mismatch("BOOL needs True or False")
        return np.asarray(items, dtype=bool).astype(dtype).tobytes()
    if any(isinstance(v, bool) for v in items):
        raise _Mismatch("a bool where a number is expected")
    if dtype.kind in "iu":
        if not all(isinstance(v, int) for v in items):
            raise _Mismatch(f"{vtype.name} needs integers")
        info = np.iinfo(dtype)
        if items and not (info.min <= min(items) and max(items) <= info.max):
            raise _Mismatch(f"integer out of {vtype.name}'s range")
    elif not all(isinstance(v, (int, float)) for v in items):
        raise _Mismatch(f"{vtype.name} needs numbers")
    try:
        return np.asarray(items, dtype=dtype).tobytes()
    except OverflowError:
        raise _Mismatch(f"a number out of {vtype.name}'s range") from None


def _encode_array(value, spec: ArrayType) -> bytes:
    if not isinstance(value, (list, tuple, np.ndarray)):
        raise _Mismatch(f"{type(value).__name__} is not a list")
    head = struct.pack("<IQ", spec.elem, len(value))
    if spec.elem == GGUFValueType.STRING:
        if not all(isinstance(v, (str, bytes)) for v in value):
            raise _Mismatch("a string array holds a non-string")
        return head + b"".join(_pack_string(v) for v in value)
    if spec.elem == GGUFValueType.ARRAY:
        items = spec.items if spec.items is not None else [None] * len(value)
        if len(items) != len(value):
            raise _Mismatch("array of arrays changed length")
        parts = []
        for v, s in zip(value, items):
            if isinstance(v, Typed):
                v, s = v.value, v.vtype
            s = s or _infer(v)
            if not isinstance(s, ArrayType):
                raise _Mismatch("an array of arrays holds a non-array")
            parts.append(_encode_array(v, s))
        return head + b"".join(parts)
    if not isinstance(value, np.ndarray):
        value = [v.value if isinstance(v, Typed) else v for v in value]
    return head + _encode_numbers(value, spec.elem)


def _typed_body(key: str, value, remembered):
    """(GGUF type, value bytes): explicit ``typed``, then UINT32 alignment, then the remembered
    type while the value fits it, then the inferred type."""
    if isinstance(value, Typed):
        return value.vtype, _encode(value.value, value.vtype)
    if key == "general.alignment":
        return GGUFValueType.UINT32, _encode(value, GGUFValueType.UINT32)
    if remembered is not None:
        try:
            return remembered, _encode(value, remembered)
        except _Mismatch:
            pass
    spec = _infer(value)
    return spec, _encode(value, spec)


def encode_kv(key: str, value, remembered=None) -> bytes:
    """One metadata kv as GGUF bytes: string key, u32 value type, value."""
    if not isinstance(key, str):
        raise MetadataError(f"metadata key {key!r} is not a string")
    try:
        spec, body = _typed_body(key, value, remembered)
    except _Mismatch as e:
        raise MetadataError(f"metadata key {key!r}: {e}") from None
    tag = GGUFValueType.ARRAY if isinstance(spec, ArrayType) else spec
    return _pack_string(key) + struct.pack("<I", tag) + body


def _tensor_infos(tensors) -> list[TensorInfo]:
    """Normalise a sequence of objects with .name/.qtype/.shape, or a dict name -> object with .qtype/.shape."""
    items = tensors.items() if isinstance(tensors, dict) else [(t.name, t) for t in tensors]
    infos = []
    for name, t in items:
        if not isinstance(name, str):
            raise QuantkitError(f"tensor name {name!r} is not a string")
        infos.append(TensorInfo(name, known_type(t.qtype).ggml, tuple(int(d) for d in t.shape)))
    return infos


def tensor_sizes(infos: list[TensorInfo]) -> list[int]:
    """Bytes of each tensor's data (unpadded); ShapeError naming a tensor whose row its type cannot take."""
    sizes = []
    for info in infos:
        try:
            sizes.append(known_type(info.qtype).nbytes(info.shape))
        except ShapeError as e:
            raise ShapeError(f"tensor {info.name!r}: {e}") from None
    return sizes


def _same_file(a: Path, b: Path) -> bool:
    try:
        return os.path.samefile(a, b)
    except OSError:
        return os.path.realpath(a) == os.path.realpath(b)


class _EarlySync:
    """A thread that calls fdatasync on a file being written each time ``EARLY_SYNC_BYTES`` more are
    written, so the disk writes overlap the work producing the data and the fsync before the rename
    finds little left (measured: 0.3 s -> 0.05 s at the end of a 256 MB file). Its errors are dropped:
    the final fsync reports them."""

    def __init__(self, fd: int):
        self._fd = fd
        self._unsynced = 0
        self._wake = threading.Event()
        self._stopped = False
        self._thread = threading.Thread(target=self._run, name="gguf-early-sync", daemon=True)
        self._thread.start()

    def written(self, nbytes: int) -> None:
        self._unsynced += nbytes
        if self._unsynced >= EARLY_SYNC_BYTES:
            self._unsynced = 0
            self._wake.set()

    def _run(self) -> None:
        sync = getattr(os, "fdatasync", os.fsync)  # macOS has no fdatasync
        while True:
            self._wake.wait()
            self._wake.clear()
            if self._stopped:
                return
            try:
                sync(self._fd)
            except OSError:
                return

    def stop(self) -> None:
        """Wait for a sync under way; the file may be closed afterwards."""
        self._stopped = True
        self._wake.set()
        if self._thread is not threading.current_thread():
            self._thread.join()


class _Atomic:
    """``with`` support: ``close()`` (commit) when the block ends normally, ``abort()`` when it raises."""

    def __enter__(self):
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is None:
            self.close()
        else:
            self.abort()


class GGUFStreamWriter(_Atomic):
    """Write a GGUF v3 file tensor by tensor.

    ``GGUFStreamWriter(path, metadata, tensor_infos, *, overwrite=False, inputs=())``:
    ``metadata`` a dict (a :class:`GGUFMetadata` keeps the reader's types), ``tensor_infos`` as in
    :func:`write_gguf` (data not needed), ``inputs`` paths the output must not be. Then call
    ``write(name_or_None, chunk)`` with each tensor's bytes in file order (``None`` continues the
    current tensor, or starts the next once it is complete), and ``close()``; or use ``with``,
    which deletes the partial output if the block raises.

    ``write_behind=N`` (N > 0) writes on a background thread with up to N chunks queued, so that the
    disk write (which releases the GIL) overlaps the caller's reading and quantizing of the next
    chunks; a queued chunk must not be modified. An error in a queued write surfaces at a later
    ``write()`` or at ``close()``, and the output is discarded as usual.
    """

    def __init__(self, path, metadata, tensor_infos, *, overwrite: bool = False, inputs=(), write_behind: int = 0):
        self.path = Path(path)
        self._write_behind = write_behind
        self._pool = None  # the background writer thread, started at the first queued write
        self._pending: deque = deque()  # futures of the queued writes, oldest first
        self._early_sync = None  # an _EarlySync while a write-behind writer's file is open
        self.infos = _tensor_infos(tensor_infos)
        self._check_target(overwrite, inputs)
        self.alignment = self._alignment(metadata)
        self.sizes = tensor_sizes(self.infos)
        self._empty = {info.name for info, size in zip(self.infos, self.sizes) if size == 0}
        header = self._header(metadata)
        self._index = 0  # tensor being written
        self._done = 0  # its bytes written so far
        fd, self.tmp_path = create_temp(self.path)
        self._finalizer = weakref.finalize(self, _remove, self.tmp_path)
        self._file = os.fdopen(fd, "wb", buffering=1 << 20)
        self._early_sync = _EarlySync(fd) if write_behind else None
        try:
            self._write(header)
            self._pad(len(header))
            self._skip_empty()
        except BaseException:
            self.abort()
            raise

    def _check_target(self, overwrite: bool, inputs) -> None:
        for src in inputs:
            if _same_file(self.path, Path(src)):
                raise OutputError(f"{self.path}: the output is also an input; write to another path")
        if self.path.is_dir():
            raise OutputError(f"{self.path}: is a directory")
        if self.path.exists() and not overwrite:
            raise OutputError(f"{self.path}: exists; pass overwrite=True (--force) to replace it")
        if not self.path.parent.is_dir():
            raise OutputError(f"{self.path}: folder {self.path.parent} does not exist")
        names = set()
        for info in self.infos:
            if info.name in names:
                raise OutputError(f"{self.path}: duplicate tensor name {info.name!r}")
            names.add(info.name)
            if len(info.shape) > MAX_DIMS:
                raise ShapeError(f"tensor {info.name!r}: {len(info.shape)} dimensions, GGUF allows at most {MAX_DIMS}")
            if any(d < 0 for d in info.shape):
                raise ShapeError(f"tensor {info.name!r}: negative dimension in shape {info.shape}")

    @staticmethod
    def _alignment(metadata) -> int:
        value = metadata.get("general.alignment", DEFAULT_ALIGNMENT)
        value = value.value if isinstance(value, Typed) else value
        if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value <= 0 or value & (value - 1):
            raise MetadataError(f"general.alignment {value!r} is not a positive power of two")
        return int(value)


    def _header(self, metadata) -> bytes:
        """Magic, version, counts, kvs and tensor infos, offsets being aligned cumulative sizes."""
        remembered = getattr(metadata, "value_type", lambda key: None)
        raw_value = getattr(metadata, "raw_value", lambda key: None)  # a GGUFMetadata's unread arrays
        parts = [GGUF_MAGIC, struct.pack("<IQQ", GGUF_VERSION, len(self.infos), len(metadata))]
        for key in metadata.keys():
            raw = raw_value(key) if key != "general.alignment" else None
            if raw is not None:  # an array read from a file and never touched: its bytes as they were
                parts.append(_pack_string(key) + struct.pack("<I", GGUFValueType.ARRAY) + raw)
            else:
                parts.append(encode_kv(key, metadata[key], remembered(key)))
        offset = 0
        for info, size in zip(self.infos, self.sizes):
            parts.append(_pack_string(info.name))
            parts.append(struct.pack(f"<I{len(info.shape)}Q", len(info.shape), *reversed(info.shape)))
            parts.append(struct.pack("<IQ", info.qtype, offset))
            offset += self._padded(size)
        return b"".join(parts)

    def _padded(self, n: int) -> int:
        return -(-n // self.alignment) * self.alignment

    def _write(self, data) -> None:
        try:
            self._file.write(data)
        except OSError as e:
            raise OutputError(f"{self.path}: cannot write: {e.strerror or e}") from None

    def _pad(self, n: int) -> None:
        self._write(bytes(self._padded(n) - n))

    def _skip_empty(self) -> None:
        while self._index < len(self.infos) and self.sizes[self._index] == 0:
            self._index += 1

    def write(self, name: str | None, chunk) -> None:
        """Append ``chunk`` (bytes-like or numpy array; its raw bytes) to tensor ``name``.

        ``name`` must be the tensor being written or, once that is complete, the next one; None
        means the same. A chunk may not run past the end of its tensor.
        """
        if not self._write_behind:
            return self._append(name, chunk)
        if self._file is None:
            self._drain()  # raises the error of the queued write that closed it, if one did
            raise OutputError(f"{self.path}: writer is closed")
        if self._pool is None:
            self._pool = ThreadPoolExecutor(1, thread_name_prefix="gguf-write-behind")
        self._pending.append(self._pool.submit(self._append, name, chunk))
        try:
            while len(self._pending) > self._write_behind:
                self._pending.popleft().result()
        except BaseException:
            self.abort()
            raise

    def _drain(self) -> None:
        """Wait for the queued writes (raising the first one's error) and stop the thread."""
        try:
            while self._pending:
                self._pending.popleft().result()
        finally:
            for future in self._pending:
                future.cancel()
            self._pending.clear()
            if self._pool is not None:
                self._pool.shutdown(wait=True)
                self._pool = None

    def _append(self, name: str | None, chunk) -> None:
        if self._file is None:
            raise OutputError(f"{self.path}: writer is closed")
        try:
            if not _nbytes(chunk) and (name is None or name in self._empty):
                return  # nothing to write (e.g. a tensor with a zero dimension, which takes no bytes)
            if self._index >= len(self.infos):
                raise OutputError(f"{self.path}: all {len(self.infos)} tensors are already written")
            info, size = self.infos[self._index], self.sizes[self._index]
            if name is not None and name != info.name:
                expected = f"tensor {info.name!r}" + (" (still incomplete)" if self._done else "")
                raise OutputError(f"{self.path}: got data for tensor {name!r}, expected {expected}")
            view = memoryview(np.ascontiguousarray(chunk) if isinstance(chunk, np.ndarray) else chunk).cast("B")
            if self._done + view.nbytes > size:
                raise ShapeError(
                    f"tensor {info.name!r}: {self._done + view.nbytes} bytes written, it takes {size} ({info.qtype.name} {info.shape})"
                )
            self._write(view)
            if self._early_sync is not None:
                self._early_sync.written(view.nbytes)
            self._done += view.nbytes
            if self._done == size:
                self._pad(size)
                self._index += 1
                self._done = 0
                self._skip_empty()
        except BaseException:
            self._discard()  # not abort(): this may run on the write-behind thread
            raise

    @property
    def paths(self) -> list[Path]:
        """The files this writer makes."""
        return [self.path]

    def close(self) -> None:
        """Finish the queued writes, check every tensor is complete, fsync and rename the
        temporary file to ``path``."""
        if self.finish():
            self.commit()

    def finish(self) -> bool:
        """Everything but the rename: drain, check completeness, fsync and close the temporary file.
        False if the writer was already closed."""
        try:
            self._drain()
        except BaseException:
            self.abort()
            raise
        if self._file is None:
            return False
        try:
            if self._index < len(self.infos):
                info = self.infos[self._index]
                raise ShapeError(
                    f"{self.path}: tensor {info.name!r} got {self._done} of its {self.sizes[self._index]} bytes"
                    f" ({len(self.infos) - self._index} tensors incomplete)"
                )
            try:
                self._stop_early_sync()
                self._file.flush()
                os.fsync(self._file.fileno())
                self._file.close()
                self._file = None
            except OSError as e:
                raise OutputError(f"{self.path}: cannot write: {e.strerror or e}") from None
        except BaseException:
            self.abort()
            raise
        return True

    def commit(self) -> None:
        """Rename the finished temporary file to ``path``."""
        try:
            os.replace(self.tmp_path, self.path)
        except OSError as e:
            self.abort()
            raise OutputError(f"{self.path}: cannot write: {e.strerror or e}") from None
        self._finalizer.detach()
        _fsync_dir(self.path.parent)

    def abort(self) -> None:
        """Discard the output: drop the queued writes, close and delete the temporary file."""
        for future in self._pending:
            future.cancel()  # those not started yet
        try:
            self._drain()
        except BaseException:
            pass  # the output is discarded anyway; the caller is already handling an error
        finally:
            self._discard()

    def _stop_early_sync(self) -> None:
        sync, self._early_sync = self._early_sync, None
        if sync is not None:
            sync.stop()

    def _discard(self) -> None:
        """Close and delete the temporary file (safe from the write-behind thread)."""
        self._stop_early_sync()
        file, self._file = self._file, None
        close_quietly(file, OSError)
        self._finalizer()


SPLIT_KEYS = (SPLIT_NO, SPLIT_COUNT, SPLIT_TENSORS)


def parse_split_size(text) -> int:
    """``--split-max-size``: bytes, or a count with K, M or G (powers of 1000, as llama.cpp's converter)."""
    raw = str(text).strip()
    factor = {"K": 1000, "M": 1000**2, "G": 1000**3}.get(raw[-1:].upper(), 1)
    digits = raw[:-1] if factor > 1 else raw
    if not digits.isdecimal() or int(digits) <= 0:
        raise QuantkitError(f"--split-max-size {text!r}: expected a positive number of bytes, optionally with K, M or G")
    return int(digits) * factor


def shard_plan(sizes, max_size: int = 0, max_tensors: int = 0) -> list[int]:
    """The number of tensors in each shard, as gguf-py's GGUFWriter places them: a tensor opens a new
    shard when the current one already has ``max_tensors`` tensors or its (unpadded) bytes plus this
    tensor's would exceed ``max_size``; a shard always takes at least one tensor. 0 means no limit."""
    counts, used = [0], 0
    for size in sizes:
        if counts[-1] and ((max_tensors and counts[-1] >= max_tensors) or (max_size and used + size > max_size)):
            counts.append(0)
            used = 0
        counts[-1] += 1
        used += size
    return counts


class GGUFSplitWriter(_Atomic):
    """llama.cpp's split GGUF set, written with one :class:`GGUFStreamWriter` per shard.

    The first shard holds all metadata, every shard the keys ``split.no`` (u16, from 0),
    ``split.count`` (u16) and ``split.tensors.count`` (i32) last, as gguf-py writes them. Same
    interface as GGUFStreamWriter; all-or-nothing: the shards are renamed into place only when every
    one is complete, and none is left behind on an error.
    """

    def __init__(self, path, metadata, tensor_infos, counts: list[int], *, overwrite: bool = False, inputs=(),
                 write_behind: int = 0):
        infos = _tensor_infos(tensor_infos)
        self.path = Path(path)
        self.writers: list[GGUFStreamWriter] = []
        self._by_name: dict[str, GGUFStreamWriter] = {}
        self._current = None
        first = 0
        try:
            for no, (shard, count) in enumerate(zip(shard_paths(path, len(counts)), counts)):
                keys = metadata.copy() if no == 0 else {}
                for key in SPLIT_KEYS:
                    keys.pop(key, None)
                keys[SPLIT_NO] = typed(no, GGUFValueType.UINT16)
                keys[SPLIT_COUNT] = typed(len(counts), GGUFValueType.UINT16)
                keys[SPLIT_TENSORS] = typed(len(infos), GGUFValueType.INT32)
                part = infos[first:first + count]
                first += count
                writer = GGUFStreamWriter(shard, keys, part, overwrite=overwrite, inputs=inputs,
                                          write_behind=write_behind)
                self.writers.append(writer)
                self._by_name.update((info.name, writer) for info in part)
        except BaseException:
            self.abort()
            raise

    @property
    def paths(self) -> list[Path]:
        return [w.path for w in self.writers]

    def write(self, name: str | None, chunk) -> None:
        """As GGUFStreamWriter.write; the tensor's shard takes the bytes."""
        if name is not None:
            if name not in self._by_name:
                self.abort()
                raise OutputError(f"{self.path}: got data for tensor {name!r}, which is not in the file")
            self._current = self._by_name[name]
        if self._current is None:
            self._current = self.writers[0]
        try:
            self._current.write(name, chunk)
        except BaseException:
            self.abort()
            raise

    def close(self) -> None:
        try:
            for w in self.writers:
                w.finish()
        except BaseException:
            self.abort()
            raise
        done = []
        try:
            for w in self.writers:
                w.commit()
                done.append(w.path)
        except BaseException:
            self.abort()
            for p in done:
                _remove(p)
            raise

    def abort(self) -> None:
        for w in self.writers:
            w.abort()


def shards_note(paths) -> str:
    """How to name what a writer wrote: the file, or the first shard and how many there are."""
    return f"{paths[0]} (first of {len(paths)} shards)" if len(paths) > 1 else str(paths[0])


def open_gguf_writer(path, metadata, tensor_infos, *, split_max_size: int = 0, split_max_tensors: int = 0, **options):
    """A GGUFStreamWriter, or a GGUFSplitWriter when the split limits make more than one shard (one shard is
    written as a plain file without split keys, as gguf-py does)."""
    infos = _tensor_infos(tensor_infos)
    if split_max_size or split_max_tensors:
        counts = shard_plan(tensor_sizes(infos), split_max_size, split_max_tensors)
        if len(counts) > 1:
            return GGUFSplitWriter(path, metadata, infos, counts, **options)
    return GGUFStreamWriter(path, metadata, infos, **options)


def _nbytes(chunk) -> int:
    return chunk.nbytes if isinstance(chunk, np.ndarray) else memoryview(chunk).nbytes


def _remove(path: Path) -> None:
    try:
        os.unlink(path)
    except FileNotFoundError:
        pass


def _fsync_dir(folder: Path) -> None:
    """Make the rename durable (best effort: not every platform can open a folder)."""
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def write_gguf(path: str | os.PathLike, metadata: Mapping[str, Any], tensors: Iterable | Mapping,
               overwrite: bool = False) -> Path:
    """Write a GGUF v3 file atomically; returns its path.

    ``tensors``: a sequence of objects with .name/.qtype/.shape/.data (reader tensors,
    QuantizedTensor-likes with a name), or a dict name -> object with .qtype/.shape/.data. ``data``
    holds the GGUF bytes of the tensor. Reader tensors' files are refused as the output path.
    """
    items = list(tensors.values()) if isinstance(tensors, dict) else list(tensors)
    inputs = {t.source_path for t in items if getattr(t, "source_path", None) is not None}
    with GGUFStreamWriter(path, metadata, tensors, overwrite=overwrite, inputs=inputs) as out:
        for info, t in zip(out.infos, items):
            data = t.data if isinstance(t.data, np.ndarray) else np.frombuffer(t.data, dtype=np.uint8)
            data = np.ascontiguousarray(data).reshape(-1).view(np.uint8)
            for start in range(0, data.size, COPY_CHUNK_BYTES):
                out.write(info.name, data[start : start + COPY_CHUNK_BYTES])
    return out.path
