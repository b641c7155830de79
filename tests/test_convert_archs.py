"""Every supported architecture on a tiny random model built from its transformers config.

Must show, per architecture: quantkit's F16 file equals llama.cpp's convert_hf_to_gguf.py output
(keys, values, tensors, bytes), and llama.cpp (xllamacpp) loads quantkit's file and generates tokens.
Models: hidden 64, 2 layers, SmolLM2's BPE tokenizer or a SentencePiece model trained here,
weights saved in bf16, f16 or f32 so each source dtype is read.
"""

import functools
import os
import shutil
from pathlib import Path

import numpy as np
import pytest
from test_convert_support import _WORK, LlamaServer, gguf_differences, peer_convert, quantkit_convert

os.environ.setdefault("HF_HUB_OFFLINE", "1")

COMMON = dict(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
              num_key_value_heads=2, max_position_embeddings=256)
SPM_TEXT = ("The quick brown fox jumps over the lazy dog. Quantization maps weights to few bits. "
            "llama.cpp runs GGUF files on CPUs and GPUs. Numbers 0 1 2 3 4 5 6 7 8 9.\n") * 40

# name -> (config class, config kwargs, torch dtype name, tokenizer kind)
MODELS = {
    "llama3": ("LlamaConfig", dict(COMMON, vocab_size=49152, tie_word_embeddings=False, rope_parameters={
        "rope_type": "llama3", "rope_theta": 500000.0, "factor": 8.0, "low_freq_factor": 1.0,
        "high_freq_factor": 4.0, "original_max_position_embeddings": 64}), "bfloat16", "bpe"),
    "mistral": ("MistralConfig", dict(COMMON, vocab_size=49152, head_dim=16, sliding_window=None), "float16", "bpe"),
    "qwen2": ("Qwen2Config", dict(COMMON, vocab_size=320, tie_word_embeddings=True, pad_token_id=0, bos_token_id=2,
                                 eos_token_id=1), "bfloat16", "spm"),
    "qwen3": ("Qwen3Config", dict(COMMON, vocab_size=49152, head_dim=16, tie_word_embeddings=True), "float32", "bpe"),
    "qwen3moe": ("Qwen3MoeConfig", dict(COMMON, vocab_size=49152, head_dim=16, moe_intermediate_size=32, num_experts=4,
                                        num_experts_per_tok=2, tie_word_embeddings=False), "bfloat16", "bpe"),
    "mixtral": ("MixtralConfig", dict(COMMON, vocab_size=49152, num_local_experts=4, num_experts_per_tok=2,
                                      sliding_window=None, tie_word_embeddings=False), "bfloat16", "bpe"),
    # not "phi3": llama.cpp gives models *named* phi3 special handling of "</s>", "<unk>", "<s>" tokens
    "phi_3": ("Phi3Config", dict(COMMON, vocab_size=320, original_max_position_embeddings=256, pad_token_id=0,
                                bos_token_id=2, eos_token_id=1), "bfloat16", "spm"),
    "gemma2": ("Gemma2Config", dict(COMMON, vocab_size=320, head_dim=16, sliding_window=128, pad_token_id=0,
                                    bos_token_id=2, eos_token_id=1), "bfloat16", "spm"),
    "gemma3": ("Gemma3TextConfig", dict(COMMON, vocab_size=320, head_dim=16, sliding_window=128, pad_token_id=0,
                                        bos_token_id=2, eos_token_id=1), "bfloat16", "spm"),
    "gemma3-bpe": ("Gemma3TextConfig", dict(COMMON, vocab_size=49152, head_dim=16, sliding_window=128, pad_token_id=2,
                                            bos_token_id=1, eos_token_id=2), "float32", "bpe"),
    "smollm3": ("SmolLM3Config", dict(COMMON, vocab_size=49152, tie_word_embeddings=True, pad_token_id=2, bos_token_id=1,
                                      eos_token_id=2), "bfloat16", "bpe"),
}


