"""Llama, Mistral, Mixtral and SmolLM3 (LlamaForCausalLM, MistralForCausalLM, MixtralForCausalLM ->
llama.cpp's ``llama`` architecture; SmolLM3ForCausalLM -> ``smollm3``).

As llama.cpp's converter: Q and K rows are permuted from Hugging Face's rotary layout (first half /
second half of each head) to GGML's interleaved one; Llama 3 rope scaling becomes a ``rope_freqs``
tensor of per-dimension factors; a tied ``lm_head`` is simply absent (llama.cpp then uses
``token_embd`` as the output). Mixtral's experts (w1 = gate, w2 = down, w3 = up) are merged into 3-D
tensors (:mod:`.moe`).
"""

from __future__ import annotations

import math
import re

import gguf
import numpy as np

from ..hf import SourceError
from ..vocab import set_llama_vocab
from . import DECODER_BLOCK, GATED_FFN, MOE_FFN, Arch, OutTensor
from .moe import MergedExperts


def permute_rotary(rows: np.ndarray, head_rows: int) -> np.ndarray:
    """Rows of whole heads (``head_rows`` each): per head, row order (half, i) -> (i, half)."""
    tail = rows.shape[1:]
    return rows.reshape(-1, 2, head_rows // 2, *tail).swapaxes(1, 2).reshape(rows.shape)


def llama3_rope_factors(rope: dict, head_dim: int) -> np.ndarray:
    """Per rotary frequency scaling factors of Llama 3's ``rope_type: llama3`` (float32, head_dim/2)."""
    import torch  # deferred: optional; torch's own float32 operations (pow in double, rdiv as reciprocal*x) are what the peer converter computes, so only it reproduces the factors bit for bit

    base = rope.get("rope_theta", 10000.0)
    freqs = 1.0 / (base ** (torch.arange(0, head_dim, 2, dtype=torch.float32) / head_dim))
    factor = rope.get("factor", 8.0)
    low = rope.get("low_freq_factor", 1.0)
    high = rope.get("high_freq_factor", 4.0)
    old_ctx = rope.get("original_max_position_embeddings", 8192)
    factors = []
    for freq in freqs:  # 0-d float32 tensors: the arithmetic below stays float32, as llama.cpp's converter's
        wavelen = 2 * math.pi / freq
        if wavelen < old_ctx / high:
            factors.append(1.0)
        elif wavelen > old_ctx / low:
            factors.append(factor)
        else:
            smooth = (old_ctx / wavelen - low) / (high - low)
            factors.append(float(1 / ((1 - smooth) / factor + smooth)))
    return np.asarray(factors, dtype=np.float32)


class LlamaArch(Arch):
    architectures = ("LlamaForCausalLM", "MistralForCausalLM")
    model_arch = gguf.MODEL_ARCH.LLAMA
    permute_qk = True
    required_block_tensors = DECODER_BLOCK + GATED_FFN

    @property
    def head_dim(self) -> int:
        return self.config.get("head_dim") or self.hparam("hidden_size") // self.hparam("num_attention_heads")

    def set_parameters(self, w) -> None:
        super().set_parameters(w)
        w.add_vocab_size(self.hparam("vocab_size"))
        w.add_rope_dimension_count(self.head_dim)

    def set_vocab(self, w) -> None:
        set_llama_vocab(w, self.source.folder, self.config)
        if self.config.get("vocab_size", 32000) == 49152:  # as llama.cpp: SmolLM/granite-small vocabularies
            w.add_add_bos_token(False)

    def transform(self, gguf_name, kind, shape):
        if not self.permute_qk or kind not in (gguf.MODEL_TENSOR.ATTN_Q, gguf.MODEL_TENSOR.ATTN_K):
            return None, 1
        n_head = self.hparam("num_attention_heads")
        heads = n_head if kind == gguf.MODEL_TENSOR.ATTN_Q else self.hparam("num_key_value_heads", default=n_head)
        if shape[0] != heads * self.head_dim or self.head_dim % 2:
            raise SourceError(
                f"{self.source.folder}: {gguf_name} has {shape[0]} rows, config.json implies "
                f"{heads} heads x {self.head_dim} = {heads * self.head_dim}"
            )
        head_rows = self.head_dim
        return (lambda rows: permute_rotary(rows, head_rows)), head_rows

    def extra_tensors(self) -> list[OutTensor]:
        if str(self.rope.get("rope_type", "")).lower() != "llama3":
            return []
        factors = llama3_rope_factors(self.rope, self.head_dim)
        name = gguf.TENSOR_NAMES[gguf.MODEL_TENSOR.ROPE_FREQS] + ".weight"
        return [OutTensor(name, factors.shape, values=lambda: factors, kind=gguf.MODEL_TENSOR.ROPE_FREQS)]


class SmolLM3Arch(LlamaArch):
    """SmolLM3: Llama's tensors; llama.cpp's ``smollm3`` skips rope in every 4th layer by itself."""

    architectures = ("SmolLM3ForCausalLM",)
    model_arch = gguf.MODEL_ARCH.SMOLLM3


class MixtralArch(MergedExperts, LlamaArch):
    architectures = ("MixtralForCausalLM",)
    expert_pattern = re.compile(r"^model\.layers\.(\d+)\.block_sparse_moe\.experts\.(\d+)\.(w1|w2|w3)\.weight$")
    expert_projections = ("w1", "w2", "w3")  # llama.cpp's emission order
    required_block_tensors = DECODER_BLOCK + MOE_FFN

    def merged_name(self, layer: int, projection: str) -> str:
        return f"layers.{layer}.feed_forward.experts.{projection}.weight"
