"""quantkit convert on SmolLM2-135M (LlamaForCausalLM, bf16 safetensors, BPE tokenizer).

Must show: the same GGUF as llama.cpp's convert_hf_to_gguf.py for f16 and q8_0 (metadata keys, types
and values including the tokenizer arrays; tensor names, order, types, shapes and bytes); llama.cpp
running quantkit's files decodes the same greedy tokens as from the peer's; llama.cpp tokenizes like
the Hugging Face tokenizer; Q4_K_M in one pass equals llama-quantize run on the peer's bf16 file.
"""

import os

import pytest
from test_convert_support import LlamaServer, gguf_differences, llama_quantize, peer_convert, quantkit_convert

os.environ.setdefault("HF_HUB_OFFLINE", "1")

SAMPLE_TEXT = (
    "def fib(n: int) -> int:\n    return n if n < 2 else fib(n - 1) + fib(n - 2)\n\n"
    "Prices: 3.14, 1,000,000 and 42%; dates 2026-11-26.\t\tTabs  and   spaces\n\n\n"
    "Ünïcödé: naïve café, Straße, 東京, Москва, 🦙🚀 emoji, عربى\n"
    "   leading spaces, trailing spaces   \r\nCRLF line, URL https://example.com/a?b=c&d=1 <tag/>"
)
PROMPT = "<|im_start|>user\nWhat is the capital of France?<|im_end|>\n<|im_start|>assistant\n"


@pytest.mark.parametrize("preset, outtype", [("F16", "f16"), ("Q8_0", "q8_0")])
def test_same_file_as_llama_cpp_converter(smollm2_hf_dir, preset, outtype):
    ours, theirs = quantkit_convert(smollm2_hf_dir, preset), peer_convert(smollm2_hf_dir, outtype)
    assert gguf_differences(ours, theirs) == []


def test_q4_k_m_in_one_pass_equals_llama_quantize(smollm2_hf_dir):
    """Converting and quantizing at once gives llama-quantize's file of the peer's lossless bf16 GGUF."""
    assert gguf_differences(quantkit_convert(smollm2_hf_dir, "Q4_K_M"),
                            llama_quantize(peer_convert(smollm2_hf_dir, "bf16"), "Q4_K_M")) == []


def test_metadata_and_types(smollm2_hf_dir):
    from quantkit import read_gguf

    with read_gguf(quantkit_convert(smollm2_hf_dir, "Q8_0")) as f:
        assert f.metadata["general.architecture"] == "llama"
        assert f.metadata["tokenizer.ggml.pre"] == "smollm"
        assert len(f.metadata["tokenizer.ggml.tokens"]) == 49152
        assert f.metadata["tokenizer.chat_template"].startswith("{% for message in messages %}")
        types = {t.name: t.qtype.name for t in f.tensors}
        assert types["blk.0.attn_norm.weight"] == "F32" and types["blk.0.attn_q.weight"] == "Q8_0"
        assert "output.weight" not in types  # tied: llama.cpp uses token_embd
        assert len(types) == 272


@pytest.mark.parametrize("preset, outtype", [("F16", "f16"), ("Q8_0", "q8_0")])
def test_llama_cpp_decodes_the_same_tokens(smollm2_hf_dir, preset, outtype):
    with LlamaServer(quantkit_convert(smollm2_hf_dir, preset)) as server:
        ours = server.greedy(PROMPT, 8)
    with LlamaServer(peer_convert(smollm2_hf_dir, outtype)) as server:
        theirs = server.greedy(PROMPT, 8)
    assert len(ours) == 8
    assert ours == theirs


def test_llama_cpp_tokenizes_like_hugging_face(smollm2_hf_dir):
    from transformers import AutoTokenizer

    expected = AutoTokenizer.from_pretrained(str(smollm2_hf_dir)).encode(SAMPLE_TEXT, add_special_tokens=False)
    with LlamaServer(quantkit_convert(smollm2_hf_dir, "F16")) as server:
        assert server.tokenize(SAMPLE_TEXT) == expected
        assert server.tokenize(PROMPT) == AutoTokenizer.from_pretrained(str(smollm2_hf_dir)).encode(PROMPT)


def test_dry_run_plans_the_written_file(smollm2_hf_dir, capsys):
    import quantkit

    plan = quantkit.convert(smollm2_hf_dir, None, "Q8_0", dry_run=True)
    table = capsys.readouterr().out
    assert "blk.0.attn_q.weight" in table and "expected file size" in table
    assert plan.expected_file_size() == quantkit_convert(smollm2_hf_dir, "Q8_0").stat().st_size
    assert round(plan.bits_per_weight, 2) == 8.51
