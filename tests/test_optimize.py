"""``quantize(..., optimize=True)``: per type and per block, never a larger weighted error than
llama.cpp's bytes; same types and sizes; files llama.cpp loads and runs."""

import numpy as np
import pytest
from click.testing import CliRunner

import llamacpp_ref as ref
from quantkit import read_gguf
from quantkit.cli import main
from quantkit.errors import QuantkitError
from quantkit.eval.backends import variant_options
from quantkit.jobs.quantize import requantize
from quantkit.quants import OPTIMIZED_TYPES, dequantize, quantize
from quantkit.quants.optimize import block_errors, error_weights
from quantkit.types import quant_type
from test_requantize import llamacpp_answer

TYPES = sorted(OPTIMIZED_TYPES)
# types whose search must lower the total error on every subject (the grid types' gains are small)
STRICT = {"Q8_0", "Q4_0", "Q4_1", "Q5_0", "Q5_1", "Q2_K", "Q3_K", "Q4_K", "Q5_K", "Q6_K", "IQ4_NL", "IQ4_XS"}


def _subjects(smollm2_weights, minilm_weights):
    rng = np.random.default_rng(7)
    gauss = rng.standard_normal((16, 512)).astype(np.float32)
    heavy = (rng.standard_t(2.5, (16, 512)) * 0.02).astype(np.float32)
    smol = smollm2_weights["blk.3.ffn_down.weight"][:24, :1024]
    smol_noised = smol + rng.standard_normal(smol.shape).astype(np.float32) * np.float32(0.02 * smol.std())
    mini = minilm_weights["encoder.layer.2.intermediate.dense.weight"].T[:24, :1024]
    return {"gauss": gauss, "heavy": heavy, "smollm2": np.ascontiguousarray(smol),
            "smollm2+noise": np.ascontiguousarray(smol_noised), "minilm": np.ascontiguousarray(mini)}


@pytest.fixture(scope="module")
def subjects(smollm2_weights, minilm_weights):
    return _subjects(smollm2_weights, minilm_weights)


CASES = [(t, im) for t in TYPES for im in (False, True) if im or not quant_type(t).requires_imatrix]


@pytest.mark.parametrize("qtype,with_imatrix", CASES)
def test_optimize_never_worse_per_block(qtype, with_imatrix, subjects):
    qt = quant_type(qtype)
    rng = np.random.default_rng(3)
    total_default = total_opt = 0.0
    for name, x in subjects.items():
        im = (rng.random(x.shape[1]) * 2 + 0.05).astype(np.float32) if with_imatrix else None
        default = quantize(x, qtype, imatrix=im)
        opt = quantize(x, qtype, imatrix=im, optimize=True)
        assert opt.qtype == default.qtype and opt.shape == default.shape and opt.data.size == default.data.size
        w = error_weights(qtype, x, im)
        e_def = block_errors(x, dequantize(default), w, qt.block_size)
        e_opt = block_errors(x, dequantize(opt), w, qt.block_size)
        worse = e_opt > e_def
        assert not worse.any(), f"{name}: {int(worse.sum())} blocks worse, e.g. {e_opt[worse][:3]} > {e_def[worse][:3]}"
        total_default += e_def.sum()
        total_opt += e_opt.sum()
    assert total_opt <= total_default
    if qtype in STRICT:
        assert total_opt < 0.999 * total_default, (qtype, total_opt / total_default)


def test_default_path_stays_llamacpp(subjects):
    x = subjects["smollm2+noise"]
    for qtype in ("Q4_0", "Q4_K", "IQ4_XS"):
        np.testing.assert_array_equal(quantize(x, qtype, optimize=False).data, ref.quantize(x, qtype), err_msg=qtype)


def test_error_weights_follow_llamacpp():
    """Spot checks of the weights each type's search uses (ggml-quants.c)."""
    x = np.array([[3.0, -4.0] * 128], dtype=np.float32)
    im = np.full(256, 2.0, np.float32)
    np.testing.assert_allclose(error_weights("Q4_0", x, None), 1.0)
    np.testing.assert_allclose(error_weights("Q2_K", x, None)[0, :2], [3.0, 4.0])
    np.testing.assert_allclose(error_weights("Q4_K", x, None)[0, :2], [np.sqrt(12.5) + 3, np.sqrt(12.5) + 4])
    np.testing.assert_allclose(error_weights("Q6_K", x, None)[0, :2], [9.0, 16.0])
    np.testing.assert_allclose(error_weights("Q6_K", x, im)[0, :2], [2.0, 2.0])
    np.testing.assert_allclose(error_weights("Q3_K", x, im)[0, :2], [2 * np.sqrt(25 + 9), 2 * np.sqrt(25 + 16)])
    np.testing.assert_allclose(error_weights("IQ2_XS", x, im)[0, :2], [2 * np.sqrt(12.5 + 9), 2 * np.sqrt(12.5 + 16)])
    np.testing.assert_allclose(error_weights("IQ2_S", x, None)[0, :2], [0.25 * 25 + 9, 0.25 * 25 + 16])


@pytest.fixture(scope="module")
def smollm2_files(smollm2_path, tmp_path_factory):
    """SmolLM2 requantized default and --optimize, per preset."""
    out = tmp_path_factory.mktemp("optimize")
    files = {}
    for preset in ("Q4_0", "Q4_K_M"):
        files[preset] = (out / f"{preset}.gguf", out / f"{preset}.opt.gguf")
        requantize(smollm2_path, files[preset][0], preset, progress=False)
        if preset == "Q4_0":  # through the CLI, as a user runs it
            result = CliRunner().invoke(main, ["quantize", str(smollm2_path), str(files[preset][1]), preset, "--optimize"])
            assert result.exit_code == 0, result.output
        else:
            requantize(smollm2_path, files[preset][1], preset, progress=False, optimize=True)
    return files


@pytest.mark.parametrize("preset", ["Q4_0", "Q4_K_M"])
def test_optimized_file_same_types_sizes_and_runs(preset, smollm2_files, smollm2_path):
    default, opt = smollm2_files[preset]
    assert default.stat().st_size == opt.stat().st_size
    changed = 0
    with read_gguf(default) as a, read_gguf(opt) as b:
        assert [(t.name, t.qtype, t.shape) for t in a.tensors] == [(t.name, t.qtype, t.shape) for t in b.tensors]
        for ta, tb in zip(a.tensors, b.tensors):
            assert ta.data.size == tb.data.size
            if ta.qtype.name in OPTIMIZED_TYPES and ta.qtype.name != "Q8_0" and len(ta.shape) == 2:
                changed += not np.array_equal(ta.data, tb.data)
            if ta.name == "blk.0.ffn_down.weight":  # the default file still holds llama.cpp's bytes
                with read_gguf(smollm2_path) as src:
                    np.testing.assert_array_equal(ta.data, ref.quantize(src.tensor(ta.name).dequantize(), ta.qtype.name))
        assert changed > 0
    answer = llamacpp_answer(opt)  # a 135M model's greedy answer moves with any change of the weights
    assert len(answer.split()) >= 4, answer


def test_scorecard_variant_names():
    assert variant_options("Q4_K_M+OPT") == ("Q4_K_M", {"optimize": True})
    assert variant_options("Q4_K_M") == ("Q4_K_M", {})
    with pytest.raises(QuantkitError, match=r"\+FAST"):
        variant_options("Q4_K_M+FAST")
