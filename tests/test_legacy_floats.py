"""F32/F16/BF16 and Q8_0/Q4_0/Q4_1/Q5_0/Q5_1 against llama.cpp's ggml_quantize_chunk, byte for byte."""

import zlib

import numpy as np
import pytest
import torch
from gguf import GGMLQuantizationType
from gguf.quants import dequantize as gguf_dequantize
from hypothesis import given, settings
from hypothesis import strategies as st

import llamacpp_ref as ref
from quantkit import dequantize, quantize
from quantkit.errors import ImatrixError, NonFiniteError, QuantkitError, ShapeError

TYPES = ["F32", "F16", "BF16", "Q8_0", "Q4_0", "Q4_1", "Q5_0", "Q5_1"]


def assert_matches_llamacpp(x, qtype, imatrix=None):
    """quantkit's bytes == ggml_quantize_chunk's; dequantized values == llama.cpp's and gguf-py's."""
    x = np.ascontiguousarray(x, dtype=np.float32)
    q = quantize(x, qtype, imatrix=imatrix)
    expected = ref.quantize(x, qtype, imatrix)
    assert q.data.dtype == np.uint8 and q.shape == x.shape
    if not np.array_equal(q.data, expected):
        row_bytes = expected.size // max(1, x.size // x.shape[-1])
        bad = np.flatnonzero(q.data != expected)
        pytest.fail(f"{qtype}: {bad.size} of {expected.size} bytes differ, first at byte {bad[0]} (row {bad[0] // row_bytes})")
    values = dequantize(q)
    assert values.dtype == np.float32 and values.shape == x.shape
    np.testing.assert_array_equal(values.reshape(-1), ref.dequantize(expected, qtype, x.size))
    np.testing.assert_array_equal(
        values.reshape(-1), gguf_dequantize(expected.reshape(-1), GGMLQuantizationType[qtype]).reshape(-1)
    )


def heavy_tailed(rng, shape):
    return (rng.standard_normal(shape) * np.exp(rng.standard_normal(shape))).astype(np.float32)


@pytest.mark.parametrize("qtype", TYPES)
@pytest.mark.parametrize("shape", [(1, 32), (3, 96), (64, 512), (5, 4, 256)])
@pytest.mark.parametrize("weighted", [False, True])
def test_random_data_matches_llamacpp(qtype, shape, weighted):
    rng = np.random.default_rng(zlib.crc32(f"{qtype}{shape}{weighted}".encode()))
    imatrix = rng.random(shape[-1]).astype(np.float32) * 4 + 0.01 if weighted else None
    assert_matches_llamacpp(rng.standard_normal(shape).astype(np.float32), qtype, imatrix)
    assert_matches_llamacpp(heavy_tailed(rng, shape), qtype, imatrix)


@pytest.mark.parametrize("qtype", TYPES)
def test_special_blocks_match_llamacpp(qtype):
    """Zeros of both signs, constant blocks, ties for the largest magnitude, tiny and huge values."""
    blocks = [
        np.zeros(32), -np.zeros(32), np.full(32, 3.0), np.full(32, -2.5),
        np.r_[-0.0, np.zeros(31)], np.r_[np.zeros(31), -0.0], np.r_[1.0, -1.0, np.zeros(30)],
        np.r_[-1.0, 1.0, np.zeros(30)], np.linspace(-1, 1, 32), np.r_[np.full(16, 1e-30), np.full(16, -1e-30)],
        np.r_[np.full(16, 60000.0), np.full(16, -3.0)], np.r_[np.full(31, 5.0), 0.0], np.r_[0.0, np.full(31, -5.0)],
    ]
    x = np.stack(blocks).astype(np.float32)
    assert_matches_llamacpp(x, qtype)
    assert_matches_llamacpp(x, qtype, np.linspace(0.1, 2.0, 32).astype(np.float32))


@settings(max_examples=60, deadline=None, derandomize=True)
@given(
    qtype=st.sampled_from(TYPES),
    nrows=st.integers(1, 4),
    nblocks=st.integers(1, 3),
    scale=st.sampled_from([1e-6, 1.0, 1e3]),
    seed=st.integers(0, 2**31),
    weighted=st.booleans(),
)
def test_property_matches_llamacpp(qtype, nrows, nblocks, scale, seed, weighted):
    rng = np.random.default_rng(seed)
    x = (rng.standard_normal((nrows, 32 * nblocks)) * scale).astype(np.float32)
    x[rng.random(x.shape) < 0.1] = 0.0
    imatrix = rng.random(x.shape[-1]).astype(np.float32) if weighted else None
    assert_matches_llamacpp(x, qtype, imatrix)


@pytest.mark.parametrize("qtype", TYPES)
def test_minilm_real_weights_match_llamacpp(qtype, minilm_weights):
    rng = np.random.default_rng(7)
    names = [
        "embeddings.word_embeddings.weight", "encoder.layer.0.attention.self.query.weight",
        "encoder.layer.3.intermediate.dense.weight", "encoder.layer.5.output.dense.weight",
    ]
    for name in names:
        w = minilm_weights[name][:512]
        assert_matches_llamacpp(w, qtype)
        imatrix = (rng.standard_normal((64, w.shape[-1])) ** 2).mean(axis=0).astype(np.float32)
        assert_matches_llamacpp(w, qtype, imatrix)


