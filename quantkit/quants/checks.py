"""Input checks that must be fast enough to run before every quantization."""

import numba
import numpy as np


@numba.njit(parallel=True, cache=True)
def _nonfinite_column_per_row(rows):
    nrows, n = rows.shape
    bad_col = np.full(nrows, -1, dtype=np.int64)
    for r in numba.prange(nrows):
        acc = np.float32(0.0)
        for j in range(n):
            acc += rows[r, j] * np.float32(0.0)  # NaN as soon as any value is NaN or +-Inf
        if acc != acc:
            for j in range(n):
                if not np.isfinite(rows[r, j]):
                    bad_col[r] = j
                    break
    return bad_col


def nonfinite_rows(rows: np.ndarray) -> np.ndarray:
    """Per row of a 2-D float32 array: True where it holds a NaN or Inf."""
    return _nonfinite_column_per_row(rows) >= 0


def first_nonfinite(rows: np.ndarray) -> tuple[int, int]:
    """(row, column) of the first NaN/Inf in a 2-D float32 array, or (-1, -1)."""
    bad_col = _nonfinite_column_per_row(rows)
    bad_rows = np.flatnonzero(bad_col >= 0)
    if bad_rows.size == 0:
        return -1, -1
    return int(bad_rows[0]), int(bad_col[bad_rows[0]])
