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
from ..types import QuantType, known_type, quant_type
from .gptq import check_hessian, quantize_rows_gptq

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
    """A C-contiguous float32 numpy copy/view of a numpy array or torch tensor (f64, f32, f16, bf16).

    float64 is rounded to the nearest float32, as llama.cpp's converter casts it before quantizing.
    """
    if type(x).__module__.startswith("torch"):
        import torch  # deferred: optional; only reached when the caller passed a torch tensor

        if x.dtype not in (torch.float64, torch.float32, torch.float16, torch.bfloat16):
            raise QuantkitError(f"{what}: dtype {x.dtype} is not float64, float32, float16 or bfloat16")
        return np.ascontiguousarray(x.detach().to("cpu", torch.float32).numpy())
    x = np.asarray(x)
    if x.dtype not in (np.float64, np.float32, np.float16) and x.dtype.name != "bfloat16":
        raise QuantkitError(f"{what}: dtype {x.dtype} is not float64, float32, float16 or bfloat16")
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


def check_finite(q, name: str = "tensor") -> None:
    """NonFiniteError, as :func:`quantize` raises it, when a float32 array, or a tensor stored as F32,
    F16 or BF16 (an object with qtype, shape, data), holds NaN or Inf; other stored types are not checked."""
    from .checks import EXPONENT_BITS, first_nonfinite  # deferred: a Numba kernel module (see numba_threads)

    if isinstance(q, np.ndarray):
        fmt, shape, data = "F32", q.shape, np.ascontiguousarray(q, dtype=np.float32)
    else:
        fmt, shape, data = known_type(q.qtype).name, q.shape, np.asarray(q.data)
    if fmt not in EXPONENT_BITS or data.size == 0:
        return
    n_per_row = int(shape[-1]) if len(shape) else 1
    rows = data.view(EXPONENT_BITS[fmt].dtype).reshape(-1, n_per_row)
    row, col = first_nonfinite(rows, fmt)
    if row >= 0:
        value = dequantize(QuantizedTensor(GGMLQuantizationType[fmt], (1, 1), rows[row, col : col + 1].view(np.uint8)))
        raise NonFiniteError(f"{name}: non-finite value {value[0, 0]} at row {row}, column {col}")


def quantize(x: ArrayLike, qtype: TypeSpec, imatrix: ArrayLike | None = None, threads: int | None = None,
             name: str = "tensor", *, optimize: bool = False, hessian: ArrayLike | None = None) -> QuantizedTensor:
    """Quantize ``x`` (numpy array or torch tensor, rows along the last axis) to GGUF type ``qtype``.

    ``imatrix``: one importance weight per column (llama.cpp's importance matrix), or None.
    Returns a :class:`QuantizedTensor` whose ``data`` equals llama.cpp's ``ggml_quantize_chunk``.
    ``hessian`` (needs ``optimize=True``): the (n_per_row, n_per_row) second moments of the layer's
    inputs (sum or mean of x x^T); the rows are then quantized with error feedback
    (:mod:`quantkit.quants.gptq`; the importance weights come from it, ``imatrix`` is not used),
    same type and size, not llama.cpp's bytes.
    """
    qt = quant_type(qtype)
    values = _as_float32(x, name)
    shape = tuple(int(d) for d in values.shape) or (1,)
    n_per_row = shape[-1]
    try:
        qt.row_bytes(n_per_row)
    except ShapeError as e:
        raise ShapeError(f"{name}: {e}") from None
    weights = None
    if imatrix is not None:
        weights = _as_float32(imatrix, f"{name} imatrix").reshape(-1)
        if weights.size != n_per_row:
            raise ImatrixError(f"{name}: imatrix has {weights.size} values, the row has {n_per_row} columns")
        if not np.all(np.isfinite(weights)) or np.any(weights < 0):
            raise ImatrixError(f"{name}: imatrix values must be finite and >= 0")
    if hessian is not None and not optimize:
        raise QuantkitError(f"{name}: hessian= is used only with optimize=True (error feedback is opt-in)")
    if qt.requires_imatrix and weights is None and hessian is None:
        raise ImatrixError(f"{name}: {qt.name} needs an importance matrix; pass imatrix= (quantkit imatrix makes one)")
    if values.size == 0:  # a zero dimension: no blocks, as ggml_quantize_chunk writes none
        return QuantizedTensor(qt.ggml, shape, np.empty(0, dtype=np.uint8))
    rows = values.reshape(-1, n_per_row)
    if hessian is not None and qt.family != "floats":  # F32/F16/BF16 round per value: nothing to feed back
        h = check_hessian(hessian, n_per_row, name)
        check_finite(rows, name)
        with numba_threads(threads):
            data = quantize_rows_gptq(rows, qt, h)
        return QuantizedTensor(qt.ggml, shape, data.reshape(-1))
    with numba_threads(threads):
        if getattr(qt.kernels(), "CHECKS_FINITE", False):
            data, nonfinite = qt.quantize_rows(rows, weights)
            if nonfinite.any():
                check_finite(rows, name)
        else:
            check_finite(rows, name)
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
    if nbytes == 0:  # a zero dimension
        return np.zeros(shape, dtype=np.float32)
    rows = data.reshape(-1, qt.row_bytes(n_per_row))
    with numba_threads(threads):
        values = qt.dequantize_rows(rows, n_per_row)
    return values.reshape(shape)
