"""Input checks that must be fast enough to run before every quantization."""

import numba
import numpy as np


@numba.njit(parallel=True, cache=True)
def _nonfinite_column_per_row(bits):
    """Per row of float32 bit patterns: the first column holding NaN/Inf (all exponent bits set), or -1."""
    nrows, n = bits.shape
    bad_col = np.full(nrows, -1, dtype=np.int64)
    for r in numba.prange(nrows):
        special = np.uint32(0)
        for j in range(n):  # an integer or-reduction: vectorizes
            special |= np.uint32((bits[r, j] & np.uint32(0x7F800000)) == np.uint32(0x7F800000))
        if special:
            for j in range(n):
                if (bits[r, j] & np.uint32(0x7F800000)) == np.uint32(0x7F800000):
                    bad_col[r] = j
                    break
    return bad_col


def nonfinite_rows(rows: np.ndarray) -> np.ndarray:
    """Per row of a 2-D float32 array: True where it holds a NaN or Inf."""
    return _nonfinite_column_per_row(rows.view(np.uint32)) >= 0


def first_nonfinite(rows: np.ndarray) -> tuple[int, int]:
    """(row, column) of the first NaN/Inf in a 2-D float32 array, or (-1, -1)."""
    bad_col = _nonfinite_column_per_row(rows.view(np.uint32))
    bad_rows = np.flatnonzero(bad_col >= 0)
    if bad_rows.size == 0:
        return -1, -1
    return int(bad_rows[0]), int(bad_col[bad_rows[0]])
