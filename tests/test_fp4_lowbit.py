"""MXFP4, NVFP4, Q1_0, Q2_0: bytes equal to llama.cpp's ggml_quantize_chunk, with and without an imatrix,
values equal to its dequantize_row_*, files llama.cpp loads and generates from."""

import json

import numpy as np
import pytest
from click.testing import CliRunner
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

import llamacpp_ref as ref
from quant_checks import check
from quantkit import read_gguf, write_gguf
from quantkit.cli import main
from quantkit.quants import QuantizedTensor, fp4, quantize
from quantkit.quants.reference import reference_quantizer
from quantkit.types import GGMLType, known_type

TYPES = ["MXFP4", "NVFP4", "Q1_0", "Q2_0"]


def rows_of(kind: str, shape=(16, 1024)) -> np.ndarray:
    rng = np.random.default_rng(sum(map(ord, kind)))
    x = rng.standard_normal(shape)
    if kind == "heavy_tail":
        x = rng.standard_t(1.5, shape)
    elif kind == "zeros":
        x[:] = 0.0
        x[1, 128:256] = 1.0  # one block non-zero
    elif kind == "constant":
        x[:] = 0.37
        x[1] = -0.37
    elif kind == "tiny":
        x *= 1e-20
    elif kind == "huge":
        x *= 3e4
    elif kind == "subnormal":
        x *= 1e-42
    elif kind == "grid":  # values on the FP4 / ternary grids, where nearest-entry ties are exact
        x = rng.choice(np.array([-6, -4, -3, -2, -1.5, -1, -0.5, -0.25, 0, 0.25, 0.5, 1, 1.5, 2, 3, 4, 5, 6]), shape)
    return x.astype(np.float32)


KINDS = ["random", "heavy_tail", "zeros", "constant", "tiny", "huge", "subnormal", "grid"]


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("qtype", TYPES)
def test_rows_match_llamacpp_with_and_without_imatrix(qtype, kind):
    x = rows_of(kind)
    check(x, qtype)
    check(x, qtype, np.random.default_rng(1).random(x.shape[1]).astype(np.float32) * 10)


@pytest.mark.parametrize("qtype", TYPES)
def test_imatrix_is_accepted_and_ignored_as_by_llamacpp(qtype):
    x = rows_of("random", (8, 512))
    w = (np.random.default_rng(2).random(512) * 100).astype(np.float32)
    assert not ref.requires_imatrix(qtype)
    theirs = ref.quantize(x, qtype, w)
    np.testing.assert_array_equal(theirs, ref.quantize(x, qtype))  # C ignores it ...
    np.testing.assert_array_equal(quantize(x, qtype, imatrix=w).data, theirs)  # ... and so does quantkit


@pytest.mark.parametrize("kind", ["random", "heavy_tail", "zeros", "tiny", "huge", "subnormal", "grid"])
@pytest.mark.parametrize("qtype", TYPES)
def test_reference_gives_the_kernel_bytes(qtype, kind):
    x = rows_of(kind, (4, 512))
    with np.errstate(all="ignore"):
        np.testing.assert_array_equal(reference_quantizer(qtype)(x, None).reshape(-1),
                                      quantize(x, qtype).data)


def test_mxfp4_exponent_at_every_power_of_two():
    """floor(log2f(amax)) rounds up just below a power of two for most exponents, and wraps below 2^-125."""
    rows = []
    for e in range(-149, 128):
        p = int(np.array([2.0**e], np.float32).view(np.uint32)[0])
        for amax_bits in range(max(p - 3, 1), p + 2):
            amax = np.array([amax_bits], np.uint32).view(np.float32)[0]
            row = np.full(32, 0.1, np.float32) * amax
            row[7] = -amax
            rows.append(row)
    x = np.array(rows, np.float32)
    x = x[np.all(np.isfinite(x), axis=1)]
    check(x, "MXFP4")
    exponents = quantize(x, "MXFP4").data.reshape(-1, 17)[:, 0]
    assert len(set(exponents.tolist())) > 250


def test_nvfp4_scale_rounding_and_saturation():
    """amax / 6 around UE4M3's rounding points, its subnormals and past its largest value (448)."""
    codes = np.arange(1, 127)
    values = np.array([fp4.ue4m3_half(int(c)) for c in codes], np.float32) * 2
    amax = np.concatenate([values * 6, values * 6 * np.float32(1.0 + 2**-4), values * 6 * np.float32(1.0 - 2**-5),
                           [448 * 6, 448 * 7, 1e30, 2**-12, 2**-11, 1e-9]]).astype(np.float32)
    x = np.random.default_rng(3).uniform(-1, 1, (amax.size, 64)).astype(np.float32) * amax[:, None]
    x[:, 5] = amax
    x[:, 21] = -amax
    check(x, "NVFP4")
    assert len(set(quantize(x, "NVFP4").data.reshape(-1, 36)[:, :4].reshape(-1).tolist())) > 100


@settings(max_examples=30, deadline=None, derandomize=True)
@given(qtype=st.sampled_from(TYPES),
       x=hnp.arrays(np.float32, (2, 128), elements=st.floats(allow_nan=False, allow_infinity=False, width=32)))
def test_any_finite_input_matches_llamacpp(qtype, x):
    check(x, qtype)


