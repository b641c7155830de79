"""GGUF files: a bounds-checked mmap reader and a streaming, atomic writer (see docs/gguf.md)."""

from .reader import ArrayType, GGUFFile, GGUFMetadata, GGUFTensor, read_gguf
from .writer import (
    GGUFSplitWriter,
    GGUFStreamWriter,
    MetadataError,
    TensorInfo,
    Typed,
    open_gguf_writer,
    parse_split_size,
    shards_note,
    typed,
    write_gguf,
)

__all__ = [
    "ArrayType",
    "GGUFFile",
    "GGUFMetadata",
    "GGUFSplitWriter",
    "GGUFStreamWriter",
    "GGUFTensor",
    "MetadataError",
    "TensorInfo",
    "Typed",
    "open_gguf_writer",
    "parse_split_size",
    "read_gguf",
    "shards_note",
    "typed",
    "write_gguf",
]
