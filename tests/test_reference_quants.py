"""The plain references (quantkit/quants/reference/) give the fast kernels' bytes and llama.cpp's.

For every type quantkit quantizes, with and without an importance matrix (only with one where
llama.cpp requires it), on Gaussian and heavy-tailed rows and edge rows (zeros, a constant,
tiny, huge, a single spike): reference bytes == quantkit.quantize bytes == ggml_quantize_chunk.
"""

import numpy as np
import pytest
from quant_checks import assert_same_blocks

import llamacpp_ref as ref
from quantkit.quants import quantize
from quantkit.quants.reference import reference_quantizer
from quantkit.types import quant_type, supported_names

N_PER_ROW = 512


def make_rows(n: int) -> np.ndarray:
    rng = np.random.default_rng(13)
    rows = [rng.standard_normal(n) for _ in range(6)]
    rows += [rng.standard_t(2, n) for _ in range(5)]
    rows += [rng.standard_normal(n) * np.exp(rng.standard_normal(n)) for _ in range(3)]
    spike = np.zeros(n)
    spike[37] = -3.0
    rows += [np.zeros(n), np.full(n, 0.5), np.full(n, -2.0), rng.standard_normal(n) * 1e-9,
             rng.standard_normal(n) * 1e-20,
             rng.standard_normal(n) * 1e4, spike]
    near_zero = rng.standard_normal(n)
    near_zero[rng.random(n) < 0.3] *= 1e-9
    rows.append(near_zero)
    return np.array(rows, dtype=np.float32)


def make_imatrix(n: int) -> np.ndarray:
    rng = np.random.default_rng(7)
    imatrix = np.exp(rng.standard_normal(n) * 1.5)
    imatrix[rng.random(n) < 0.05] = 0.0
    return imatrix.astype(np.float32)


CASES = [
    pytest.param(name, with_imatrix, id=f"{name}-{'imatrix' if with_imatrix else 'plain'}")
    for name in supported_names()
    for with_imatrix in (False, True)
    if with_imatrix or not quant_type(name).requires_imatrix
]


@pytest.mark.parametrize("name, with_imatrix", CASES)
def test_reference_equals_fast_kernel_and_llamacpp(name, with_imatrix):
    x = make_rows(N_PER_ROW)
    imatrix = make_imatrix(N_PER_ROW) if with_imatrix else None
    expected = ref.quantize(x, name, imatrix).reshape(x.shape[0], -1)
    plain = reference_quantizer(name)(x, imatrix)
    assert plain.dtype == np.uint8 and plain.shape == expected.shape
    assert_same_blocks(plain, expected, name)
    assert_same_blocks(quantize(x, name, imatrix=imatrix).data, expected, name)
