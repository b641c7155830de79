"""Input checks that must be fast enough to run before every quantization."""

import numba
import numpy as np

# the exponent bits of each float format as stored: all set means NaN or Inf
EXPONENT_BITS = {"F32": np.uint32(0x7F800000), "F16": np.uint16(0x7C00), "BF16": np.uint16(0x7F80)}


@numba.njit(parallel=True, cache=True)
def _nonfinite_column_per_row(bits, exponent):
    """Per row of float bit patterns: the first column holding NaN/Inf (all ``exponent`` bits set), or -1."""
    nrows, n = bits.shape
    bad_col = np.full(nrows, -1, dtype=np.int64)
    for r in numba.prange(nrows):
        special = np.uint32(0)
        for j in range(n):  # an integer or-reduction: vectorizes
            special |= np.uint32((bits[r, j] & exponent) == exponent)
        if special:
            for j in range(n):
                if (bits[r, j] & exponent) == exponent:
                    bad_col[r] = j
                    break
    return bad_col


def nonfinite_rows(rows: np.ndarray) -> np.ndarray:
    """Per row of a 2-D float32 array: True where it holds a NaN or Inf."""
    return _nonfinite_column_per_row(rows.view(np.uint32), EXPONENT_BITS["F32"]) >= 0


def first_nonfinite(rows: np.ndarray, fmt: str = "F32") -> tuple[int, int]:
    """(row, column) of the first NaN/Inf in 2-D rows of ``fmt`` (F32, F16, BF16: values or their bits), or (-1, -1)."""
    exponent = EXPONENT_BITS[fmt]
    bad_col = _nonfinite_column_per_row(rows.view(exponent.dtype), exponent)
    bad_rows = np.flatnonzero(bad_col >= 0)
    if bad_rows.size == 0:
        return -1, -1
    return int(bad_rows[0]), int(bad_col[bad_rows[0]])
