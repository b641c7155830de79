"""Qwen2, Qwen3 and Qwen3-MoE (Qwen2ForCausalLM, Qwen3ForCausalLM, Qwen3MoeForCausalLM).

No Q/K permutation (Qwen's rotary layout is GGML's "neox" one). Qwen3 adds per-head Q/K norms.
Qwen3-MoE's experts are merged into 3-D tensors (:mod:`.moe`).
"""

from __future__ import annotations

import re

import gguf

from ..vocab import set_bpe_vocab, set_sentencepiece_vocab
from . import DECODER_BLOCK, GATED_FFN, MOE_FFN, Arch, kinds
from .moe import MergedExperts

QK_NORMS = kinds("ATTN_Q_NORM", "ATTN_K_NORM")  # Qwen3's per-head norms


class Qwen2Arch(Arch):
    architectures = ("Qwen2ForCausalLM",)
    model_arch = gguf.MODEL_ARCH.QWEN2
    required_block_tensors = DECODER_BLOCK + GATED_FFN

    def set_vocab(self, w) -> None:
        if (self.source.folder / "tokenizer.model").is_file():
            set_sentencepiece_vocab(w, self.source.folder, self.config)
        else:
            set_bpe_vocab(w, self.source.folder, self.config)


class Qwen3Arch(Qwen2Arch):
    architectures = ("Qwen3ForCausalLM",)
    model_arch = gguf.MODEL_ARCH.QWEN3
    required_block_tensors = Qwen2Arch.required_block_tensors + QK_NORMS


class Qwen3MoeArch(MergedExperts, Qwen2Arch):
    architectures = ("Qwen3MoeForCausalLM",)
    model_arch = gguf.MODEL_ARCH.QWEN3MOE
    expert_pattern = re.compile(r"^model\.layers\.(\d+)\.mlp\.experts\.(\d+)\.(gate_proj|up_proj|down_proj)\.weight$")
    expert_projections = ("down_proj", "gate_proj", "up_proj")  # llama.cpp's emission order
    required_block_tensors = DECODER_BLOCK + QK_NORMS + MOE_FFN

    def set_parameters(self, w) -> None:
        super().set_parameters(w)
        if (n_ff_exp := self.config.get("moe_intermediate_size")) is not None:
            w.add_expert_feed_forward_length(n_ff_exp)
        if (n_ff_shexp := self.config.get("shared_expert_intermediate_size")) is not None:
            w.add_expert_shared_feed_forward_length(n_ff_shexp)

    def merged_name(self, layer: int, projection: str) -> str:
        return f"model.layers.{layer}.mlp.experts.{projection}.weight"
