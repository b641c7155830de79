"""Plain references of Q1_0 and Q2_0 (``quantize_row_q1_0_ref`` / ``quantize_row_q2_0_ref`` in numpy
float32; an imatrix is ignored, as in C). Layouts: ``quants/lowbit.py``.
"""

import numpy as np

from ..lowbit import GEOMETRY


def _pack(name, rows, d, q):
    """fp16 d | the levels q, ``8 / per_byte`` bits each, value j of a byte in its bits from j * width."""
    per_byte = GEOMETRY[name][1]
    shifts = (np.arange(per_byte) * (8 // per_byte)).astype(np.uint8)
    qs = np.bitwise_or.reduce(q.reshape(len(q), -1, per_byte) << shifts, axis=2).astype(np.uint8)
    scale = d.astype(np.float16).view(np.uint8).reshape(-1, 2)
    return np.concatenate([scale, qs], axis=1).reshape(len(rows), -1)


def quantize_q1_0(rows, imatrix=None):
    """d = mean |x| (a float32 sum in order), one bit per value: x >= 0."""
    x = np.asarray(rows, dtype=np.float32).reshape(-1, GEOMETRY["Q1_0"][0])
    d = np.add.accumulate(np.abs(x), axis=1)[:, -1] / np.float32(x.shape[1])  # accumulate: in order, float32
    return _pack("Q1_0", rows, d, (x >= 0).astype(np.uint8))


def quantize_q2_0(rows, imatrix=None):
    """d = max |x|, q = clamp(roundf(x * (1/d)) + 1, 0, 3) (1/d = 0 for an all-zero block)."""
    x = np.asarray(rows, dtype=np.float32).reshape(-1, GEOMETRY["Q2_0"][0])
    d = np.abs(x).max(axis=1)
    with np.errstate(divide="ignore"):
        inv = np.where(d > 0, np.float32(1.0) / d, np.float32(0.0)).astype(np.float32)
    t = x * inv[:, None]
    rounded = np.trunc(t) + np.where(np.abs(t - np.trunc(t)) >= np.float32(0.5), np.sign(t), 0)  # C roundf
    return _pack("Q2_0", rows, d, np.clip(rounded.astype(np.int32) + 1, 0, 3).astype(np.uint8))
