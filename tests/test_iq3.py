"""IQ3_XXS and IQ3_S: bytes equal to llama.cpp's ggml_quantize_chunk, with and without an imatrix.

Inputs are kept below the magnitudes where llama.cpp aborts (GGML_ASSERT in
iq3_find_best_neighbour, which would kill the test process); quantkit raises there instead.
"""

import zlib

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

import llamacpp_ref as ref
from quant_checks import assert_same_blocks, check
import quantkit
from quantkit.errors import NonFiniteError, QuantkitError, ShapeError
from quantkit.quants import dequantize, quantize
from quantkit.quants.codebooks import grid
from quantkit.quants.iq3 import neighbour_tables
from quantkit.types import quant_type

TYPES = ["IQ3_XXS", "IQ3_S"]


def imatrix_for(n: int, seed: int = 1) -> np.ndarray:
    rng = np.random.default_rng(seed)
    w = (rng.random(n) ** 4 * 20).astype(np.float32)
    w[rng.random(n) < 0.05] = 0.0
    return w


@pytest.mark.parametrize("qtype", TYPES)
def test_neighbour_tables_are_llamacpps(qtype):
    levels, kmap, neighbours = neighbour_tables(qtype)
    assert neighbour_tables(qtype)[2] is neighbours  # built once, cached
    grid_size, nwant = (256, 2) if qtype == "IQ3_XXS" else (512, 3)
    assert levels.shape == (grid_size, 4) and not neighbours.flags.writeable
    # levels are the gguf grid's magnitudes ranked 0..7 (llama.cpp's kgrid codes)
    magnitudes = grid(qtype)
    assert np.array_equal(np.unique(magnitudes)[levels], magnitudes)
    codes = (levels.astype(np.int64) << (3 * np.arange(4))).sum(axis=1)
    assert np.array_equal(kmap[codes], np.arange(grid_size))
    assert (kmap >= 0).sum() == grid_size
    pos = 2 * levels.astype(np.int64) + 1
    for code in np.flatnonzero(kmap < 0):
        start = -kmap[code] - 1
        count = int(neighbours[start])
        listed = neighbours[start + 1:start + 1 + count].astype(np.int64)
        point = 2 * ((code >> (3 * np.arange(4))) & 7) + 1
        d2 = ((pos - point) ** 2).sum(axis=1)
        cutoff = np.unique(d2)[nwant - 1]  # every entry at the nwant smallest distances ...
        expected = np.lexsort((np.arange(grid_size), d2))  # ... by distance, then index
        assert np.array_equal(listed, expected[: int((d2 <= cutoff).sum())])


def activation_imatrix(n: int, seed: int = 11) -> np.ndarray:
    """An imatrix as llama.cpp collects it: mean squared activations, column scales varying widely."""
    rng = np.random.default_rng(seed)
    acts = rng.standard_normal((64, n)) * np.exp(rng.standard_normal(n) * 1.5)
    return (acts**2).mean(axis=0).astype(np.float32)


@pytest.mark.parametrize("shape", [(1, 256), (3, 768), (32, 2048)], ids=["1x256", "3x768", "32x2048"])
@pytest.mark.parametrize("imatrix", [None, "random", "activations"])
@pytest.mark.parametrize("qtype", TYPES)
def test_gaussian_rows_match_llamacpp(qtype, imatrix, shape):
    x = np.random.default_rng(0).standard_normal(shape).astype(np.float32)
    w = {None: None, "random": imatrix_for, "activations": activation_imatrix}[imatrix]
    check(x, qtype, w(shape[1]) if w else None)


@pytest.mark.parametrize("qtype, threshold", [("IQ3_XXS", 0.005), ("IQ3_S", 0.004)])
def test_llamacpp_selftest_error(qtype, threshold):
    # llama.cpp's test-quantize-fns data 0.1 + 2*cos(i); error sqrt(sum sq diff)/n below its threshold
    i = np.arange(32 * 128, dtype=np.float32)
    x = (0.1 + 2.0 * np.cos(i).astype(np.float64)).astype(np.float32)[None, :]
    check(x, qtype)
    diff = dequantize(quantize(x, qtype)).astype(np.float64) - x
    assert np.sqrt((diff**2).sum()) / x.size < threshold