@pytest.mark.parametrize("qtype", TYPES)
def test_real_weights_match_llamacpp(qtype, smollm2_weights, minilm_weights):
    w = np.random.default_rng(4).random(1536).astype(np.float32)
    for x in (smollm2_weights["blk.3.ffn_down.weight"], minilm_weights["encoder.layer.2.output.dense.weight"]):
        assert x.shape[1] == 1536
        check(x, qtype)
        check(x, qtype, w)
    if known_type(qtype).block_size <= 64:  # 576-wide rows
        check(smollm2_weights["blk.3.attn_q.weight"], qtype)
        check(minilm_weights["encoder.layer.2.attention.self.query.weight"], qtype)


def test_q2_0_is_in_the_type_table_with_ggml_geometry():
    q2 = known_type("q2_0")
    assert (int(q2.ggml), q2.block_size, q2.type_size) == (42, 64, 18)
    assert known_type(42) is q2 and GGMLType.Q2_0 == 42 and GGMLType.F32 == 0
    for name, geometry in {"MXFP4": (39, 32, 17), "NVFP4": (40, 64, 36), "Q1_0": (41, 128, 18)}.items():
        t = known_type(name)
        assert (int(t.ggml), t.block_size, t.type_size) == geometry
    lib = ref.lib()
    lib.ggml_blck_size.restype = lib.ggml_type_size.restype = ref.ctypes.c_size_t
    for name in TYPES:
        t = known_type(name)
        assert (lib.ggml_blck_size(int(t.ggml)), lib.ggml_type_size(int(t.ggml))) == (t.block_size, t.type_size)


def test_gguf_files_hold_every_new_type(tmp_path):
    x = rows_of("random", (4, 256))
    tensors = {}
    for qtype in TYPES:
        q = quantize(x, qtype)
        tensors[f"w.{qtype}"] = QuantizedTensor(q.qtype, q.shape, q.data)
    path = write_gguf(tmp_path / "new.gguf", {"general.architecture": "llama"}, tensors)
    with read_gguf(path) as f:
        for t in f.tensors:
            qtype = t.name.split(".")[1]
            assert t.qtype.name == qtype and t.shape == (4, 256)
            np.testing.assert_array_equal(t.data, ref.quantize(x, qtype))
            np.testing.assert_array_equal(t.dequantize().reshape(-1), ref.dequantize(t.data, qtype, x.size))
    result = CliRunner().invoke(main, ["inspect", str(path), "--json"])
    assert result.exit_code == 0, result.output
    info = json.loads(result.output)
    assert info["totals"]["types"] == {qtype: 1 for qtype in TYPES}
    assert {t["name"]: t["bytes"] for t in info["tensors"]} == {f"w.{q}": 4 * known_type(q).row_bytes(256) for q in TYPES}


# --- SmolLM2 files with --tensor-type set to each new type, run by llama.cpp ---------------------------------

# the tensors each type takes: 576-wide rows fit 32- and 64-value blocks, Q1_0 needs 1536-wide ffn_down
OVERRIDES = {"MXFP4": r"blk\.\d+\.(attn|ffn)_", "NVFP4": r"blk\.\d+\.(attn|ffn)_", "Q1_0": "ffn_down",
             "Q2_0": r"blk\.\d+\.ffn_"}


@pytest.mark.parametrize("qtype", TYPES)
def test_llamacpp_generates_from_smollm2_with_tensor_type(qtype, smollm2_path, tmp_path):
    from test_convert_support import LlamaServer

    out = tmp_path / f"smollm2.{qtype}.gguf"
    result = CliRunner().invoke(main, ["quantize", str(smollm2_path), str(out), "Q8_0",
                                       "--tensor-type", f"{OVERRIDES[qtype]}={qtype.lower()}"])
    assert result.exit_code == 0, result.output
    with read_gguf(smollm2_path) as src, read_gguf(out) as f:
        ours = [t for t in f.tensors if t.qtype.name == qtype]
        assert len(ours) >= 30
        for t in ours[:6]:  # the file's bytes are C's quantization of the source weights
            np.testing.assert_array_equal(t.data, ref.quantize(src.tensor(t.name).dequantize(), qtype), err_msg=t.name)
    with LlamaServer(out) as server:
        tokens = server.greedy("The capital of France is", 8)
        paris = server.tokenize(" Paris")
    assert 1 <= len(tokens) <= 8 and all(isinstance(t, int) for t in tokens), tokens
    if qtype in ("MXFP4", "NVFP4"):  # 4 bits per weight keep the model's answer (Q1_0 / Q2_0 lose it)
        assert tokens[:len(paris)] == paris, tokens


def test_rows_that_fit_no_block_are_refused_like_llama_quantize(smollm2_path, tmp_path):
    """576-wide rows do not split into Q1_0's 128 values and llama.cpp has no fallback for Q1_0: both refuse."""
    from test_presets import llama_quantize

    [theirs] = llama_quantize([{"src": smollm2_path, "dst": None, "preset": "Q8_0", "imatrix": None,
                                "overrides": [("attn_q", "Q1_0")]}])
    assert theirs["rc"] != 0
    result = CliRunner().invoke(main, ["quantize", str(smollm2_path), str(tmp_path / "out.gguf"), "Q8_0",
                                       "--tensor-type", "attn_q=q1_0"])
    assert result.exit_code == 2 and "Traceback" not in result.output
    assert result.output.strip() == (f"quantkit: error: {smollm2_path}: blk.0.attn_q.weight: rows of 576 do not fit "
                                     "Q1_0 and llama.cpp defines no fallback for it")
    assert not (tmp_path / "out.gguf").exists()
