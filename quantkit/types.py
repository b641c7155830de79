"""The type table: one trait record per GGUF tensor type quantkit knows.

Geometry (elements and bytes per block) comes from ``gguf.GGML_QUANT_SIZES`` and the ids from
``gguf.GGMLQuantizationType``, whose values equal llama.cpp's ``ggml_type``; :data:`GGMLType` is that
enum plus the types ggml has and the ``gguf`` package does not know yet (``_NOT_IN_GGUF``, with
ggml's id and geometry). Each type quantkit
implements has a row in ``TRAITS``: its family module under ``quantkit.quants``, which defines
``quantize_<name>(rows, imatrix)`` and ``dequantize_<name>(data, n_per_row)`` for it (as
ggml-quants.c has ``quantize_q4_0`` / ``dequantize_row_q4_0``), whether llama.cpp requires an
importance matrix for it, and the type llama-quantize falls back to when a row does not split into
its blocks. Adding a type is one family module (or two functions in one) plus one row here; see
docs/design.md. This module imports neither numba nor torch.
"""

from __future__ import annotations

import importlib
import numbers
from dataclasses import dataclass
from enum import IntEnum
from types import ModuleType
from typing import Callable

from gguf import GGML_QUANT_SIZES, GGMLQuantizationType

from .errors import ShapeError, UnsupportedTypeError

# ggml types the gguf package (0.19) lacks: name -> (ggml_type id, elements per block, bytes per block)
_NOT_IN_GGUF = {"Q2_0": (42, 64, 18)}

# gguf.GGMLQuantizationType plus _NOT_IN_GGUF; an IntEnum, so its members equal gguf's by value
GGMLType = IntEnum("GGMLType", {**{t.name: t.value for t in GGMLQuantizationType},
                                **{name: geometry[0] for name, geometry in _NOT_IN_GGUF.items()
                                   if name not in GGMLQuantizationType.__members__}})
_SIZES = {**{GGMLType(int(t)): size for t, size in GGML_QUANT_SIZES.items()},
          **{GGMLType[name]: geometry[1:] for name, geometry in _NOT_IN_GGUF.items()}}

QK_K = _SIZES[GGMLType.Q4_K][0]  # 256: the super-block of the k-quant and IQ types

# name: (family module, llama.cpp requires an imatrix (ggml_quantize_requires_imatrix),
#        fallback when rows do not split into blocks (llama-quant.cpp's tensor_type_fallback))
TRAITS: dict[str, tuple[str, bool, str | None]] = {
    "F32": ("floats", False, None),
    "F16": ("floats", False, None),
    "BF16": ("floats", False, None),
    "Q8_0": ("legacy", False, None),
    "Q4_0": ("legacy", False, None),
    "Q4_1": ("legacy", False, None),
    "Q5_0": ("legacy", False, None),
    "Q5_1": ("legacy", False, None),
    "Q2_K": ("kquants", False, "Q4_0"),
    "Q3_K": ("kquants", False, "Q4_0"),
    "Q4_K": ("kquants", False, "Q5_0"),
    "Q5_K": ("kquants", False, "Q5_1"),
    "Q6_K": ("kquants", False, "Q8_0"),
    "IQ4_NL": ("iq4", False, None),
    "IQ4_XS": ("iq4", False, "IQ4_NL"),
    "IQ3_XXS": ("iq3", False, "IQ4_NL"),
    "IQ3_S": ("iq3", False, "IQ4_NL"),
    "IQ2_XXS": ("iq2", True, "IQ4_NL"),
    "IQ2_XS": ("iq2", True, "IQ4_NL"),
    "IQ2_S": ("iq2", False, "IQ4_NL"),
    "IQ1_S": ("iq1", True, "IQ4_NL"),
    "IQ1_M": ("iq1", False, "IQ4_NL"),
    "TQ1_0": ("ternary", False, "Q4_0"),
    "TQ2_0": ("ternary", False, "Q4_0"),
    "MXFP4": ("fp4", False, None),
    "NVFP4": ("fp4", False, None),
    "Q1_0": ("lowbit", False, None),
    "Q2_0": ("lowbit", False, "Q4_0"),
}


@dataclass(frozen=True)
class QuantType:
    """One GGUF tensor type: its id, block geometry and (when quantkit implements it) its traits."""

    ggml: GGMLType
    block_size: int  # elements per block
    type_size: int  # bytes per block
    family: str | None = None  # module under quantkit.quants implementing it; None: not implemented
    requires_imatrix: bool = False
    fallback: str | None = None  # type name used instead when a row is not whole blocks (None: none defined)

    @property
    def name(self) -> str:
        return self.ggml.name

    @property
    def implemented(self) -> bool:
        return self.family is not None

    @property
    def bits_per_weight(self) -> float:
        return 8.0 * self.type_size / self.block_size

    def row_bytes(self, n_per_row: int) -> int:
        """Bytes one row of ``n_per_row`` elements takes; the row must be whole blocks."""
        if n_per_row % self.block_size:
            fits = [t.name for t in _TABLE.values() if t.implemented and n_per_row % t.block_size == 0]
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

    def kernels(self) -> ModuleType:
        """The family module (imported on first use: it compiles or loads Numba code)."""
        return importlib.import_module(f"quantkit.quants.{quant_type(self).family}")

    @property
    def quantize_rows(self) -> Callable:
        """``quantize_<name>(rows, imatrix)``: float32 (nrows, n_per_row) -> uint8 (nrows, row bytes)."""
        return getattr(self.kernels(), f"quantize_{self.name.lower()}")

    @property
    def dequantize_rows(self) -> Callable:
        """``dequantize_<name>(data, n_per_row)``: uint8 (nrows, row bytes) -> float32 (nrows, n_per_row)."""
        return getattr(self.kernels(), f"dequantize_{self.name.lower()}")


def _entry(ggml: GGMLType) -> QuantType:
    family, requires_imatrix, fallback = TRAITS.get(ggml.name, (None, False, None))
    return QuantType(ggml, *_SIZES[ggml], family, requires_imatrix, fallback)


_TABLE = {t: _entry(t) for t in GGMLType if t in _SIZES}


def supported_names() -> list[str]:
    """Names of the types quantkit can quantize and dequantize."""
    return [t.name for t in _TABLE.values() if t.implemented]


def known_type(value) -> QuantType:
    """Look up a type known to the GGUF format by name, enum or number; raise if unknown."""
    if isinstance(value, QuantType):
        return value
    if isinstance(value, bool) or not isinstance(value, (str, numbers.Integral)):
        raise UnsupportedTypeError(f"a tensor type is a name like 'Q4_K' or an integer id, not {type(value).__name__} "
                                   f"{value!r}")
    try:
        if isinstance(value, str):
            ggml = GGMLType[value.strip().upper()]
        else:
            ggml = GGMLType(int(value))
        return _TABLE[ggml]
    except (KeyError, ValueError, TypeError):
        raise UnsupportedTypeError(
            f"unknown tensor type {value!r}; supported: {', '.join(supported_names())}"
        ) from None


def quant_type(value) -> QuantType:
    """Look up a type quantkit can quantize and dequantize; raise a clear error otherwise."""
    qt = known_type(value)
    if not qt.implemented:
        raise UnsupportedTypeError(
            f"quantkit cannot quantize or dequantize {qt.name} yet; supported: {', '.join(supported_names())}"
        )
    return qt
