"""Plain references of every quantkit type: ggml-quants.c's algorithms, one block at a time.

One module per family, mirroring ``quantkit.quants``; each exposes ``quantize_<type>(rows, imatrix)``
(float32 ``(nrows, n_per_row)`` -> uint8 ``(nrows, row_bytes)``), the same bytes as the fast kernels
and as llama.cpp's ``ggml_quantize_chunk`` (tests/test_reference_quants.py). Read these to learn
an algorithm; use ``quantkit.quantize`` to run it fast.
"""

import importlib

from ...types import quant_type


def reference_quantizer(qtype):
    """The plain reference ``quantize_<type>`` function of a type (name, enum or number)."""
    qt = quant_type(qtype)
    module = importlib.import_module(f"{__name__}.{qt.family}")
    return getattr(module, f"quantize_{qt.name.lower()}")
