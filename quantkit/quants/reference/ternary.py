"""Plain references of TQ1_0 and TQ2_0 (``quantize_row_tq*_0_ref``; an imatrix is ignored, as in C).

d = the block's max |x|; each weight becomes lroundf(x/d) + 1 in {0, 1, 2}. Layouts: ``quants/ternary.py``.
"""

import numpy as np

from .common import F0, F1, QK_K, plain, put_fp16, quantize_blocks, roundf


@plain
def _trits(xs, y8, d_pos):
    """Writes d = max|x| at ``d_pos``; returns t[j] = lroundf(x[j] / d) + 1."""
    t = np.empty(QK_K, np.int32)
    amax = F0
    for v in xs:
        amax = max(amax, np.abs(v))
    put_fp16(y8, d_pos, amax)
    inv = F1 / amax if amax != F0 else F0
    for j in range(QK_K):
        t[j] = np.int32(roundf(xs[j] * inv)) + 1
    return t


@plain
def _tq1_0_block(xs, qw, y8):
    """TQ1_0 (54 bytes): qs[48] (5 trits a byte) | qh[4] (4 trits a byte) | d."""
    t = _trits(xs, y8, 52)
    for start, width, first in ((0, 32, 0), (160, 16, 32)):  # qs[0:32] hold 0..159, qs[32:48] 160..239
        for m in range(width):
            q = 0
            for n in range(5):
                q = q * 3 + t[start + m + n * width]
            y8[first + m] = np.uint8((q * 256 + 242) // 243)  # ceil(q * 256 / 3^5)
    for j in range(4):  # qh: 240..255, a 0 trit appended
        q = 0
        for m in range(4):
            q = q * 3 + t[240 + j + 4 * m]
        y8[48 + j] = np.uint8((q * 3 * 256 + 242) // 243)


@plain
def _tq2_0_block(xs, qw, y8):
    """TQ2_0 (66 bytes): qs[64] (4 x 2 bits a byte) | d."""
    t = _trits(xs, y8, 64)
    for j in range(0, 64, 32):
        for m in range(32):
            q = 0
            for n in range(4):
                q += (t[4 * j + m + 32 * n] & 3) << (2 * n)
            y8[j + m] = np.uint8(q)


def quantize_tq1_0(rows, imatrix=None):
    return quantize_blocks("TQ1_0", rows, None, _tq1_0_block)


def quantize_tq2_0(rows, imatrix=None):
    return quantize_blocks("TQ2_0", rows, None, _tq2_0_block)
