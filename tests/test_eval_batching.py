"""The torch backend's batched greedy generation (left padding, attention mask, KV cache) gives the
token ids one prompt at a time gives, on a tiny random Llama and on SmolLM2-135M-Instruct."""

import numpy as np
import pytest
from transformers import AutoTokenizer

from quantkit.eval.backends import TorchBackend
from quantkit.eval.report import DEFAULT_PROMPTS, prompt_ids, read_prompts
from test_convert_support import llama_weights, make_llama_folder

NEW_TOKENS = 12


def _batched_and_alone(model_dir, cache_dir, prompts):
    backend = TorchBackend(model_dir, cache_dir, threads=1, progress=False)
    batched = backend.generate(prompts, NEW_TOKENS)
    alone = [backend.generate([p], NEW_TOKENS)[0] for p in prompts]
    return batched, alone


def test_tiny_llama_batched_equals_one_at_a_time(tmp_path, smollm2_hf_dir):
    """Random weights scaled up (std 0.2) so the next token is decided by clear margins, and prompts
    of 3 to 17 tokens, so every batched row but the longest is left-padded."""
    weights = {name: (w * np.float16(10)).astype(w.dtype) if w.ndim == 2 else w for name, w in llama_weights().items()}
    folder = make_llama_folder(tmp_path, smollm2_hf_dir, weights)
    rng = np.random.default_rng(1)
    prompts = [rng.integers(1, 1000, size=n).tolist() for n in (3, 17, 8, 11, 5)]
    batched, alone = _batched_and_alone(folder, tmp_path / "cache", prompts)
    assert all(len(a) == NEW_TOKENS for a in alone)  # no end-of-sequence here: every answer is full length
    assert batched == alone


def test_smollm2_batched_equals_one_at_a_time(tmp_path, smollm2_hf_dir):
    """Six prompts of the shipped set through the chat template (29 to 45 tokens): same token ids."""
    tokenizer = AutoTokenizer.from_pretrained(smollm2_hf_dir)
    prompts = prompt_ids(tokenizer, read_prompts(DEFAULT_PROMPTS)[::9][:6])
    assert len({len(p) for p in prompts}) > 1
    batched, alone = _batched_and_alone(smollm2_hf_dir, tmp_path / "cache", prompts)
    assert batched == alone
    assert tokenizer.decode(batched[0], skip_special_tokens=True).strip() != ""
