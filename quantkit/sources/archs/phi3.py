"""Phi-3 (Phi3ForCausalLM) -> llama.cpp's ``phi3``.

Q, K and V stay fused (``attn_qkv``), as do the gate and up projections (``ffn_up``, llama.cpp
splits them at run time). Rotary dimensions follow ``partial_rotary_factor``; long-context models
(``rope_scaling`` with long/short factors) get ``rope_factors_long``/``rope_factors_short`` tensors
and the attention factor key, as llama.cpp's converter writes them.
"""

from __future__ import annotations

import math

import gguf
import numpy as np

from ..hf import SourceError, read_json
from ..vocab import set_bpe_vocab, set_sentencepiece_vocab
from . import Arch, OutTensor, kinds


class Phi3Arch(Arch):
    architectures = ("Phi3ForCausalLM",)
    model_arch = gguf.MODEL_ARCH.PHI3
    required_block_tensors = kinds("ATTN_NORM", "ATTN_QKV", "ATTN_OUT", "FFN_NORM", "FFN_UP", "FFN_DOWN")

    @property
    def rope_dims(self) -> int:
        n_embd = self.hparam("hidden_size", "n_embd")
        return int(self.rope.get("partial_rotary_factor", 1.0) * n_embd) // self.hparam("num_attention_heads", "n_head")

    def set_parameters(self, w) -> None:
        """llama.cpp's Phi-3 keys (its own list, not the common one)."""
        if "original_max_position_embeddings" not in self.rope:
            raise SourceError(f"{self.source.folder / 'config.json'}: missing 'original_max_position_embeddings' (Phi-3)")
        w.add_context_length(self.hparam("n_positions", "max_position_embeddings"))
        w.add_rope_scaling_orig_ctx_len(self.rope["original_max_position_embeddings"])
        w.add_embedding_length(self.hparam("hidden_size", "n_embd"))
        w.add_feed_forward_length(self.hparam("intermediate_size"))
        w.add_block_count(self.block_count)
        w.add_head_count(self.hparam("num_attention_heads", "n_head"))
        w.add_head_count_kv(self.hparam("num_key_value_heads", "n_head_kv"))
        w.add_layer_norm_rms_eps(self.hparam("rms_norm_eps"))
        w.add_rope_dimension_count(self.rope_dims)
        w.add_rope_freq_base(self.rope["rope_theta"])
        w.add_sliding_window(self.config.get("sliding_window") or 0)
        if self.rope.get("long_factor"):
            w.add_rope_scaling_attn_factors(self._attention_factor())

    def _attention_factor(self) -> float:
        scale = self.hparam("n_positions", "max_position_embeddings") / self.rope["original_max_position_embeddings"]
        kind = str(self.rope.get("rope_type", "")).lower()
        if kind in ("su", "longrope"):
            return math.sqrt(1 + math.log(scale) / math.log(self.rope["original_max_position_embeddings"])) if scale > 1 else 1.0
        if kind == "yarn":
            return 0.1 * math.log(scale) + 1.0 if scale > 1 else 1.0
        raise SourceError(f"{self.source.folder / 'config.json'}: rope scaling type {kind!r} not supported for Phi-3")

    def extra_tensors(self) -> list[OutTensor]:
        long, short = self.rope.get("long_factor"), self.rope.get("short_factor")
        if not long:
            return []
        if not short or len(long) != len(short) or len(long) != self.rope_dims / 2:
            raise SourceError(
                f"{self.source.folder / 'config.json'}: rope long/short factors must both have {self.rope_dims // 2} values"
            )
        out = []
        for kind, factors in ((gguf.MODEL_TENSOR.ROPE_FACTORS_LONG, long), (gguf.MODEL_TENSOR.ROPE_FACTORS_SHORT, short)):
            values = np.asarray(factors, dtype=np.float32)
            out.append(OutTensor(gguf.TENSOR_NAMES[kind] + ".weight", values.shape, values=lambda v=values: v, kind=kind))
        return out

    def set_vocab(self, w) -> None:
        config_file = self.source.folder / "tokenizer_config.json"
        if config_file.is_file() and read_json(config_file).get("tokenizer_class") == "GPT2Tokenizer":
            return set_bpe_vocab(w, self.source.folder, self.config)
        set_sentencepiece_vocab(w, self.source.folder, self.config)
