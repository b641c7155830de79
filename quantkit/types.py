"""The type registry: GGUF tensor types quantkit knows, their block geometry and their kernels.

Block geometry comes from ``gguf.GGML_QUANT_SIZES`` (elements per block, bytes per block); the
enum is ``gguf.GGMLQuantizationType``, whose values equal llama.cpp's ``ggml_type``. Each
supported type names the module under ``quantkit.quants`` that implements it; that module
exposes ``quantize_rows(qt, rows, imatrix)`` and ``dequantize_rows(qt, data, n_per_row)``.
This module imports neither numba nor torch.
"""

from __future__ import annotations

import functools
import importlib
import importlib.util
import numbers
from dataclasses import dataclass

from gguf import GGML_QUANT_SIZES, GGMLQuantizationType

from .errors import ShapeError, UnsupportedTypeError

# type name -> module under quantkit.quants that quantizes and dequantizes it
_FAMILY = {
    "F32": "floats",
    "F16": "floats",
    "BF16": "floats",
    "Q8_0": "legacy",
    "Q4_0": "legacy",
    "Q4_1": "legacy",
    "Q5_0": "legacy",
    "Q5_1": "legacy",
    "Q2_K": "kquants",
    "Q3_K": "kquants",
    "Q4_K": "kquants",
    "Q5_K": "kquants",
    "Q6_K": "kquants",
    "IQ4_NL": "iq4",
    "IQ4_XS": "iq4",
    "IQ3_XXS": "iq3",
    "IQ3_S": "iq3",
    "IQ2_XXS": "iq2",
    "IQ2_XS": "iq2",
    "IQ2_S": "iq2",
    "IQ1_S": "iq1",
    "IQ1_M": "iq1",
    "TQ1_0": "ternary",
    "TQ2_0": "ternary",
}

# types llama.cpp refuses to quantize without an importance matrix (ggml_quantize_requires_imatrix)
_REQUIRES_IMATRIX = {"IQ2_XXS", "IQ2_XS", "IQ1_S"}


@dataclass(frozen=True)
class QuantType:
    """One GGUF tensor type: its enum, block geometry and implementing module."""

    ggml: GGMLQuantizationType
    block_size: int  # elements per block
    type_size: int  # bytes per block
    family: str | None  # module under quantkit.quants that implements it (None: not planned)

    @property
    def name(self) -> str:
        return self.ggml.name

    @property
    def requires_imatrix(self) -> bool:
        return self.name in _REQUIRES_IMATRIX

    @property
    def bits_per_weight(self) -> float:
        return 8.0 * self.type_size / self.block_size

    def row_bytes(self, n_per_row: int) -> int:
        """Bytes one row of ``n_per_row`` elements takes; the row must be whole blocks."""
        if n_per_row % self.block_size:
            fits = [t.name for t in _REGISTRY.values() if _implemented(t.family) and n_per_row % t.block_size == 0]
            raise ShapeError(
                f"row length {n_per_row} is not a multiple of {self.name}'s block size {self.block_size}; "
                f"types that fit: {', '.join(fits) or 'none'}"
            )
        return n_per_row // self.block_size * self.type_size

    def nbytes(self, shape) -> int:
        """Bytes a tensor of this type and numpy ``shape`` (last axis = row) takes."""
        n_per_row = int(shape[-1]) if len(shape) else 1
        nrows = 1
        for dim in shape[:-1]:
            nrows *= int(dim)
        return nrows * self.row_bytes(n_per_row)

    def kernels(self):
        """The module implementing this type (imported on first use: it compiles Numba code)."""
        if not _implemented(self.family):
            raise UnsupportedTypeError(
                f"quantkit cannot quantize or dequantize {self.name} yet; supported: {', '.join(supported_names())}"
            )
        return importlib.import_module(f"quantkit.quants.{self.family}")


_REGISTRY = {
    t: QuantType(t, *GGML_QUANT_SIZES[t], _FAMILY.get(t.name)) for t in GGMLQuantizationType if t in GGML_QUANT_SIZES
}


@functools.cache
def _implemented(family: str | None) -> bool:
    return family is not None and importlib.util.find_spec(f"quantkit.quants.{family}") is not None


def supported_names() -> list[str]:
    """Names of the types quantkit can quantize and dequantize."""
    return [t.name for t in _REGISTRY.values() if _implemented(t.family)]


def known_type(value) -> QuantType:
    """Look up a type known to the GGUF format by name, enum or number; raise if unknown."""
    if isinstance(value, QuantType):
        return value
    if isinstance(value, bool) or not isinstance(value, (str, numbers.Integral)):
        raise UnsupportedTypeError(f"a tensor type is a name like 'Q4_K' or an integer id, not {type(value).__name__} "
                                   f"{value!r}")
    try:
        if isinstance(value, str):
            ggml = GGMLQuantizationType[value.strip().upper()]
        else:
            ggml = GGMLQuantizationType(int(value))
        return _REGISTRY[ggml]
    except (KeyError, ValueError, TypeError):
        raise UnsupportedTypeError(
            f"unknown tensor type {value!r}; supported: {', '.join(supported_names())}"
        ) from None


def quant_type(value) -> QuantType:
    """Look up a type quantkit can quantize and dequantize; raise a clear error otherwise."""
    qt = known_type(value)
    if not _implemented(qt.family):
        qt.kernels()  # raises UnsupportedTypeError with the list of supported types
    return qt