def _train_sentencepiece(folder: Path) -> None:
    import sentencepiece

    corpus = folder / "corpus.txt"
    corpus.write_text(SPM_TEXT)
    sentencepiece.SentencePieceTrainer.train(
        input=str(corpus), model_prefix=str(folder / "tokenizer"), vocab_size=320, model_type="bpe",
        byte_fallback=True, pad_id=0, eos_id=1, bos_id=2, unk_id=3, minloglevel=2,
    )
    corpus.unlink()
    (folder / "tokenizer.vocab").unlink()


def _random_model(name: str):
    """The transformers model MODELS[name] describes, with seeded random weights."""
    import torch
    import transformers

    config_class, kwargs, dtype, _ = MODELS[name]
    torch.manual_seed(0)
    config = getattr(transformers, config_class)(**kwargs)
    return transformers.AutoModelForCausalLM.from_config(config).to(getattr(torch, dtype))


@functools.cache
def tiny_model(name: str, smollm2_dir: Path, folder: Path | None = None) -> Path:
    """``folder`` (default _WORK/tiny-NAME): the model saved by save_pretrained, and a tokenizer."""
    tokenizer = MODELS[name][3]
    folder = folder or _WORK / f"tiny-{name}"
    _random_model(name).save_pretrained(str(folder))
    if tokenizer == "bpe":
        for file in ("tokenizer.json", "tokenizer_config.json"):
            shutil.copy(smollm2_dir / file, folder / file)
    else:
        _train_sentencepiece(folder)
    return folder


@pytest.mark.parametrize("name", sorted(MODELS))
def test_architecture_converts_like_llama_cpp_and_runs(name, smollm2_hf_dir):
    folder = tiny_model(name, smollm2_hf_dir)
    ours = quantkit_convert(folder, "F16")
    assert gguf_differences(ours, peer_convert(folder, "f16")) == []
    with LlamaServer(ours) as server:
        assert len(server.greedy("The quick brown fox", 4)) == 4


@pytest.mark.parametrize("name, n_ff_exp", [("qwen3moe", 32), ("mixtral", 128)])
def test_moe_experts_merged_into_3d_tensors(smollm2_hf_dir, name, n_ff_exp):
    """Expert e of layer 1's gate projection is slice e of the merged tensor, bit for bit."""
    from safetensors import safe_open

    from quantkit import read_gguf

    folder = tiny_model(name, smollm2_hf_dir)
    with read_gguf(quantkit_convert(folder, "F32")) as f:
        shapes = {t.name: tuple(t.shape) for t in f.tensors}
        merged = f.tensor("blk.1.ffn_gate_exps.weight").dequantize()
    assert shapes["blk.1.ffn_gate_exps.weight"] == (4, n_ff_exp, 64)
    assert shapes["blk.1.ffn_down_exps.weight"] == (4, 64, n_ff_exp)
    assert shapes["blk.1.ffn_gate_inp.weight"] == (4, 64)
    assert not any(".experts." in n for n in shapes)
    gate = {"qwen3moe": "mlp.experts.{e}.gate_proj", "mixtral": "block_sparse_moe.experts.{e}.w1"}[name]
    with safe_open(str(folder / "model.safetensors"), framework="pt") as f:
        for e in range(4):
            expert = f.get_tensor(f"model.layers.1.{gate.format(e=e)}.weight").float().numpy()
            assert np.array_equal(merged.reshape(4, n_ff_exp, 64)[e], expert)


def test_llama3_rope_freqs_and_untied_output(smollm2_hf_dir):
    from quantkit import read_gguf

    with read_gguf(quantkit_convert(tiny_model("llama3", smollm2_hf_dir), "F16")) as f:
        types = {t.name: t.qtype.name for t in f.tensors}
        freqs = f.tensor("rope_freqs.weight").dequantize()
    assert types["output.weight"] == "F16" and types["rope_freqs.weight"] == "F32"
    assert freqs.shape == (8,) and freqs[0] == 1.0 and freqs[-1] == 8.0