EDGE_KINDS = ["zeros", "zero_subblocks", "below_group_eps", "subnormal", "odd_negatives", "fp16_overflow",
              "large", "heavy_tail", "lognormal_scaled", "ties", "constant", "one_sign", "outliers", "sparse"]


@pytest.mark.parametrize("kind", EDGE_KINDS)
@pytest.mark.parametrize("use_imatrix", [False, True], ids=["plain", "imatrix"])
@pytest.mark.parametrize("qtype", TYPES)
def test_edge_cases_match_llamacpp(qtype, use_imatrix, kind):
    rng = np.random.default_rng(zlib.crc32(kind.encode()))
    x = rng.standard_normal((8, 1024))
    if kind == "zeros":
        x[:] = 0.0
    elif kind == "zero_subblocks":
        x.reshape(-1, 32)[rng.random(x.size // 32) < 0.3] = 0.0
    elif kind == "below_group_eps":  # IQ3_XXS skips sub-blocks whose max is < 1e-8
        x *= 1e-9
        x[::2, :512] *= 100.0
    elif kind == "subnormal":
        x *= 1e-41
    elif kind == "odd_negatives":  # IQ3_XXS flips the least important sign of an odd count
        x = np.abs(x)
        x[:, ::8] *= -1.0
    elif kind == "fp16_overflow":
        x *= 1e7
    elif kind == "large":  # still below the abort threshold of llama.cpp (~5e12 without imatrix)
        x *= 1e11
    elif kind == "heavy_tail":
        x = rng.standard_t(2, x.shape)
    elif kind == "lognormal_scaled":  # Gaussian * exp(Gaussian)
        x *= np.exp(rng.standard_normal(x.shape) * 2)
    elif kind == "ties":
        x = rng.integers(-4, 5, x.shape).astype(float)
    elif kind == "constant":
        x[:] = -0.37
    elif kind == "one_sign":
        x = np.abs(x)
    elif kind == "outliers":
        x *= 0.01
        x[rng.random(x.shape) < 0.01] = 3.0
    elif kind == "sparse":
        x[rng.random(x.shape) < 0.9] = 0.0
    check(x.astype(np.float32), qtype, imatrix_for(x.shape[1], seed=2) if use_imatrix else None)


def near_tie_rows(seed: int) -> np.ndarray:
    """Rows whose groups sit on or next to ties of the neighbour search: even magnitudes (midway
    between the odd grid values at trial scale 1, which a sub-block max of 15 gives), some one
    float32 step off, at several power-of-two scales (which keep the ties)."""
    rng = np.random.default_rng(seed)
    x = rng.integers(0, 8, (32, 256)).astype(np.float32) * 2
    x[:, ::32] = 15.0
    step = rng.integers(-1, 2, x.shape)
    x = np.where(step > 0, np.nextafter(x, np.float32(np.inf)), np.where(step < 0, np.nextafter(x, np.float32(0)), x))
    x *= rng.choice([-1.0, 1.0], x.shape).astype(np.float32)
    return (x * np.float32(2.0) ** rng.integers(-20, 20, (32, 1))).astype(np.float32)


@pytest.mark.parametrize("imatrix", [None, "ones", "powers_of_two"])
@pytest.mark.parametrize("qtype", TYPES)
def test_near_tie_neighbours_match_llamacpp(qtype, imatrix):
    # The neighbour search prefilters candidates with an error bound and settles the close ones
    # with C's float32 distances (first in list order on exact ties): both paths are taken here.
    w = {None: None, "ones": np.ones(256, np.float32),
         "powers_of_two": np.float32(2.0) ** np.random.default_rng(3).integers(-4, 4, 256).astype(np.float32)}[imatrix]
    check(near_tie_rows(0), qtype, w)


def test_iq3_s_zero_subblock_shifts_later_indices_as_llamacpp_does():
    # llama.cpp does not advance its qs/signs pointers past an all-zero sub-block of 32, so the
    # next sub-block's grid indices land in the zero one's slots; the bytes must still match.
    x = np.random.default_rng(5).standard_normal((1, 256)).astype(np.float32)
    x[0, 32:64] = 0.0
    q = quantize(x, "IQ3_S")
    assert_same_blocks(q.data, ref.quantize(x, "IQ3_S"), "IQ3_S")
    shifted = quantize(np.ascontiguousarray(np.concatenate([x[:, :32], x[:, 64:], x[:, 32:64]], axis=1)), "IQ3_S")
    # the grid indices of sub-blocks 2..7 sit where sub-blocks 1..6 would be
    np.testing.assert_array_equal(q.data[2 + 8:2 + 56], shifted.data[2 + 8:2 + 56])


@pytest.mark.parametrize("use_imatrix", [False, True], ids=["plain", "imatrix"])
@pytest.mark.parametrize("qtype", TYPES)
def test_minilm_weights_match_llamacpp(minilm_weights, qtype, use_imatrix):
    for name in ["encoder.layer.0.output.dense.weight", "encoder.layer.4.output.dense.weight"]:
        x = minilm_weights[name][:48]
        check(x, qtype, imatrix_for(x.shape[1]) if use_imatrix else None)
    x = minilm_weights["encoder.layer.1.attention.self.value.weight"].reshape(-1, 768)[:48]
    check(x, qtype, imatrix_for(768) if use_imatrix else None)


@pytest.mark.parametrize("imatrix", [None, "activations"])
@pytest.mark.parametrize("qtype", TYPES)
def test_smollm2_weights_match_llamacpp(smollm2_weights, qtype, imatrix):
    for name in ["blk.0.ffn_down.weight", "blk.29.ffn_down.weight"]:  # (576, 1536)
        x = smollm2_weights[name][:48]
        check(x, qtype, activation_imatrix(1536) if imatrix else None)
    x = smollm2_weights["blk.5.attn_v.weight"].reshape(-1, 768)[:48]  # 576-wide rows regrouped by 768
    check(x, qtype, activation_imatrix(768) if imatrix else None)


@settings(max_examples=20, deadline=None, derandomize=True)
@given(
    qtype=st.sampled_from(TYPES),
    x=hnp.arrays(np.float32, (2, 256), elements=st.floats(-1e6, 1e6, width=32)),
    w=st.none() | hnp.arrays(np.float32, 256, elements=st.floats(0, 1e3, width=32)),
)
def test_any_moderate_input_matches_llamacpp(qtype, x, w):
    check(x, qtype, w)


@pytest.mark.parametrize("qtype", TYPES)
def test_overflowing_search_raises_where_llamacpp_aborts(qtype):
    # Where llama.cpp aborts (checked in a subprocess when these cases were written): no neighbour
    # at a finite weighted distance. quantkit raises for exactly these inputs.
    rng = np.random.default_rng(0)
    x = rng.standard_normal((4, 256))
    w = rng.random(256) * 1e30
    check((x * 1e12).astype(np.float32), qtype)  # llama.cpp still quantizes these
    with pytest.raises(NonFiniteError, match=qtype) as err:
        quantize((x * 1e15).astype(np.float32), qtype)
    assert isinstance(err.value, QuantkitError)
    with pytest.raises(NonFiniteError):
        quantize((x * 1e10).astype(np.float32), qtype, imatrix=w.astype(np.float32))
    check((x * 1e10).astype(np.float32), qtype, imatrix=np.ones(256, np.float32))


@pytest.mark.parametrize("qtype", TYPES)
def test_public_api_and_row_length(qtype):
    x = np.random.default_rng(4).standard_normal((2, 2, 512)).astype(np.float32)
    w = imatrix_for(512)
    q = quantkit.quantize(x, qtype, imatrix=w, threads=1)
    assert q.shape == (2, 2, 512) and q.nbytes == 8 * quant_type(qtype).type_size
    np.testing.assert_array_equal(q.data, ref.quantize(x.reshape(-1, 512), qtype, w))
    np.testing.assert_array_equal(quantkit.quantize(x, qtype, imatrix=w).data, q.data)  # threads do not matter
    with pytest.raises(ShapeError, match="256"):
        quantkit.quantize(np.ones((2, 384), np.float32), qtype)
