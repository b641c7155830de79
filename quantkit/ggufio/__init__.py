"""GGUF files: a bounds-checked mmap reader and a streaming, atomic writer (see docs/gguf.md)."""

from .reader import ArrayType, GGUFFile, GGUFMetadata, GGUFTensor, read_gguf
from .writer import GGUFStreamWriter, MetadataError, TensorInfo, Typed, typed, write_gguf

__all__ = [
    "ArrayType",
    "GGUFFile",
    "GGUFMetadata",
    "GGUFStreamWriter",
    "GGUFTensor",
    "MetadataError",
    "TensorInfo",
    "Typed",
    "read_gguf",
    "typed",
    "write_gguf",
]