@functools.cache
def stacked_experts_model(name: str, smollm2_dir: Path, folder: Path) -> Path:
    """The tiny MoE model with its experts as transformers 5 holds them in memory (and some checkpoints
    store them): ``mlp.experts.gate_up_proj`` (n_expert, 2 n_ff, n_embd) and ``mlp.experts.down_proj``."""
    from safetensors.torch import save_file

    tiny_model(name, smollm2_dir, folder)
    state = _random_model(name).state_dict()
    if MODELS[name][1].get("tie_word_embeddings"):
        del state["lm_head.weight"]
    assert "model.layers.0.mlp.experts.gate_up_proj" in state
    save_file({k: v.contiguous() for k, v in state.items()}, str(folder / "model.safetensors"), metadata={"format": "pt"})
    return folder


@pytest.mark.parametrize("preset", ["F16", "Q8_0"])
def test_stacked_qwen3moe_experts_convert_like_llama_cpp(smollm2_hf_dir, preset):
    folder = stacked_experts_model("qwen3moe", smollm2_hf_dir, _WORK / "tiny-qwen3moe-stacked")
    ours = quantkit_convert(folder, preset)
    assert gguf_differences(ours, peer_convert(folder, preset.lower())) == []


@pytest.mark.parametrize("preset", ["F16", "Q8_0"])
def test_stacked_mixtral_experts_convert_like_llama_cpp_on_per_expert_tensors(smollm2_hf_dir, preset):
    """llama.cpp's converter cannot map Mixtral's stacked gate_up_proj; quantkit's file of the stacked
    checkpoint has the tensors and keys of the peer's file of the same weights stored per expert.
    Only the order differs: the stacked tensors are named mlp.* and come after input_layernorm."""
    import quantkit

    stacked = stacked_experts_model("mixtral", smollm2_hf_dir, _WORK / "stacked" / "tiny-mixtral")
    ours = quantkit.convert(stacked, _WORK / f"stacked-mixtral-{preset}.gguf", preset, progress=False).path
    per_expert = peer_convert(tiny_model("mixtral", smollm2_hf_dir), preset.lower())
    assert gguf_differences(ours, per_expert) == ["tensor names/order differ: []"]
    with LlamaServer(ours) as stacked_server:
        stacked_tokens = stacked_server.greedy("The quick brown fox", 4)
    with LlamaServer(per_expert) as server:
        assert stacked_tokens == server.greedy("The quick brown fox", 4)


def test_stacked_experts_quantize_each_expert_with_its_imatrix_row(smollm2_hf_dir, tmp_path):
    """Each expert of a stacked tensor is llama.cpp's C quantizer of that expert with its own weights."""
    import llamacpp_ref
    import quantkit
    from quantkit import read_gguf
    from quantkit.plan.imatrix_file import Imatrix, ImatrixEntry, write_imatrix

    folder = stacked_experts_model("qwen3moe", smollm2_hf_dir, _WORK / "tiny-qwen3moe-stacked")
    with read_gguf(quantkit_convert(folder, "F32")) as f:
        experts = {t.name: t.dequantize().reshape(t.shape) for t in f.tensors if len(t.shape) == 3}
    rng = np.random.default_rng(1)
    entries = {name: ImatrixEntry(rng.uniform(1, 50, (4, w.shape[2])).astype(np.float32), np.full(4, 10))
               for name, w in experts.items()}
    write_imatrix(tmp_path / "im.gguf", Imatrix(entries, ["synthetic"], 1, 16))
    out = quantkit.convert(folder, tmp_path / "q4_0.gguf", "Q4_0", imatrix=tmp_path / "im.gguf", progress=False).path
    with read_gguf(out) as f:
        for name, values in experts.items():
            t = f.tensor(name)
            assert t.qtype.name == "Q4_0"
            expected = [llamacpp_ref.quantize(values[e], "Q4_0", entries[name].mean()[e]) for e in range(4)]
            assert np.array_equal(np.asarray(t.data).reshape(-1), np.concatenate(expected)), name
