"""Degenerate blocks with an importance matrix: bytes equal llama.cpp's ``ggml_quantize_chunk`` for every
quantized type, where every value with non-zero importance is zero but some values are not (the search
finds only scale 0), or the importance of a whole (sub-)block is zero."""

import numpy as np
import pytest

import llamacpp_ref as ref
from quantkit import quantize
from quantkit.types import supported_names

N = 512  # two super-blocks of 256
TYPES = [t for t in supported_names() if t not in ("F32", "F16", "BF16")]


def _pattern(name: str):
    """(values (rows, N), importance (N,)) of one degenerate case."""
    rng = np.random.default_rng(sum(map(ord, name)))
    x = np.zeros((2, N), np.float32)
    w = np.ones(N, np.float32)
    if name == "zeros ending in 1 unweighted":  # the example of issue 12, in each super-block's last column
        x[:, [255, 511]] = 1.0
        w[[255, 511]] = 0
    elif name == "one unweighted value per sub-block end":
        for end in (7, 15, 31, 63):
            x[:, end] = -1.0 if end % 2 else 0.5
            w[end] = 0
    elif name == "unweighted values among weighted zeros":
        cols = rng.choice(N, 40, replace=False)
        x[:, cols] = rng.standard_normal((2, 40)).astype(np.float32)
        w[cols] = 0
    elif name == "half unweighted":
        x[:, ::2] = np.linspace(-1, 1, N // 2, dtype=np.float32)
        w[::2] = 0
    elif name == "all importance zero":
        x[:] = rng.standard_normal((2, N)).astype(np.float32)
        w[:] = 0
    elif name == "one sub-block of zero importance":
        x[:] = rng.standard_normal((2, N)).astype(np.float32)
        w[32:64] = 0
    return x, w


PATTERNS = ["zeros ending in 1 unweighted", "one unweighted value per sub-block end",
            "unweighted values among weighted zeros", "half unweighted", "all importance zero",
            "one sub-block of zero importance"]


@pytest.mark.parametrize("pattern", PATTERNS)
@pytest.mark.parametrize("qtype", TYPES)
def test_degenerate_blocks_equal_llamacpp(qtype, pattern):
    x, w = _pattern(pattern)
    np.testing.assert_array_equal(quantize(x, qtype, imatrix=w).data, ref.quantize(x, qtype, w))