@pytest.mark.parametrize("qtype", TYPES)
def test_smollm2_real_weights_match_llamacpp(qtype, smollm2_weights):
    rng = np.random.default_rng(11)
    names = ["token_embd.weight", "blk.0.attn_q.weight", "blk.0.attn_k.weight", "blk.29.ffn_down.weight", "blk.15.ffn_gate.weight"]
    for name in names:
        w = smollm2_weights[name][:384]
        assert_matches_llamacpp(w, qtype)
        imatrix = rng.random(w.shape[-1]).astype(np.float32) + 0.01
        assert_matches_llamacpp(w, qtype, imatrix)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
def test_torch_input_equals_its_float32_values(dtype):
    x = torch.randn(8, 64, generator=torch.Generator().manual_seed(0)).to(dtype)
    expected = ref.quantize(x.float().numpy(), "Q4_0")
    np.testing.assert_array_equal(quantize(x, "Q4_0").data, expected)


def test_bf16_and_f16_inputs_convert_exactly():
    x = np.random.default_rng(0).standard_normal((4, 64)).astype(np.float16)
    np.testing.assert_array_equal(quantize(x, "F16").data.view(np.float16).reshape(x.shape), x)
    xb = torch.randn(4, 64).to(torch.bfloat16)
    np.testing.assert_array_equal(quantize(xb, "BF16").data.view(np.uint16), xb.view(torch.int16).numpy().view(np.uint16).reshape(-1))


@pytest.mark.parametrize("qtype", ["Q8_0", "Q4_0", "Q4_1", "Q5_0", "Q5_1"])
def test_bf16_rows_quantize_in_the_widening_kernel_as_llamacpp(qtype):
    """numpy bfloat16 rows without an imatrix take quantize_<type>_bf16 (each row widened inside the
    kernel): bytes equal llama.cpp's on the widened floats, zero blocks and signed zeros included;
    a NaN is reported at its row and column."""
    import ml_dtypes

    x = np.random.default_rng(5).standard_normal((67, 96)).astype(np.float32) * np.float32(0.05)
    x[3, :32], x[4, 5], x[5, 32:64] = 0.0, -0.0, 1e-30
    rows = x.astype(ml_dtypes.bfloat16)
    np.testing.assert_array_equal(quantize(rows, qtype).data, ref.quantize(rows.astype(np.float32), qtype))
    rows[7, 40] = np.nan
    with pytest.raises(NonFiniteError, match="at row 7, column 40"):
        quantize(rows, qtype)


def test_threads_do_not_change_bytes():
    x = np.random.default_rng(3).standard_normal((97, 256)).astype(np.float32)
    im = np.random.default_rng(4).random(256).astype(np.float32)
    for qtype in ("Q4_0", "Q5_1"):
        np.testing.assert_array_equal(quantize(x, qtype, im, threads=1).data, quantize(x, qtype, im, threads=2).data)


@pytest.mark.parametrize("qtype", ["Q4_0", "Q8_0", "Q5_1", "F16"])
@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
def test_nonfinite_input_names_row_and_column(qtype, bad):
    x = np.ones((6, 64), dtype=np.float32)
    x[4, 37] = bad
    with pytest.raises(NonFiniteError, match=r"row 4, column 37"):
        quantize(x, qtype, name="blk.0.attn_q.weight")
    with pytest.raises(NonFiniteError, match="row 4, column 37"):
        quantize(x, qtype, imatrix=np.ones(64, np.float32))


def test_row_length_not_a_block_multiple_is_refused():
    with pytest.raises(ShapeError, match=r"blk.1.w: row length 48 is not a multiple of Q4_0's block size 32"):
        quantize(np.ones((2, 48), np.float32), "Q4_0", name="blk.1.w")


def test_bad_imatrix_and_types_are_refused():
    x = np.ones((2, 64), np.float32)
    with pytest.raises(ImatrixError, match="imatrix has 32 values, the row has 64 columns"):
        quantize(x, "Q4_0", imatrix=np.ones(32, np.float32))
    with pytest.raises(ImatrixError, match="finite and >= 0"):
        quantize(x, "Q4_0", imatrix=np.full(64, -1.0, np.float32))
    with pytest.raises(QuantkitError, match="unknown tensor type 'Q9_9'"):
        quantize(x, "Q9_9")
    with pytest.raises(QuantkitError, match="dtype int64"):
        quantize(np.ones((2, 64), np.int64), "Q8_0")


def test_llamacpp_selftest_error_below_threshold():
    """llama.cpp's test-quantize-fns: 0.1 + 2 cos(i + offset), error sqrt(sum sq diff) / n < 0.002."""
    n = 32 * 128
    x = (0.1 + 2 * np.cos(np.arange(n) + 0.5)).astype(np.float32).reshape(1, n)
    for qtype in TYPES:
        err = np.sqrt(np.sum((dequantize(quantize(x, qtype)) - x).astype(np.float64) ** 2)) / n
        assert err < 0.002, (qtype, err)


def test_f32_shares_float32_input_read_only_and_copies_other_dtypes():
    """F32 storage is the float32 values: float32 input is viewed (read-only), not copied; other
    dtypes are cast (f64 rounded to nearest) into fresh memory; the bytes are llama.cpp's either way."""
    x = np.random.default_rng(7).standard_normal((8, 64)).astype(np.float32)
    q = quantize(x, "F32")
    assert np.shares_memory(q.data, x) and not q.data.flags.writeable
    np.testing.assert_array_equal(q.data, ref.quantize(x, "F32"))
    wide = x.astype(np.float64) + 1e-9
    q64 = quantize(wide, "F32")
    assert not np.shares_memory(q64.data, wide)
    np.testing.assert_array_equal(q64.data, ref.quantize(wide.astype(np.float32), "F32"))
