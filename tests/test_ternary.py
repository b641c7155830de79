"""TQ1_0 and TQ2_0: bytes equal to llama.cpp's ggml_quantize_chunk, with and without an imatrix."""

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

import llamacpp_ref as ref
from quant_checks import check
import quantkit
from quantkit.errors import ShapeError
from quantkit.quants import dequantize, quantize
from quantkit.types import quant_type

TYPES = ["TQ1_0", "TQ2_0"]


@pytest.mark.parametrize("shape", [(1, 256), (3, 768), (64, 2048)], ids=["1x256", "3x768", "64x2048"])
@pytest.mark.parametrize("use_imatrix", [False, True], ids=["plain", "imatrix"])
@pytest.mark.parametrize("qtype", TYPES)
def test_gaussian_rows_match_llamacpp(qtype, use_imatrix, shape):
    rng = np.random.default_rng(0)
    x = rng.standard_normal(shape).astype(np.float32)
    check(x, qtype, rng.random(shape[1]).astype(np.float32) if use_imatrix else None)


@pytest.mark.parametrize("qtype", TYPES)
def test_llamacpp_selftest_error(qtype):
    # llama.cpp's test-quantize-fns data 0.1 + 2*cos(i); error sqrt(sum sq diff)/n below 0.01 (ternary)
    i = np.arange(32 * 128, dtype=np.float32)
    x = (0.1 + 2.0 * np.cos(i).astype(np.float64)).astype(np.float32)[None, :]
    check(x, qtype)
    diff = dequantize(quantize(x, qtype)).astype(np.float64) - x
    assert np.sqrt((diff**2).sum()) / x.size < 0.01


@pytest.mark.parametrize("qtype", TYPES)
def test_imatrix_is_ignored_as_by_llamacpp(qtype):
    rng = np.random.default_rng(1)
    x = rng.standard_normal((8, 512)).astype(np.float32)
    w = (rng.random(512) * 100).astype(np.float32)
    np.testing.assert_array_equal(quantize(x, qtype, imatrix=w).data, quantize(x, qtype).data)


@pytest.mark.parametrize("qtype", TYPES)
def test_half_way_values_round_away_from_zero(qtype):
    # x/amax of exactly +-0.5 is where lroundf (away from zero) and rint (to even) disagree
    rng = np.random.default_rng(2)
    x = rng.choice(np.array([-1.0, -0.5, -0.25, 0.0, 0.25, 0.5, 0.75, 1.0], np.float32), (16, 256))
    x[:, 0] = 1.0
    x[1] = 0.5 * x[1] + np.float32(2.0 ** -25)  # just past the half way
    check(x, qtype)
    levels = dequantize(quantize(x[:1], qtype)).reshape(-1)
    assert set(np.unique(levels)) <= {-1.0, 0.0, 1.0}
    np.testing.assert_array_equal(levels[x[0] == 0.5], 1.0)
    np.testing.assert_array_equal(levels[x[0] == -0.5], -1.0)


@pytest.mark.parametrize("kind", ["zeros", "ternary", "tiny", "subnormal", "fp16_overflow", "heavy_tail",
                                  "lognormal_scaled", "one_sign"])
@pytest.mark.parametrize("qtype", TYPES)
def test_edge_cases_match_llamacpp(qtype, kind):
    rng = np.random.default_rng(3)
    x = rng.standard_normal((8, 1024))
    if kind == "zeros":
        x[:] = 0.0
        x[1, 256:512] = 1.0  # one block non-zero
    elif kind == "ternary":  # what TQ types are for: {-1, 0, 1} times a scale, recovered exactly
        x = rng.integers(-1, 2, x.shape) * 0.0625
        x[:, ::256] = 0.0625
    elif kind == "tiny":
        x *= 1e-20
    elif kind == "subnormal":
        x *= 1e-42
    elif kind == "fp16_overflow":
        x *= 1e6
    elif kind == "heavy_tail":
        x = rng.standard_t(1.5, x.shape)
    elif kind == "lognormal_scaled":  # Gaussian * exp(Gaussian)
        x *= np.exp(rng.standard_normal(x.shape) * 2)
    elif kind == "one_sign":
        x = np.abs(x)
    x = x.astype(np.float32)
    check(x, qtype)
    if kind == "ternary":
        np.testing.assert_array_equal(dequantize(quantize(x, qtype)), x)


def test_minilm_weights_match_llamacpp(minilm_weights):
    x = minilm_weights["encoder.layer.2.output.dense.weight"]  # rows of 1536 = 6 blocks
    for qtype in TYPES:
        check(x, qtype)


def test_smollm2_weights_match_llamacpp(smollm2_weights):
    x = smollm2_weights["blk.3.ffn_down.weight"]  # (576, 1536)
    for qtype in TYPES:
        check(x, qtype)
    x = smollm2_weights["blk.3.attn_q.weight"].reshape(-1, 768)  # 576-wide rows regrouped by 768
    for qtype in TYPES:
        check(x, qtype)


@settings(max_examples=30, deadline=None, derandomize=True)
@given(
    qtype=st.sampled_from(TYPES),
    x=hnp.arrays(np.float32, (2, 256), elements=st.floats(allow_nan=False, allow_infinity=False, width=32)),
)
def test_any_finite_input_matches_llamacpp(qtype, x):
    check(x, qtype)


@pytest.mark.parametrize("qtype", TYPES)
def test_public_api_and_row_length(qtype):
    x = np.random.default_rng(4).standard_normal((2, 3, 256)).astype(np.float32)
    q = quantkit.quantize(x, qtype)
    assert q.shape == (2, 3, 256) and q.nbytes == 6 * quant_type(qtype).type_size
    np.testing.assert_array_equal(q.data, ref.quantize(x.reshape(-1, 256), qtype))
    with pytest.raises(ShapeError, match="256"):
        quantkit.quantize(np.ones((2, 96), np.float32), qtype)
