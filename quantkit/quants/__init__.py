"""``quantize`` / ``dequantize``: arrays to GGUF block bytes and back.

The functions here validate input (dtype, row length, NaN/Inf, imatrix) and hand contiguous
float32 rows to the Numba kernels of the type's family module (``floats``, ``legacy``, ...),
which assume valid input.
"""

from __future__ import annotations

from contextlib import contextmanager
from dataclasses import dataclass
from typing import Union

import numpy as np
from gguf import GGMLQuantizationType
from numpy.typing import ArrayLike

from ..errors import ImatrixError, NonFiniteError, QuantkitError, ShapeError
from ..types import QuantType, quant_type

TypeSpec = Union[str, int, GGMLQuantizationType, QuantType]  # a type by name ("Q4_K"), ggml id or enum


@dataclass(frozen=True)
class QuantizedTensor:
    """A tensor in GGUF storage form.

    ``data`` holds exactly the bytes GGUF stores for it (rows of blocks, row-major); ``shape`` is in
    numpy order, its last axis being the row (GGUF's ne[0]).
    """

    qtype: GGMLQuantizationType
    shape: tuple
    data: np.ndarray

    @property
    def nbytes(self) -> int:
        return int(self.data.nbytes)

    def dequantize(self, threads: int | None = None) -> np.ndarray:
        return dequantize(self, threads=threads)


def _as_float32(x, what: str) -> np.ndarray:
    """A C-contiguous float32 numpy copy/view of a numpy array or torch tensor (f32, f16, bf16)."""
    if type(x).__module__.startswith("torch"):
        import torch  # deferred: optional; only reached when the caller passed a torch tensor

        if x.dtype not in (torch.float32, torch.float16, torch.bfloat16):
            raise QuantkitError(f"{what}: dtype {x.dtype} is not float32, float16 or bfloat16")
        return np.ascontiguousarray(x.detach().to("cpu", torch.float32).numpy())
    x = np.asarray(x)
    if x.dtype not in (np.float32, np.float16) and x.dtype.name != "bfloat16":
        raise QuantkitError(f"{what}: dtype {x.dtype} is not float32, float16 or bfloat16")
    return np.ascontiguousarray(x, dtype=np.float32)


@contextmanager
def numba_threads(threads: int | None):
    """Run the enclosed kernels on ``threads`` threads (all cores when None)."""
    import numba  # deferred: numba loads when kernels run, not when quantkit is imported (CLI start-up)

    if threads is None:
        yield
        return
    if threads < 1:
        raise QuantkitError(f"threads must be >= 1, got {threads}")
    previous = numba.get_num_threads()
    numba.set_num_threads(min(int(threads), numba.config.NUMBA_NUM_THREADS))
    try:
        yield
    finally:
        numba.set_num_threads(previous)


def _check_finite(rows: np.ndarray, what: str) -> None:
    from .checks import first_nonfinite  # deferred: a Numba kernel module (see numba_threads)

    row, col = first_nonfinite(rows)
    if row >= 0:
        raise NonFiniteError(f"{what}: non-finite value {rows[row, col]} at row {row}, column {col}")


def quantize(x: ArrayLike, qtype: TypeSpec, imatrix: ArrayLike | None = None, threads: int | None = None,
             name: str = "tensor") -> QuantizedTensor:
    """Quantize ``x`` (numpy array or torch tensor, rows along the last axis) to GGUF type ``qtype``.

    ``imatrix``: one importance weight per column (llama.cpp's importance matrix), or None.
    Returns a :class:`QuantizedTensor` whose ``data`` equals llama.cpp's ``ggml_quantize_chunk``.
    """
    qt = quant_type(qtype)
    values = _as_float32(x, name)
    shape = tuple(int(d) for d in values.shape) or (1,)
    n_per_row = shape[-1]
    if n_per_row == 0 or values.size == 0:
        raise ShapeError(f"{name}: empty tensor of shape {shape}")
    try:
        qt.row_bytes(n_per_row)
    except ShapeError as e:
        raise ShapeError(f"{name}: {e}") from None
    rows = values.reshape(-1, n_per_row)
    weights = None
    if imatrix is not None:
        weights = _as_float32(imatrix, f"{name} imatrix").reshape(-1)
        if weights.size != n_per_row:
            raise ImatrixError(f"{name}: imatrix has {weights.size} values, the row has {n_per_row} columns")
        if not np.all(np.isfinite(weights)) or np.any(weights < 0):
            raise ImatrixError(f"{name}: imatrix values must be finite and >= 0")
    if qt.requires_imatrix and weights is None:
        raise ImatrixError(f"{name}: {qt.name} needs an importance matrix; pass imatrix= (quantkit imatrix makes one)")
    with numba_threads(threads):
        if getattr(qt.kernels(), "CHECKS_FINITE", False):
            data, nonfinite = qt.quantize_rows(rows, weights)
            if nonfinite.any():
                _check_finite(rows, name)
        else:
            _check_finite(rows, name)
            data = qt.quantize_rows(rows, weights)
    return QuantizedTensor(qt.ggml, shape, data.reshape(-1))


def dequantize(q: QuantizedTensor, threads: int | None = None) -> np.ndarray:
    """float32 values of a :class:`QuantizedTensor` (or any object with qtype, shape, data)."""
    qt = quant_type(q.qtype)
    shape = tuple(int(d) for d in q.shape) or (1,)
    n_per_row = shape[-1]
    nbytes = qt.nbytes(shape)
    data = np.asarray(q.data).view(np.uint8).reshape(-1)
    if data.size != nbytes:
        raise ShapeError(f"{qt.name} tensor of shape {shape} needs {nbytes} bytes, got {data.size}")
    rows = data.reshape(-1, qt.row_bytes(n_per_row))
    with numba_threads(threads):
        values = qt.dequantize_rows(rows, n_per_row)
    return values.reshape(shape)
