"""Gemma 2 and Gemma 3 text models (Gemma2ForCausalLM, Gemma3ForCausalLM) -> llama.cpp's ``gemma2``, ``gemma3``.

As llama.cpp's converter: every RMSNorm weight (Gemma 3's per-head Q/K norms included) is stored as
``1 + w`` (Gemma's norm multiplies by ``1 + weight``, llama.cpp's by ``weight``); logit
soft-capping and the sliding window become keys; the vocabulary is SentencePiece (tokenizer.model)
without a space prefix (Gemma 3 falls back to tokenizer.json's BPE without one); Gemma 2's
``lm_head`` is dropped (tied to the embeddings). Gemma 3 has two rope bases: the global (full
attention) layers' one as ``rope.freq_base``, the sliding-window layers' as ``rope.freq_base_swa``.
"""

from __future__ import annotations

import gguf
import numpy as np

from ..hf import SourceError
from ..vocab import set_bpe_vocab, set_sentencepiece_vocab
from . import ATTENTION, GATED_FFN, Arch, kinds


def plus_one(rows: np.ndarray) -> np.ndarray:
    return rows + np.float32(1)


class GemmaNorms(Arch):
    """Gemma's RMSNorm weights become ``1 + w``."""

    def group(self, items):
        out = super().group(items)
        for t, (hf_name, _, _) in zip(out, items):
            if hf_name.endswith("norm.weight"):
                t.transform = plus_one
        return out


class Gemma2Arch(GemmaNorms):
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


class Gemma3Arch(GemmaNorms):
    architectures = ("Gemma3ForCausalLM",)
    model_arch = gguf.MODEL_ARCH.GEMMA3
    required_tensors = Gemma2Arch.required_tensors
    required_block_tensors = Gemma2Arch.required_block_tensors + kinds("ATTN_Q_NORM", "ATTN_K_NORM")

    def set_parameters(self, w) -> None:
        """The common keys, then llama.cpp's Gemma 3 ones over them (with its defaults)."""
        super().set_parameters(w)
        w.add_context_length(self.config.get("max_position_embeddings", 131072))
        w.add_head_count(self.config.get("num_attention_heads", 8))
        w.add_layer_norm_rms_eps(self.config.get("rms_norm_eps", 1e-6))
        w.add_key_length(self.config.get("head_dim", 256))
        w.add_value_length(self.config.get("head_dim", 256))
        w.add_rope_freq_base(self.rope.get("rope_theta", 1_000_000.0))
        if self.config.get("attn_logit_softcapping") is not None:
            raise SourceError(f"{self.source.folder / 'config.json'}: attn_logit_softcapping is set; Gemma 3 has none")
        if final_softcap := self.config.get("final_logit_softcapping"):
            w.add_final_logit_softcapping(final_softcap)
        if self.config.get("sliding_window_pattern") != 1:
            w.add_sliding_window(self.hparam("sliding_window"))
        w.add_head_count_kv(self.config.get("num_key_value_heads", 4))

    def set_vocab(self, w) -> None:
        if (self.source.folder / "tokenizer.model").is_file():
            set_sentencepiece_vocab(w, self.source.folder, self.config)
            w.add_add_space_prefix(False)
        else:
            set_bpe_vocab(w, self.source.folder, self.config)
