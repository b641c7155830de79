"""IQ4_NL and IQ4_XS: bytes equal to llama.cpp's ggml_quantize_chunk, with and without an imatrix."""

import zlib

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

import llamacpp_ref as ref
from quant_checks import check
import quantkit
from quantkit.errors import QuantkitError, ShapeError
from quantkit.quants import dequantize, quantize

TYPES = ["IQ4_NL", "IQ4_XS"]


def imatrix_for(n: int, seed: int = 1) -> np.ndarray:
    rng = np.random.default_rng(seed)
    w = (rng.random(n) ** 4 * 20).astype(np.float32)  # skewed, like activations' mean squares
    w[rng.random(n) < 0.05] = 0.0  # columns never activated
    return w


def edge_rows(kind: str, n: int = 1024) -> np.ndarray:
    rng = np.random.default_rng(zlib.crc32(kind.encode()))
    x = rng.standard_normal((8, n))
    if kind == "zeros":
        x[:] = 0.0
    elif kind == "zero_subblocks":  # whole 32-blocks of zeros inside super-blocks
        x.reshape(-1, 32)[rng.random(x.size // 32) < 0.3] = 0.0
    elif kind == "below_group_eps":  # |x| < 1e-15: llama.cpp's GROUP_MAX_EPS
        x *= 1e-17
    elif kind == "subnormal":
        x *= 1e-40
    elif kind == "fp16_overflow":  # scales past 65504 become fp16 inf
        x *= 1e7
    elif kind == "square_overflow":  # x*x overflows float32: llama.cpp runs on with inf/NaN
        x *= 1e25
    elif kind == "heavy_tail":
        x = rng.standard_t(2, x.shape)
    elif kind == "lognormal_scaled":  # Gaussian * exp(Gaussian)
        x *= np.exp(rng.standard_normal(x.shape) * 2)
    elif kind == "ties":
        x = rng.integers(-4, 5, x.shape).astype(float)
    elif kind == "constant":
        x[:] = 0.37
    elif kind == "one_sign":
        x = -np.abs(x)
    elif kind == "outliers":
        x *= 0.01
        x[rng.random(x.shape) < 0.01] = 3.0
    return x.astype(np.float32)


EDGE_KINDS = ["zeros", "zero_subblocks", "below_group_eps", "subnormal", "fp16_overflow", "square_overflow",
              "heavy_tail", "lognormal_scaled", "ties", "constant", "one_sign", "outliers"]


def activation_imatrix(n: int, seed: int = 11) -> np.ndarray:
    """An imatrix as llama.cpp collects it: mean squared activations, column scales varying widely."""
    rng = np.random.default_rng(seed)
    acts = rng.standard_normal((64, n)) * np.exp(rng.standard_normal(n) * 1.5)
    return (acts**2).mean(axis=0).astype(np.float32)


def selftest_data(n: int, offset: float = 0.0) -> np.ndarray:
    """llama.cpp's tests/test-quantize-fns.cpp data: 0.1 + 2*cos(i + offset)."""
    i = np.arange(n, dtype=np.float32)
    return (0.1 + 2.0 * np.cos(i + np.float32(offset)).astype(np.float64)).astype(np.float32)


@pytest.mark.parametrize("shape", [(1, 256), (3, 768), (48, 2048)], ids=["1x256", "3x768", "48x2048"])
@pytest.mark.parametrize("imatrix", [None, "random", "activations"])
@pytest.mark.parametrize("qtype", TYPES)
def test_gaussian_rows_match_llamacpp(qtype, imatrix, shape):
    x = np.random.default_rng(0).standard_normal(shape).astype(np.float32)
    w = {None: None, "random": imatrix_for, "activations": activation_imatrix}[imatrix]
    check(x, qtype, w(shape[1]) if w else None)


def test_branchless_level_index_equals_best_index_int8():
    from quantkit.quants.iq4 import _best_index, _index, _values_f32, index_thresholds

    values, thresholds = _values_f32(), index_thresholds()
    rng = np.random.default_rng(0)
    near = np.concatenate([thresholds, values, (values[1:] + values[:-1]) / 2]).astype(np.float32)
    steps = np.array([-np.inf, np.inf], np.float32)
    for _ in range(3):
        near = np.concatenate([near, np.nextafter(near, steps[0]), np.nextafter(near, steps[1])])
    bits = rng.integers(0, 2**32, 4000, dtype=np.uint64).astype(np.uint32).view(np.float32)
    xs = np.concatenate([near, rng.uniform(-140, 130, 4000).astype(np.float32), bits,
                         np.array([0.0, -0.0, np.inf, -np.inf, np.nan, 1e-45, -1e-45], np.float32)])
    for x in xs:
        assert _index(thresholds, x) == _best_index(values, x), x


def test_single_block_rows_match_llamacpp():
    rng = np.random.default_rng(9)
    check(rng.standard_normal((1, 32)).astype(np.float32), "IQ4_NL")
    check(rng.standard_normal((5, 32)).astype(np.float32), "IQ4_NL", imatrix_for(32))


@pytest.mark.parametrize("qtype", TYPES)
def test_llamacpp_selftest_error(qtype):
    # total error sqrt(sum sq diff) / n below llama.cpp's threshold for 4-bit types (0.002)
    x = selftest_data(32 * 128)[None, :]
    check(x, qtype)
    diff = dequantize(quantize(x, qtype)).astype(np.float64) - x
    assert np.sqrt((diff**2).sum()) / x.size < 0.002


@pytest.mark.parametrize("kind", EDGE_KINDS)
@pytest.mark.parametrize("use_imatrix", [False, True], ids=["plain", "imatrix"])
@pytest.mark.parametrize("qtype", TYPES)
def test_edge_cases_match_llamacpp(qtype, use_imatrix, kind):
    x = edge_rows(kind)
    check(x, qtype, imatrix_for(x.shape[1], seed=2) if use_imatrix else None)


@pytest.mark.parametrize("qtype", TYPES)
def test_imatrix_extremes_match_llamacpp(qtype):
    x = np.random.default_rng(3).standard_normal((8, 512)).astype(np.float32)
    check(x, qtype, np.zeros(512, np.float32))  # all-zero importance: sumq2 = 0 everywhere
    check(x, qtype, np.full(512, 1e30, np.float32))
    w = np.ones(512, np.float32)
    w[::7] = 1e-30
    check(x, qtype, w)


@pytest.mark.parametrize("use_imatrix", [False, True], ids=["plain", "imatrix"])
def test_minilm_weights_match_llamacpp(minilm_weights, use_imatrix):
    # IQ4_NL on the model's own 384-wide rows; IQ4_XS on the 1536-wide rows of the FFN output.
    for name in ["encoder.layer.0.attention.self.query.weight", "encoder.layer.3.intermediate.dense.weight"]:
        x = minilm_weights[name][:256]
        check(x, "IQ4_NL", imatrix_for(x.shape[1]) if use_imatrix else None)
    for name in ["encoder.layer.0.output.dense.weight", "encoder.layer.5.output.dense.weight"]:
        x = minilm_weights[name][:128]
        check(x, "IQ4_XS", imatrix_for(x.shape[1]) if use_imatrix else None)
        check(x, "IQ4_NL", imatrix_for(x.shape[1]) if use_imatrix else None)


@pytest.mark.parametrize("imatrix", [None, "activations"])
def test_smollm2_weights_match_llamacpp(smollm2_weights, imatrix):
    for name in ["blk.0.attn_q.weight", "blk.7.attn_k.weight"]:  # rows of 576: IQ4_NL only
        x = smollm2_weights[name][:128]
        check(x, "IQ4_NL", activation_imatrix(576) if imatrix else None)
    for name in ["blk.0.ffn_down.weight", "blk.29.ffn_down.weight"]:  # (576, 1536)
        x = smollm2_weights[name][:96]
        for qtype in TYPES:
            check(x, qtype, activation_imatrix(1536) if imatrix else None)


@settings(max_examples=30, deadline=None, derandomize=True)
@given(
    qtype=st.sampled_from(TYPES),
    x=hnp.arrays(np.float32, (2, 256), elements=st.floats(allow_nan=False, allow_infinity=False, width=32)),
    w=st.none() | hnp.arrays(np.float32, 256, elements=st.floats(0, 1e4, width=32)),
)
def test_any_finite_input_matches_llamacpp(qtype, x, w):
    check(x, qtype, w)


def test_public_api_iq4_nl_end_to_end():
    rng = np.random.default_rng(7)
    x = rng.standard_normal((3, 5, 96)).astype(np.float32)  # any number of 32-blocks per row
    q = quantkit.quantize(x, "IQ4_NL")
    assert isinstance(q, quantkit.QuantizedTensor)
    assert q.qtype.name == "IQ4_NL" and q.shape == (3, 5, 96)
    assert q.nbytes == 15 * 3 * 18
    expected = ref.quantize(x.reshape(-1, 96), "IQ4_NL")
    np.testing.assert_array_equal(q.data, expected)
    values = quantkit.dequantize(q)
    assert values.shape == x.shape and values.dtype == np.float32
    np.testing.assert_array_equal(values.reshape(-1), ref.dequantize(expected, "IQ4_NL", x.size))
    np.testing.assert_array_equal(q.dequantize(threads=1), values)
    assert np.abs(values - x).max() < 0.25 * np.abs(x).max()

    w = imatrix_for(96)
    qw = quantkit.quantize(x, "IQ4_NL", imatrix=w, threads=1)
    np.testing.assert_array_equal(qw.data, ref.quantize(x.reshape(-1, 96), "IQ4_NL", w))
    # float16 input is widened to float32 first, as llama.cpp quantizes f32 rows
    np.testing.assert_array_equal(quantkit.quantize(x.astype(np.float16), "iq4_nl").data,
                                  ref.quantize(x.astype(np.float16).astype(np.float32).reshape(-1, 96), "IQ4_NL"))


def test_public_api_torch_tensor():
    import torch

    x = torch.randn(4, 512, generator=torch.Generator().manual_seed(0))
    q = quantkit.quantize(x, "IQ4_XS")
    np.testing.assert_array_equal(q.data, ref.quantize(x.numpy(), "IQ4_XS"))


def test_iq4_xs_rejects_rows_not_a_multiple_of_256():
    x = np.random.default_rng(0).standard_normal((4, 384)).astype(np.float32)  # 12 blocks of 32
    with pytest.raises(ShapeError) as err:
        quantkit.quantize(x, "IQ4_XS", name="blk.0.attn_q.weight")
    message = str(err.value)
    assert "blk.0.attn_q.weight" in message and "384" in message and "256" in message and "IQ4_XS" in message
    assert isinstance(err.value, QuantkitError)
    # the same rows are whole IQ4_NL blocks (llama.cpp's fallback for such tensors)
    np.testing.assert_array_equal(quantkit.quantize(x, "IQ4_NL").data, ref.quantize(x, "IQ4_NL"))


def test_iq4_nl_rejects_rows_not_a_multiple_of_32():
    with pytest.raises(ShapeError, match="32"):
        quantkit.quantize(np.ones((2, 48), np.float32), "IQ4_NL")


def test_imatrix_length_is_checked():
    with pytest.raises(QuantkitError, match="imatrix"):
        quantkit.quantize(np.ones((2, 256), np.float32), "IQ4_XS", imatrix=np.ones(128, np.float32))
