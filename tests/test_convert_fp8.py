"""FP8 checkpoints: float8 (e4m3) weights with ``weight_scale_inv`` scales, as DeepSeek-V3 and the Qwen3
FP8 releases ship them, convert to the bytes of llama.cpp's convert_hf_to_gguf.py run on the same folder.

The folders are made here: a tiny random Qwen3 whose linear weights are quantized by hand to e4m3
with one float32 scale per 128 x 128 block (DeepSeek-V3's layout and config; hidden size 192 and
feed-forward 320 leave partial blocks), one bfloat16 scale per tensor, or (llm-compressor's
compressed-tensors layout) one float32 ``weight_scale`` per row.
"""

import functools
import json
import os
import shutil
import sys
from pathlib import Path

import numpy as np
import pytest
from test_convert_support import (
    _WORK,
    LlamaServer,
    gguf_differences,
    peer_convert,
    quantkit_convert,
)

from quantkit.errors import FP8Error, QuantkitError

BLOCK = 128
E4M3_MAX = 448.0
LINEAR = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")
CONFIG = dict(hidden_size=192, intermediate_size=320, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
              head_dim=48, max_position_embeddings=256, vocab_size=49152, tie_word_embeddings=True)


def fp8_blocks(w: np.ndarray, block: tuple[int, int]) -> tuple[np.ndarray, np.ndarray]:
    """(e4m3 weight, float32 scale per ``block`` (rows, cols) tile: amax / 448) of a float32 matrix; the
    last tiles may be partial."""
    import ml_dtypes

    rows, cols = w.shape
    (br, bc), (nr, nc) = block, (-(-rows // block[0]), -(-cols // block[1]))
    padded = np.zeros((nr * br, nc * bc), dtype=np.float32)
    padded[:rows, :cols] = w
    scale = np.maximum(np.abs(padded.reshape(nr, br, nc, bc)).max(axis=(1, 3)) / np.float32(E4M3_MAX), np.float32(1e-12))
    full = np.repeat(np.repeat(scale, br, 0), bc, 1)[:rows, :cols]
    return (w / full).astype(ml_dtypes.float8_e4m3fn), scale


@functools.cache
def fp8_model(smollm2_dir: Path, layout: str) -> Path:
    """A tiny FP8 Qwen3 folder: ``layout`` "block" (float32 128x128 block scales), "tensor" (one bf16 scale)
    or "channel" (compressed-tensors, one float32 scale per row)."""
    import torch
    import transformers
    from safetensors.torch import save_file

    folder = _WORK / f"tiny-qwen3-fp8-{layout}"
    torch.manual_seed(0)
    model = transformers.AutoModelForCausalLM.from_config(transformers.Qwen3Config(**CONFIG)).to(torch.bfloat16)
    model.save_pretrained(str(folder))
    state = {}
    for name, value in model.state_dict().items():
        if name == "lm_head.weight":
            continue
        if not name.endswith(tuple(f"{p}.weight" for p in LINEAR)):
            state[name] = value.contiguous()
            continue
        w = value.float().numpy()
        q, scale = fp8_blocks(w, {"block": (BLOCK, BLOCK), "channel": (1, w.shape[1]), "tensor": w.shape}[layout])
        state[name] = torch.from_numpy(q.view(np.uint8)).view(torch.float8_e4m3fn)
        if layout == "tensor":
            state[name + "_scale_inv"] = torch.from_numpy(scale).reshape(()).to(torch.bfloat16)
        else:
            state[name + ("_scale" if layout == "channel" else "_scale_inv")] = torch.from_numpy(scale)
    save_file(state, str(folder / "model.safetensors"), metadata={"format": "pt"})
    config = json.loads((folder / "config.json").read_text())
    config["quantization_config"] = {"quant_method": "fp8", "fmt": "e4m3", "activation_scheme": "dynamic"}
    if layout == "channel":
        weights = {"num_bits": 8, "type": "float", "strategy": "channel", "symmetric": True, "dynamic": False,
                   "group_size": None, "block_structure": None}
        activations = {"num_bits": 8, "type": "float", "strategy": "token", "symmetric": True, "dynamic": True}
        config["quantization_config"] = {
            "quant_method": "compressed-tensors", "format": "float-quantized", "ignore": ["lm_head"],
            "config_groups": {"group_0": {"targets": ["Linear"], "weights": weights, "input_activations": activations}},
        }
    if layout == "block":
        config["quantization_config"]["weight_block_size"] = [BLOCK, BLOCK]
    (folder / "config.json").write_text(json.dumps(config, indent=2))
    for file in ("tokenizer.json", "tokenizer_config.json"):
        shutil.copy(smollm2_dir / file, folder / file)
    return folder


@pytest.mark.parametrize("preset", ["F16", "Q8_0"])
def test_block_scaled_fp8_converts_like_llama_cpp(smollm2_hf_dir, preset):
    folder = fp8_model(smollm2_hf_dir, "block")
    ours = quantkit_convert(folder, preset)
    assert gguf_differences(ours, peer_convert(folder, preset.lower())) == []


@pytest.mark.parametrize("layout", ["tensor", "channel"])
def test_per_tensor_and_per_row_fp8_convert_like_llama_cpp(smollm2_hf_dir, layout):
    folder = fp8_model(smollm2_hf_dir, layout)
    assert gguf_differences(quantkit_convert(folder, "F16"), peer_convert(folder, "f16")) == []


@pytest.mark.parametrize("layout, preset", [("block", "Q8_0"), ("channel", "F16")])
def test_fp8_rows_stream_in_chunks_across_scale_blocks(smollm2_hf_dir, monkeypatch, layout, preset):
    """Chunks of 48 rows cut the 128-row scale blocks (or start mid-way in per-row scales); the bytes stay the peer's."""
    import quantkit
    from quantkit import engine

    folder = fp8_model(smollm2_hf_dir, layout)
    monkeypatch.setattr(engine, "CHUNK_BYTES", 48 * 4 * CONFIG["intermediate_size"])
    ours = quantkit.convert(folder, _WORK / f"fp8-chunked-{layout}-{preset}.gguf", preset, progress=False).path
    assert gguf_differences(ours, peer_convert(folder, preset.lower())) == []


def test_fp8_weights_are_float8_times_scale_and_scales_are_not_tensors(smollm2_hf_dir):
    import ml_dtypes
    import torch
    from safetensors import safe_open

    from quantkit import read_gguf

    folder = fp8_model(smollm2_hf_dir, "block")
    with safe_open(str(folder / "model.safetensors"), framework="pt") as f:
        q = f.get_tensor("model.layers.1.mlp.down_proj.weight").view(torch.uint8).numpy()
        scale = f.get_tensor("model.layers.1.mlp.down_proj.weight_scale_inv").numpy()
    expected = q.view(ml_dtypes.float8_e4m3fn).astype(np.float32) * np.repeat(np.repeat(scale, BLOCK, 0), BLOCK, 1)[:192, :320]
    with read_gguf(quantkit_convert(folder, "F32")) as f:
        names = [t.name for t in f.tensors]
        down = f.tensor("blk.1.ffn_down.weight").dequantize()
    assert np.array_equal(down.reshape(expected.shape), expected)
    assert len(names) == 2 * 11 + 2 and not any("scale" in n for n in names)
    with LlamaServer(quantkit_convert(folder, "Q8_0")) as server:
        assert len(server.greedy("The quick brown fox", 4)) == 4


def _edited(smollm2_dir: Path, name: str, edit) -> Path:
    folder = _WORK / name
    shutil.copytree(fp8_model(smollm2_dir, "block"), folder)
    edit(folder)
    return folder


def _set_quantization(folder: Path, **entries) -> None:
    config = json.loads((folder / "config.json").read_text())
    config["quantization_config"].update(entries)
    (folder / "config.json").write_text(json.dumps(config))


@pytest.mark.parametrize("case, message", [
    ("gptq", "quant_method 'gptq' is not supported"),
    ("block64", "needs shape (3, 5) for blocks of (64, 64)"),
    ("int8", "compressed-tensors format 'int-quantized'"),
])
def test_fp8_bad_input_is_one_line(smollm2_hf_dir, tmp_path, case, message):
    import quantkit

    edit = {"gptq": lambda f: _set_quantization(f, quant_method="gptq"),
            "block64": lambda f: _set_quantization(f, weight_block_size=[64, 64]),
            "int8": lambda f: _set_quantization(f, quant_method="compressed-tensors", format="int-quantized")}[case]
    folder = _edited(smollm2_hf_dir, f"fp8-{case}", edit)
    with pytest.raises(QuantkitError) as err:
        quantkit.convert(folder, tmp_path / "out.gguf", "F16", progress=False)
    assert message in str(err.value) and "\n" not in str(err.value) and len(str(err.value)) <= 200
    assert isinstance(err.value, FP8Error)


def test_fp8_peak_rss_flat_in_tensor_size(tmp_path, smollm2_hf_dir):
    """Float8 weights are read and dequantized chunk by chunk: growing each of the three MLP weights from
    128 to 256 MB of float32 moves quantkit's peak RSS (a fresh process, VmHWM) by far less than one."""
    from safetensors.numpy import save_file
    from test_convert_support import (
        LLAMA_CONFIG,
        llama_weights,
        make_llama_folder,
        run_measured,
    )

    base = {k: v for k, v in llama_weights().items() if ".mlp." not in k}
    peaks = {}
    for rows in (1 << 19, 1 << 20):
        config = dict(LLAMA_CONFIG, intermediate_size=rows,
                      quantization_config={"quant_method": "fp8", "weight_block_size": [BLOCK, BLOCK]})
        folder = make_llama_folder(tmp_path / str(rows), smollm2_hf_dir, base, config)
        rng = np.random.default_rng(0)
        mlp = {}
        for name, shape in (("gate_proj", (rows, 64)), ("up_proj", (rows, 64)), ("down_proj", (64, rows))):
            weights, scale = fp8_blocks(rng.standard_normal(shape, dtype=np.float32), (BLOCK, BLOCK))
            mlp[f"model.layers.0.mlp.{name}.weight"] = weights
            mlp[f"model.layers.0.mlp.{name}.weight_scale_inv"] = scale
        save_file({**base, **mlp}, str(folder / "model.safetensors"))
        command = [sys.executable, "-m", "quantkit.cli", "convert", str(folder), "-o", str(tmp_path / f"{rows}.gguf"),
                   "--type", "F16"]
        peaks[rows] = run_measured(command, {**os.environ, "HF_HUB_OFFLINE": "1"})[1]
    tensor_growth_mb = (1 << 19) * 64 * 4 / 2**20
    assert (tmp_path / f"{1 << 20}.gguf").stat().st_size > 128e6
    assert peaks[1 << 20] - peaks[1 << 19] < tensor_growth_mb / 4, (peaks, tensor_growth_mb)
