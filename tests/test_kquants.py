"""Q2_K, Q3_K, Q4_K, Q5_K, Q6_K: bytes equal to llama.cpp's ggml_quantize_chunk, exact dequantization.

Without an importance matrix llama.cpp runs quantize_row_<t>_ref, with one quantize_row_<t>_impl
(a different search); both paths are compared on random Gaussian and heavy-tailed data, on edge
cases, and on real weights of all-MiniLM-L6-v2 and SmolLM2-135M.
"""

import zlib

import numpy as np
import pytest

import llamacpp_ref as ref
import quantkit
from quantkit.errors import NonFiniteError, ShapeError
from quantkit.types import quant_type, supported_names

KTYPES = ["Q4_K", "Q6_K", "Q5_K", "Q3_K", "Q2_K"]
IMATRIX_KINDS = ["none", "random", "sq_act"]


def make_imatrix(kind: str, n: int, seed: int):
    """None, a random positive imatrix, or mean squared activations with per-column scales."""
    rng = np.random.default_rng(seed)
    if kind == "none":
        return None
    if kind == "random":
        return (rng.random(n) + 1e-3).astype(np.float32)
    col_scale = np.exp(rng.standard_normal(n) * 1.5)
    act = rng.standard_normal((64, n)) * col_scale
    return (act * act).mean(axis=0).astype(np.float32)


