"""Gemma 2 (Gemma2ForCausalLM) -> llama.cpp's ``gemma2``.

As llama.cpp's converter: every RMSNorm weight is stored as ``1 + w`` (Gemma's norm multiplies by
``1 + weight``, llama.cpp's by ``weight``); logit soft-capping and the sliding window become keys;
the vocabulary is SentencePiece (tokenizer.model) without a space prefix; ``lm_head`` is dropped
(tied to the embeddings).
"""

from __future__ import annotations

import gguf
import numpy as np

from ..vocab import set_sentencepiece_vocab
from . import ATTENTION, GATED_FFN, Arch, kinds


def plus_one(rows: np.ndarray) -> np.ndarray:
    return rows + np.float32(1)


class Gemma2Arch(Arch):
    architectures = ("Gemma2ForCausalLM",)
    model_arch = gguf.MODEL_ARCH.GEMMA2
    required_block_tensors = ATTENTION + GATED_FFN + kinds(  # gguf calls Gemma's ffn_norm FFN_PRE_NORM
        "ATTN_POST_NORM", "FFN_PRE_NORM", "FFN_POST_NORM"
    )

    def set_parameters(self, w) -> None:
        """llama.cpp's Gemma2 keys (its own list: no rope base, softcapping and sliding window)."""
        w.add_context_length(self.hparam("max_position_embeddings"))
        w.add_embedding_length(self.hparam("hidden_size"))
        w.add_block_count(self.block_count)
        w.add_feed_forward_length(self.hparam("intermediate_size"))
        w.add_head_count(self.hparam("num_attention_heads"))
        w.add_head_count_kv(self.hparam("num_key_value_heads", "num_attention_heads"))
        w.add_layer_norm_rms_eps(self.hparam("rms_norm_eps"))
        w.add_key_length(self.hparam("head_dim"))
        w.add_value_length(self.hparam("head_dim"))
        w.add_attn_logit_softcapping(self.hparam("attn_logit_softcapping"))
        w.add_final_logit_softcapping(self.hparam("final_logit_softcapping"))
        w.add_sliding_window(self.hparam("sliding_window"))

    def set_vocab(self, w) -> None:
        set_sentencepiece_vocab(w, self.source.folder, self.config)
        w.add_add_space_prefix(False)

    def rename(self, hf_name):
        return None if hf_name == "lm_head.weight" else super().rename(hf_name)

    def group(self, items):
        out = super().group(items)
        for t, (hf_name, _, _) in zip(out, items):
            if hf_name.endswith("norm.weight"):
                t.transform = plus_one
        return out
