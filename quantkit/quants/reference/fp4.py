"""Plain references of MXFP4 and NVFP4 (``quantize_row_mxfp4_ref`` / ``quantize_row_nvfp4_ref``; an
imatrix is ignored, as in C).

Per group (32 values for MXFP4, 16 for NVFP4): the scale code from the group's max |x| (E8M0
exponent or UE4M3, ``quants/fp4.py``), then for every value the first of the 16 ``kvalues_fp4``
entries with the least |kvalue * d - x|, all 16 tried as C does. Layouts: ``quants/fp4.py``.
"""

import numpy as np

from ..fp4 import GEOMETRY, KVALUES, _scale_code


def _quantize_fp4(name, rows):
    group, groups_per_block, scale_bytes = GEOMETRY[name]
    x = np.asarray(rows, dtype=np.float32).reshape(-1, groups_per_block, group)  # (blocks, groups, values)
    out = np.zeros((x.shape[0], scale_bytes + groups_per_block * group // 2), dtype=np.uint8)
    for b, s in np.ndindex(x.shape[:2]):
        code, d = _scale_code.py_func(0 if name == "MXFP4" else 1, np.abs(x[b, s]).max())
        out[b, s] = code
        err = np.abs(KVALUES.astype(np.float32)[:, None] * np.float32(d) - x[b, s][None, :])  # (16, values)
        q = err.argmin(axis=0)  # the first minimum, as C's strict "<"
        at = scale_bytes + s * group // 2
        out[b, at:at + group // 2] = q[: group // 2] | (q[group // 2:] << 4)
    return out.reshape(len(rows), -1)


def quantize_mxfp4(rows, imatrix=None):
    return _quantize_fp4("MXFP4", rows)


def quantize_nvfp4(rows, imatrix=None):
    return _quantize_fp4("NVFP4", rows)