def make_data(dist: str, shape, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    if dist == "gauss":
        return rng.standard_normal(shape).astype(np.float32)
    if dist == "student_t2":
        return rng.standard_t(2, shape).astype(np.float32)
    return (rng.standard_normal(shape) * np.exp(rng.standard_normal(shape))).astype(np.float32)


def assert_matches_llamacpp(name: str, x: np.ndarray, imatrix) -> np.ndarray:
    """Quantize with quantkit's kernels and with llama.cpp; bytes and dequantized values must be equal."""
    qt = quant_type(name)
    x = np.ascontiguousarray(x, dtype=np.float32)
    ours = qt.quantize_rows(x, None if imatrix is None else np.ascontiguousarray(imatrix, dtype=np.float32))
    theirs = ref.quantize(x, name, imatrix).reshape(ours.shape)
    if not np.array_equal(ours, theirs):
        blocks_ours = ours.reshape(-1, qt.type_size)
        blocks_theirs = theirs.reshape(-1, qt.type_size)
        bad = int(np.any(blocks_ours != blocks_theirs, axis=1).sum())
        pytest.fail(f"{name}: {bad} of {blocks_ours.shape[0]} blocks differ from ggml_quantize_chunk")
    values = qt.dequantize_rows(ours, x.shape[1])
    expected = ref.dequantize(theirs, name, x.size).reshape(x.shape)
    np.testing.assert_array_equal(values.view(np.uint32), expected.view(np.uint32))
    return ours


@pytest.mark.parametrize("imatrix_kind", IMATRIX_KINDS)
@pytest.mark.parametrize("dist", ["gauss", "student_t2", "lognormal_scaled"])
@pytest.mark.parametrize("shape", [(1, 256), (7, 256), (48, 1024), (96, 2048)])
@pytest.mark.parametrize("name", KTYPES)
def test_random_data_matches_llamacpp(name, shape, dist, imatrix_kind):
    seed = zlib.crc32(repr((name, shape, dist, imatrix_kind)).encode())
    x = make_data(dist, shape, seed)
    assert_matches_llamacpp(name, x, make_imatrix(imatrix_kind, shape[1], seed + 1))


def edge_rows(n: int) -> np.ndarray:
    rng = np.random.default_rng(5)
    rows = [np.zeros(n), np.full(n, 0.5), np.full(n, -0.5)]
    spike = np.zeros(n)
    spike[7] = 3.0
    rows.append(spike)
    spike = np.zeros(n)
    spike[n - 3] = -3.0
    rows.append(spike)
    for scale in (1e-40, 1e-38, 1e-20, 1e-6, 1e4, 1e30, 1e37):
        rows.append(rng.standard_normal(n) * scale)
    rows.append(np.full(n, 3e38))  # sums overflow to inf: NaN paths must match C's too
    extremes = rng.standard_normal(n)
    extremes[5], extremes[n - 9] = 3.4e38, -3.4e38
    rows.append(extremes)
    rows.append(np.where(rng.random(n) < 0.01, 1e20, rng.standard_normal(n)))
    rows += [np.abs(rng.standard_normal(n)), -np.abs(rng.standard_normal(n))]
    rows += [np.abs(rng.standard_normal(n)) + 5, -np.abs(rng.standard_normal(n)) - 5]
    rows.append(rng.integers(-2, 3, n).astype(float))
    holes = rng.standard_normal(n)
    holes[::16] = 0
    rows.append(holes)
    half = rng.standard_normal(n)
    half[: n // 2] = 0
    rows.append(half)
    return np.array(rows, dtype=np.float32)


@pytest.mark.parametrize("imatrix_kind", ["none", "random", "zeros", "half_zero", "huge"])
@pytest.mark.parametrize("name", KTYPES)
def test_edge_cases_match_llamacpp(name, imatrix_kind):
    n = 512
    imatrix = {
        "none": None,
        "random": np.random.default_rng(2).random(n).astype(np.float32),
        "zeros": np.zeros(n, np.float32),
        "half_zero": (np.arange(n) % 2).astype(np.float32),
        "huge": (np.random.default_rng(3).random(n) * 1e30).astype(np.float32),
    }[imatrix_kind]
    assert_matches_llamacpp(name, edge_rows(n), imatrix)


@pytest.mark.parametrize("imatrix_kind", IMATRIX_KINDS)
@pytest.mark.parametrize("name", KTYPES)
def test_minilm_weights_match_llamacpp(name, imatrix_kind, minilm_weights):
    # FFN output projections are (384, 1536): rows of 6 super-blocks
    for layer in (0, 5):
        w = minilm_weights[f"encoder.layer.{layer}.output.dense.weight"]
        assert w.shape == (384, 1536)
        assert_matches_llamacpp(name, w[layer * 17 : layer * 17 + 96], make_imatrix(imatrix_kind, 1536, layer))
    # every other tensor's values, flattened into 256-wide rows
    q = minilm_weights["encoder.layer.2.attention.self.query.weight"].reshape(-1, 256)[:192]
    assert_matches_llamacpp(name, q, make_imatrix(imatrix_kind, 256, 9))


@pytest.mark.parametrize("imatrix_kind", IMATRIX_KINDS)
@pytest.mark.parametrize("name", KTYPES)
def test_smollm2_weights_match_llamacpp(name, imatrix_kind, smollm2_weights):
    w = smollm2_weights["blk.3.ffn_down.weight"]
    assert w.shape == (576, 1536)
    assert_matches_llamacpp(name, w[100:196], make_imatrix(imatrix_kind, 1536, 3))
    # a 576-wide tensor's values as 2304-wide rows (4 of its rows each)
    g = smollm2_weights["blk.10.ffn_gate.weight"].reshape(-1, 2304)[:48]
    assert_matches_llamacpp(name, g, make_imatrix(imatrix_kind, 2304, 10))


@pytest.mark.parametrize("name", KTYPES)
def test_public_api_matches_llamacpp(name):
    rng = np.random.default_rng(11)
    x = rng.standard_normal((3, 4, 512)).astype(np.float32)
    imatrix = (rng.random(512) + 0.1).astype(np.float32)
    for imx in (None, imatrix):
        q = quantkit.quantize(x, name, imatrix=imx)
        expected = ref.quantize(x.reshape(-1, 512), name, imx)
        np.testing.assert_array_equal(q.data, expected)
        back = quantkit.dequantize(q)
        assert back.shape == x.shape
        np.testing.assert_array_equal(back.reshape(-1), ref.dequantize(expected, name, x.size))


# llama.cpp's tests/test-quantize-fns.cpp: data 0.1 + 2*cos(i + offset), error sqrt(sum d^2)/n
THRESHOLD = {"Q2_K": 0.0075, "Q3_K": 0.004, "Q4_K": 0.002, "Q5_K": 0.002, "Q6_K": 0.002}


@pytest.mark.parametrize("name", KTYPES)
def test_round_trip_error_below_llamacpp_thresholds(name):
    n = 32 * 128
    for offset in (0.0, 1.0):
        x = (0.1 + 2 * np.cos(np.arange(n, dtype=np.float64) + offset)).astype(np.float32).reshape(1, n)
        q = quantkit.quantize(x, name)
        back = quantkit.dequantize(q)
        err = float(np.sqrt(np.sum((back.astype(np.float64) - x) ** 2)) / n)
        assert err < THRESHOLD[name], (name, offset, err)
        # the same data with an imatrix takes the other search; it must be as good
        q = quantkit.quantize(x, name, imatrix=np.ones(n, np.float32))
        err = float(np.sqrt(np.sum((quantkit.dequantize(q).astype(np.float64) - x) ** 2)) / n)
        assert err < THRESHOLD[name], (name, offset, "imatrix", err)


@pytest.mark.parametrize("name", KTYPES)
def test_row_length_not_multiple_of_256_is_refused(name):
    x = np.ones((2, 576), np.float32)
    with pytest.raises(ShapeError) as excinfo:
        quantkit.quantize(x, name)
    message = str(excinfo.value)
    assert "row length 576 is not a multiple of" in message and "256" in message and name in message
    assert "types that fit:" in message
    fits = message.split("types that fit:")[1]
    for k in KTYPES:
        assert k not in fits
    for other in supported_names():
        assert (other in fits.replace(",", " ").split()) == (576 % quant_type(other).block_size == 0), other
    # the public API refuses it too, naming the row length, the type and the types that fit
    with pytest.raises(ShapeError, match="row length 576 is not a multiple of") as excinfo:
        quantkit.quantize(x, name)
    message = str(excinfo.value)
    assert name in message and "256" in message and "types that fit:" in message
    assert "Q4_0" in message.split("types that fit:")[1] or "Q4_0" not in supported_names()


def test_nan_is_refused_with_row_and_column():
    x = np.random.default_rng(0).standard_normal((5, 512)).astype(np.float32)
    x[3, 300] = np.nan
    with pytest.raises(NonFiniteError) as excinfo:
        quantkit.quantize(x, "Q4_K")
    message = str(excinfo.value)
    assert "row 3" in message and "column 300" in message


def test_threads_give_the_same_bytes():
    x = make_data("gauss", (64, 1024), 3)
    imatrix = make_imatrix("sq_act", 1024, 4)
    for name in KTYPES:
        one = quantkit.quantize(x, name, imatrix=imatrix, threads=1).data
        many = quantkit.quantize(x, name, imatrix=imatrix, threads=2).data
        np.testing.assert_array_equal(one, many)
