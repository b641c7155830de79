"""``quantize`` / ``dequantize``: arrays to GGUF block bytes and back.

The functions here validate input (dtype, row length, NaN/Inf, imatrix) and hand contiguous
float32 rows to the Numba kernels of the type's family module (``floats``, ``legacy``, ...),
which assume valid input.
"""

from __future__ import annotations

import os
import sys
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Union

import numpy as np
from gguf import GGMLQuantizationType
from numpy.typing import ArrayLike

from ..errors import ImatrixError, NonFiniteError, QuantkitError, ShapeError
from ..types import QuantType, known_type, quant_type
from .gptq import check_hessian, quantize_rows_gptq

# types ``quantize(..., optimize=True)`` searches (quants/optimize.py); others keep llama.cpp's bytes
OPTIMIZED_TYPES = frozenset({"Q8_0", "Q4_0", "Q4_1", "Q5_0", "Q5_1", "Q2_K", "Q3_K", "Q4_K", "Q5_K", "Q6_K",
                             "IQ4_NL", "IQ4_XS", "IQ3_XXS", "IQ3_S", "IQ2_XXS", "IQ2_XS", "IQ2_S", "IQ1_S", "IQ1_M"})

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
    if isinstance(x, QuantizedTensor):  # values stored in a GGUF type (e.g. a GGUF tensor's rows)
        return dequantize(x)
    if type(x).__module__.startswith("torch"):
        import torch  # deferred: optional; only reached when the caller passed a torch tensor

        if x.dtype not in (torch.float64, torch.float32, torch.float16, torch.bfloat16):
            raise QuantkitError(f"{what}: dtype {x.dtype} is not float64, float32, float16 or bfloat16")
        return np.ascontiguousarray(x.detach().to("cpu", torch.float32).numpy())
    x = np.asarray(x)
    if x.dtype not in (np.float64, np.float32, np.float16) and x.dtype.name != "bfloat16":
        raise QuantkitError(f"{what}: dtype {x.dtype} is not float64, float32, float16 or bfloat16")
    if x.itemsize == 2 and x.size:  # F16 / BF16: one parallel pass (numpy's casts take two to four times as long)
        from .floats import widen  # deferred: a Numba kernel module (see numba_threads)

        halves = np.ascontiguousarray(x).view(np.uint16)
        fmt = "BF16" if x.dtype.name == "bfloat16" else "F16"
        return widen(halves.reshape(-1, halves.shape[-1] if halves.ndim else 1), fmt).reshape(x.shape)
    return np.ascontiguousarray(x, dtype=np.float32)


def _bf16_bits(x) -> np.ndarray | None:
    """The uint16 bits, in the array's shape, of a numpy bfloat16 array (ml_dtypes' dtype) or of a
    :class:`QuantizedTensor` stored as BF16; else None."""
    if isinstance(x, QuantizedTensor):
        if x.qtype != GGMLQuantizationType.BF16 or not x.data.size or not len(x.shape):
            return None
        return np.ascontiguousarray(x.data).view(np.uint16).reshape(x.shape)
    if isinstance(x, np.ndarray) and x.dtype.name == "bfloat16" and x.size and x.ndim:
        return np.ascontiguousarray(x).view(np.uint16)
    return None


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


def prepare_kernel_process() -> None:
    """Set up a process that runs kernels and nothing else (the CLI's convert, quantize and lora), before
    any kernel loads.

    - OpenMP threads (Numba's threading layer) sleep instead of spinning when they wait: a spinning
      thread takes the core the write-behind thread or a slower sibling needs (measured on 2 cores
      under load: half the wall time). Only when the user has not set OMP_WAIT_POLICY.
    - Numba's CPU target imports scipy.linalg at start-up to see whether BLAS is there for np.dot
      (0.2-0.5 s); no quantkit kernel calls BLAS, so that import is made to fail during that check and
      scipy stays importable afterwards.
    """
    os.environ.setdefault("OMP_WAIT_POLICY", "passive")
    if "numba.np.arraymath" in sys.modules or "scipy.linalg" in sys.modules:
        return
    sys.modules["scipy.linalg.cython_blas"] = None  # an import of it now raises ImportError
    try:
        import numba.np.arraymath  # noqa: F401  (deferred: numba loads only in kernel processes; see above)
    finally:
        del sys.modules["scipy.linalg.cython_blas"]


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
    """Quantize ``x`` (numpy array, torch tensor or a :class:`QuantizedTensor` to requantize; rows along the last
    axis) to GGUF type ``qtype``.

    ``imatrix``: one importance weight per column (llama.cpp's importance matrix), or None.
    Returns a :class:`QuantizedTensor` whose ``data`` equals llama.cpp's ``ggml_quantize_chunk``.
    For F32 the data is a read-only view of ``x`` when ``x`` already is C-contiguous float32 (as
    ``np.asarray`` would be), not a copy.
    ``optimize``: search harder within the same format (docs/optimize.md): same type and size, each
    block's weighted error at most llama.cpp's; types without such a search keep llama.cpp's bytes.
    ``hessian`` (needs ``optimize=True``): the (n_per_row, n_per_row) second moments of the layer's
    inputs (sum or mean of x x^T); the rows are then quantized with error feedback
    (:mod:`quantkit.quants.gptq`; the importance weights come from it, ``imatrix`` is not used),
    same type and size, not llama.cpp's bytes.
    """
    qt = quant_type(qtype)
    # BF16 rows without an imatrix (and without optimize, whose search reads float32 rows) go straight to
    # a kernel that widens each row as it quantizes it, where the type's family has one
    # (quantize_<type>_bf16); others are widened here first
    halves = _bf16_bits(x) if imatrix is None and not optimize else None
    fused = getattr(qt.kernels(), f"quantize_{qt.name.lower()}_bf16", None) if halves is not None else None
    values = halves if fused is not None else _as_float32(x, name)
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
        if fused is not None:
            data, nonfinite = fused(rows)
            if nonfinite.any():
                check_finite(QuantizedTensor(GGMLQuantizationType.BF16, rows.shape, rows.view(np.uint8)), name)
        elif getattr(qt.kernels(), "CHECKS_FINITE", False):
            data, nonfinite = qt.quantize_rows(rows, weights)
            if nonfinite.any():
                check_finite(rows, name)
        else:
            check_finite(rows, name)
            data = qt.quantize_rows(rows, weights)
        if optimize and qt.name in OPTIMIZED_TYPES:
            from .optimize import optimize_rows  # deferred: a Numba kernel module (see numba_threads)

            data = optimize_rows(qt, rows, weights, data)
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
