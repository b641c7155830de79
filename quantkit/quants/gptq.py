"""Error-feedback quantization (GPTQ/OBQ) inside GGUF block formats.

Given the second moments ``H = sum x x^T`` of a linear layer's inputs (one (n, n) matrix over the
row's columns), the output error of a quantized row ``q`` of ``w`` is ``(w - q) H (w - q)^T``.
GPTQ (Frantar et al., 2022) quantizes the columns in order and, after each step, moves the rounding
error onto the columns not yet quantized so that the remaining weights compensate it. Here a step is
one *block* of the type (32 values for the legacy types, the 256-value super-block for k-quants and
IQ types): the block is quantized whole by the type's own quantizer (its scales chosen as llama.cpp
chooses them with an importance matrix, here ``diag(H)``), dequantized, and its error ``e`` is pushed
forward with the block OBS update ``W[:, rest] -= e U_gg^-1 U_g,rest``, where ``U`` is the upper
Cholesky factor of ``H^-1`` (so ``U_FF^T U_FF`` is the inverse Hessian of the columns ``F`` not yet
quantized). Rows are independent, so rows are processed in chunks and the result does not depend on
row order (llama.cpp's Q/K row permutation commutes with it). The bytes are the type's own blocks,
in order: same type, same size, any llama.cpp loads them.
"""

from __future__ import annotations

import hashlib
from collections import OrderedDict

import numpy as np

from ..errors import HessianError
from ..types import QuantType

DAMPING = 0.01  # added to H's diagonal, as a fraction of its mean diagonal (GPTQ's percdamp)
ROW_CHUNK = 4096  # rows updated together (float64 working copy: ROW_CHUNK * n_per_row * 8 bytes)


def check_hessian(hessian, n_per_row: int, name: str) -> np.ndarray:
    """``hessian`` as a float64 (n_per_row, n_per_row) symmetric matrix; HessianError when it is not one."""
    h = np.asarray(hessian, dtype=np.float64)
    if h.shape != (n_per_row, n_per_row):
        raise HessianError(f"{name}: hessian has shape {h.shape}, the row has {n_per_row} columns "
                           f"(needs ({n_per_row}, {n_per_row}))")
    if not np.all(np.isfinite(h)):
        raise HessianError(f"{name}: hessian has non-finite values")
    diag = np.diag(h)
    if np.any(diag < 0) or not np.any(diag > 0):
        raise HessianError(f"{name}: hessian diagonal must be >= 0 and not all zero (a sum of x x^T)")
    return (h + h.T) / 2


_FACTORS: OrderedDict = OrderedDict()  # (sha256 of a hessian, block size) -> block_factors(...)
FACTOR_CACHE = 8  # kept: q, k and v (gate and up) share a matrix, and a converter may ask twice


def block_factors(h: np.ndarray, group: int) -> tuple[np.ndarray, list]:
    """``U`` (:func:`inverse_cholesky`) and ``U_gg^-1`` per block column of ``group`` columns;
    remembered for the last FACTOR_CACHE distinct (matrix, block size) pairs."""
    key = (hashlib.sha256(np.ascontiguousarray(h).view(np.uint8)).hexdigest(), h.shape, group)
    if key in _FACTORS:
        _FACTORS.move_to_end(key)
        return _FACTORS[key]
    u = inverse_cholesky(h)
    inverses = [np.linalg.inv(u[start:start + group, start:start + group]) for start in range(0, len(h), group)]
    _FACTORS[key] = u, inverses
    while len(_FACTORS) > FACTOR_CACHE:
        _FACTORS.popitem(last=False)
    return u, inverses


def inverse_cholesky(h: np.ndarray) -> np.ndarray:
    """Upper-triangular ``U`` with ``U^T U = (H + damping)^-1``, dead columns (zero diagonal) made independent."""
    h = h.copy()
    dead = np.diag(h) <= 0
    h[dead, :] = 0
    h[:, dead] = 0
    mean_diag = float(np.mean(np.diag(h)[~dead]))
    h[np.diag_indices_from(h)] += DAMPING * mean_diag
    h[dead, dead] = mean_diag
    try:
        lower = np.linalg.cholesky(h)
    except np.linalg.LinAlgError:
        raise HessianError("hessian is not positive definite after damping") from None
    lower_inv = np.linalg.inv(lower)
    h_inv = lower_inv.T @ lower_inv
    return np.linalg.cholesky(h_inv).T


def quantize_rows_gptq(rows: np.ndarray, qt: QuantType, hessian: np.ndarray) -> np.ndarray:
    """float32 (nrows, n_per_row) rows -> uint8 (nrows, row bytes) of ``qt``, quantized with error feedback.

    ``hessian``: checked float64 (n_per_row, n_per_row) (see :func:`check_hessian`).
    """
    nrows, n = rows.shape
    group = qt.block_size
    u, inverses = block_factors(hessian, group)
    diag = np.diag(hessian)  # importance weights: activation-aware scales, as an imatrix gives them (damped: > 0)
    importance = (diag + DAMPING * diag.mean()).astype(np.float32)
    out = np.empty((nrows, qt.row_bytes(n)), dtype=np.uint8)
    block_bytes = qt.row_bytes(group)
    checks_finite = getattr(qt.kernels(), "CHECKS_FINITE", False)
    for first in range(0, nrows, ROW_CHUNK):
        w = rows[first:first + ROW_CHUNK].astype(np.float64)
        for i, u_gg_inv in enumerate(inverses):
            start, stop = i * group, (i + 1) * group
            block = np.ascontiguousarray(w[:, start:stop], dtype=np.float32)
            data = qt.quantize_rows(block, importance[start:stop])
            if checks_finite:  # kernels that also return a per-row non-finite flag (inputs were checked)
                data = data[0]
            out[first:first + len(w), i * block_bytes:(i + 1) * block_bytes] = data
            if stop < n:
                error = (w[:, start:stop] - qt.dequantize_rows(data, group)) @ u_gg_inv
                w[:, stop:] -= error @ u[start:stop, stop:]
    return out
