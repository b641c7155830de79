"""Assertions shared by the quant-family tests: quantkit against llama.cpp, block by block."""

import numpy as np

import llamacpp_ref as ref
from quantkit.quants import dequantize, quantize
from quantkit.types import quant_type


def assert_same_blocks(ours: np.ndarray, theirs: np.ndarray, qtype: str) -> None:
    """Equal bytes; on failure, say how many blocks differ and which."""
    size = quant_type(qtype).type_size
    ours = np.asarray(ours).view(np.uint8).reshape(-1)
    theirs = np.asarray(theirs).view(np.uint8).reshape(-1)
    assert ours.size == theirs.size
    bad = np.flatnonzero((ours.reshape(-1, size) != theirs.reshape(-1, size)).any(axis=1))
    assert bad.size == 0, f"{qtype}: {bad.size} of {ours.size // size} blocks differ, first {bad[:5].tolist()}"


def check(x: np.ndarray, qtype: str, imatrix=None) -> None:
    """quantkit's bytes and dequantized values equal llama.cpp's for rows x."""
    x = np.ascontiguousarray(x, dtype=np.float32)
    q = quantize(x, qtype, imatrix=imatrix)
    expected = ref.quantize(x, qtype, imatrix)
    assert_same_blocks(q.data, expected, qtype)
    values = dequantize(q)
    assert values.shape == x.shape
    np.testing.assert_array_equal(values.reshape(-1), ref.dequantize(expected, qtype, x.size))
