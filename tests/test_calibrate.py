"""--optimize --calibrate: error-feedback (GPTQ) quantization inside the GGUF block formats.

On a synthetic layer with correlated inputs the output error ||(W - Q) X|| falls below the default's
for legacy, k-quant and IQ types; files made with --calibrate (convert) and --calibrate-from
(quantize) keep the default's tensor types and sizes, and llama.cpp loads and runs them; the layer
streaming yields the same second moments as one full forward pass."""

import shutil

import numpy as np
import pytest
import torch
from click.testing import CliRunner
from test_convert_support import LlamaServer

from quantkit import quantize
from quantkit.cli import main
from quantkit.errors import HessianError, QuantkitError
from quantkit.ggufio import read_gguf
from quantkit.jobs.calibrate import DEFAULT_CALIBRATION, LayerHessians, calibration_text
from quantkit.quants import dequantize

TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json")
CTX, CHUNKS = 64, 4


@pytest.fixture(autouse=True)
def offline(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")


def _correlated_layer(n: int, rows: int = 64, tokens: int = 2048, seed: int = 0):
    """Weights (rows, n) and inputs (tokens, n) with correlated columns of unequal scale."""
    rng = np.random.default_rng(seed)
    mix = rng.normal(size=(n, n)) / np.sqrt(n) + 0.5 * np.eye(n)
    x = (rng.normal(size=(tokens, n)) @ mix) * np.exp(0.5 * rng.normal(size=n))
    return rng.normal(size=(rows, n)).astype(np.float32), x


@pytest.mark.parametrize("qtype", ["Q4_0", "Q5_1", "Q2_K", "Q3_K", "Q4_K", "IQ4_XS"])
def test_error_feedback_lowers_the_output_error(qtype):
    w, x = _correlated_layer(512)
    hessian = x.T @ x

    def output_error(q):
        return np.linalg.norm((w - dequantize(q).astype(np.float64)) @ x.T)

    default = quantize(w, qtype)
    fed_back = quantize(w, qtype, optimize=True, hessian=hessian)
    assert fed_back.qtype == default.qtype and fed_back.nbytes == default.nbytes
    assert output_error(fed_back) < 0.9 * output_error(default)
    # rows are independent: the result of a row does not depend on the other rows
    assert np.array_equal(quantize(w[5:9], qtype, optimize=True, hessian=hessian).data,
                          fed_back.data.reshape(len(w), -1)[5:9].reshape(-1))


def test_hessian_input_errors():
    w, x = _correlated_layer(64, rows=4, tokens=128)
    with pytest.raises(QuantkitError, match="only with optimize=True"):
        quantize(w, "Q4_0", hessian=x.T @ x)
    with pytest.raises(HessianError, match=r"w: hessian has shape \(32, 32\), the row has 64 columns"):
        quantize(w, "Q4_0", optimize=True, hessian=np.eye(32), name="w")
    with pytest.raises(HessianError, match="non-finite"):
        quantize(w, "Q4_0", optimize=True, hessian=np.full((64, 64), np.nan))


def test_calibration_text_is_held_out_from_the_evaluation_half():
    full = DEFAULT_CALIBRATION.read_text(encoding="utf-8")
    held_in = calibration_text()
    assert full.endswith(held_in) and len(held_in) < len(full) // 2 + 1
    assert calibration_text("mine") == "mine"


@pytest.fixture(scope="module")
def tiny_dir(tmp_path_factory, smollm2_hf_dir):
    """A 2-layer random Llama, 256 wide (k-quant rows), with SmolLM2's tokenizer."""
    from transformers import AutoModelForCausalLM, LlamaConfig

    config = LlamaConfig(vocab_size=49152, hidden_size=256, intermediate_size=512, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=2, tie_word_embeddings=False)
    folder = tmp_path_factory.mktemp("tiny-cal")
    torch.manual_seed(0)
    AutoModelForCausalLM.from_config(config).save_pretrained(folder)
    for name in TOKENIZER_FILES:
        shutil.copy(smollm2_hf_dir / name, folder / name)
    return folder


@pytest.fixture(scope="module")
def calibration_file(tmp_path_factory):
    path = tmp_path_factory.mktemp("text") / "calibration.txt"
    path.write_text(calibration_text()[:6000], encoding="utf-8")
    return path


def _tensors(path) -> dict:
    with read_gguf(path) as f:
        return {t.name: (t.qtype.name, tuple(t.shape), bytes(t.data)) for t in f.tensors}


def _same_layout_other_blocks(default: dict, optimized: dict, searched: dict) -> None:
    """Same names, types, shapes and byte sizes; decoder matrices differ from the default, the rest (no
    hessian: embeddings, output, norms) is byte-identical to the data-free ``--optimize`` file ``searched``."""
    assert {k: v[:2] for k, v in default.items()} == {k: v[:2] for k, v in optimized.items()}
    assert all(len(default[k][2]) == len(optimized[k][2]) for k in default)
    matrices = [k for k, v in default.items() if k.startswith("blk.") and len(v[1]) == 2]
    assert matrices and all(default[k][2] != optimized[k][2] for k in matrices)
    assert all(searched[k][2] == optimized[k][2] for k in default if k not in matrices)


@pytest.mark.parametrize("preset", ["Q4_K_M", "IQ4_XS"])
def test_convert_calibrate_keeps_types_and_runs_in_llama_cpp(tiny_dir, calibration_file, tmp_path, preset):
    runner = CliRunner()
    default, searched, optimized = tmp_path / "default.gguf", tmp_path / "opt.gguf", tmp_path / "cal.gguf"
    for out, extra in ((default, []), (searched, ["--optimize"]),
                       (optimized, ["--optimize", "--calibrate", "--calibration", str(calibration_file)])):
        result = runner.invoke(main, ["convert", str(tiny_dir), "-o", str(out), "--type", preset, *extra])
        assert result.exit_code == 0, result.output
    _same_layout_other_blocks(_tensors(default), _tensors(optimized), _tensors(searched))
    with LlamaServer(optimized) as server:
        tokens = server.greedy("The capital of France is", 8)
    assert len(tokens) == 8


def test_layer_streaming_equals_a_full_forward_pass(tiny_dir):
    """Layer 0's and layer 1's matrices, from the float model, equal mean x x^T hooked in one forward pass."""
    from transformers import AutoModelForCausalLM

    text = calibration_text()
    streamed = LayerHessians(tiny_dir, text, ctx=CTX, chunks=CHUNKS, progress=False)
    model = AutoModelForCausalLM.from_pretrained(tiny_dir, dtype=torch.float32).eval()
    seen = {}
    hooks = [model.model.layers[i].self_attn.o_proj.register_forward_pre_hook(
        lambda m, args, i=i: seen.setdefault(i, []).append(args[0].reshape(-1, args[0].shape[-1]).double()))
        for i in range(2)]
    with torch.inference_mode():
        for chunk in streamed.token_chunks:
            model(input_ids=torch.tensor([chunk]), use_cache=False)
    for h in hooks:
        h.remove()
    for i in range(2):
        x = torch.cat(seen[i])
        expected = (x.T @ x / len(x)).numpy()
        np.testing.assert_allclose(streamed.get(f"blk.{i}.attn_output.weight"), expected, rtol=1e-5,
                                   atol=1e-5 * np.abs(expected).max())  # float32 products per chunk


def test_quantize_calibrate_from_a_hessian_file(tiny_dir, calibration_file, tmp_path):
    runner = CliRunner()
    f16, imatrix, hessians = tmp_path / "f16.gguf", tmp_path / "imatrix.gguf", tmp_path / "h.safetensors"
    assert runner.invoke(main, ["convert", str(tiny_dir), "-o", str(f16), "--type", "F16"]).exit_code == 0
    result = runner.invoke(main, ["imatrix", str(tiny_dir), "-f", str(calibration_file), "-o", str(imatrix),
                                  "--ctx", str(CTX), "--chunks", str(CHUNKS), "--hessians", str(hessians)])
    assert result.exit_code == 0, result.output
    default, searched, optimized = tmp_path / "default.gguf", tmp_path / "opt.gguf", tmp_path / "cal.gguf"
    assert runner.invoke(main, ["quantize", str(f16), str(default), "Q4_K_M"]).exit_code == 0
    assert runner.invoke(main, ["quantize", str(f16), str(searched), "Q4_K_M", "--optimize"]).exit_code == 0
    result = runner.invoke(main, ["quantize", str(f16), str(optimized), "Q4_K_M", "--optimize",
                                  "--calibrate-from", str(hessians)])
    assert result.exit_code == 0, result.output
    ours, base, source = _tensors(optimized), _tensors(default), _tensors(f16)
    _same_layout_other_blocks(base, ours, _tensors(searched))
    # one tensor, by hand: the F16 rows quantized with the stored matrix (Q/K rows permuted: no matter)
    from safetensors.numpy import load_file

    name = "blk.1.attn_q.weight"
    qtype, shape, data = source[name]
    values = np.frombuffer(data, dtype=np.float16).reshape(shape).astype(np.float32)
    expected = quantize(values, ours[name][0], optimize=True, hessian=load_file(hessians)[name])
    assert bytes(expected.data) == ours[name][2]
    with LlamaServer(optimized) as server:
        assert len(server.greedy("Hello", 4)) == 4


def test_bad_hessian_file_is_one_line_exit_2(tiny_dir, tmp_path):
    runner = CliRunner()
    f16 = tmp_path / "f16.gguf"
    assert runner.invoke(main, ["convert", str(tiny_dir), "-o", str(f16), "--type", "F16"]).exit_code == 0
    garbage = tmp_path / "bad.safetensors"
    garbage.write_bytes(b"not a safetensors file")
    from safetensors.numpy import save_file

    wrong = tmp_path / "wrong.safetensors"
    save_file({"blk.0.attn_q.weight": np.eye(8, dtype=np.float32)}, str(wrong))
    unrelated = tmp_path / "unrelated.safetensors"
    save_file({"other": np.eye(8, dtype=np.float32)}, str(unrelated))
    for path, message in ((garbage, "not a safetensors hessian file"),
                          (wrong, "blk.0.attn_q.weight: hessian has shape (8, 8), the tensor has shape (256, 256)"),
                          (unrelated, "has no matrix for any tensor to quantize")):
        result = runner.invoke(main, ["quantize", str(f16), str(tmp_path / "out.gguf"), "Q4_K_M", "--optimize",
                                      "--calibrate-from", str(path), "--force"])
        assert result.exit_code == 2, result.output
        lines = result.output.strip().splitlines()
        assert len(lines) == 1 and message in lines[0] and len(lines[0]) <= 200, result.output
    result = runner.invoke(main, ["quantize", str(f16), str(tmp_path / "out.gguf"), "Q4_K_M",
                                  "--calibrate-from", str(unrelated), "--force"])
    assert result.exit_code == 2 and "needs --optimize" in result.output


def test_scorecard_variant_suffix():
    from quantkit.eval.backends import preset_of, variant_options

    assert variant_options("Q4_K_M+CAL") == ("Q4_K_M", {"optimize": True, "calibrate": True})
    assert variant_options("Q4_K_M") == ("Q4_K_M", {})
    assert preset_of(None, "Q4_K_M+CAL") == "Q4_K_M"
    with pytest.raises(QuantkitError, match=r"unknown suffix \+XYZ; known: \+OPT, \+CAL"):
        variant_options("Q4_K_M+XYZ")
