"""Qwen2, Qwen3 and Qwen3-MoE (Qwen2ForCausalLM, Qwen3ForCausalLM, Qwen3MoeForCausalLM).

No Q/K permutation (Qwen's rotary layout is GGML's "neox" one). Qwen3 adds per-head Q/K norms.
Qwen3-MoE stores each expert's gate/up/down projection separately; llama.cpp wants one 3-D tensor
per projection and layer (``ffn_{gate,up,down}_exps``, experts along the first axis), emitted where
llama.cpp's converter emits it: at the layer's last expert tensor in name order.
"""

from __future__ import annotations

import re

import gguf

from ...source import SourceError
from . import Arch, OutTensor

_EXPERT = re.compile(r"^model\.layers\.(\d+)\.mlp\.experts\.(\d+)\.(gate_proj|up_proj|down_proj)\.weight$")
_PROJECTIONS = ("down_proj", "gate_proj", "up_proj")  # llama.cpp's emission order


class Qwen2Arch(Arch):
    architectures = ("Qwen2ForCausalLM",)
    model_arch = gguf.MODEL_ARCH.QWEN2
    required_tensors = (gguf.MODEL_TENSOR.TOKEN_EMBD, gguf.MODEL_TENSOR.OUTPUT_NORM)
    required_block_tensors = (
        gguf.MODEL_TENSOR.ATTN_NORM, gguf.MODEL_TENSOR.ATTN_Q, gguf.MODEL_TENSOR.ATTN_K,
        gguf.MODEL_TENSOR.ATTN_V, gguf.MODEL_TENSOR.ATTN_OUT, gguf.MODEL_TENSOR.FFN_NORM,
    )

    def set_vocab(self, w) -> None:
        from ..vocab import set_bpe_vocab, set_sentencepiece_vocab

        if (self.source.folder / "tokenizer.model").is_file():
            set_sentencepiece_vocab(w, self.source.folder, self.config)
        else:
            set_bpe_vocab(w, self.source.folder, self.config)


class Qwen3Arch(Qwen2Arch):
    architectures = ("Qwen3ForCausalLM",)
    model_arch = gguf.MODEL_ARCH.QWEN3


class Qwen3MoeArch(Qwen2Arch):
    architectures = ("Qwen3MoeForCausalLM",)
    model_arch = gguf.MODEL_ARCH.QWEN3MOE
    required_block_tensors = (
        gguf.MODEL_TENSOR.ATTN_NORM, gguf.MODEL_TENSOR.ATTN_Q, gguf.MODEL_TENSOR.ATTN_K, gguf.MODEL_TENSOR.ATTN_V,
        gguf.MODEL_TENSOR.ATTN_OUT, gguf.MODEL_TENSOR.FFN_NORM, gguf.MODEL_TENSOR.FFN_GATE_INP,
        gguf.MODEL_TENSOR.FFN_GATE_EXP, gguf.MODEL_TENSOR.FFN_UP_EXP, gguf.MODEL_TENSOR.FFN_DOWN_EXP,
    )

    def set_parameters(self, w) -> None:
        super().set_parameters(w)
        if (n_ff_exp := self.config.get("moe_intermediate_size")) is not None:
            w.add_expert_feed_forward_length(n_ff_exp)
        if (n_ff_shexp := self.config.get("shared_expert_intermediate_size")) is not None:
            w.add_expert_shared_feed_forward_length(n_ff_shexp)

    def rename(self, hf_name):
        if _EXPERT.match(hf_name):
            return hf_name  # grouped below, never mapped one by one
        return super().rename(hf_name)

    def gguf_name(self, hf_name):
        if _EXPERT.match(hf_name):
            return None, hf_name
        return super().gguf_name(hf_name)

    def group(self, items):
        n_experts = int(self.hparam("num_experts", "num_local_experts"))
        pending: dict[int, dict[tuple[str, int], str]] = {}  # layer -> (projection, expert) -> hf name
        out = []
        for hf_name, kind, name in items:
            match = _EXPERT.match(hf_name)
            if match is None:
                out += super().group([(hf_name, kind, name)])
                continue
            layer, expert, projection = int(match[1]), int(match[2]), match[3]
            if expert >= n_experts:
                raise SourceError(f"{self.source.folder}: {hf_name}: expert {expert}, config.json has num_experts={n_experts}")
            found = pending.setdefault(layer, {})
            found[(projection, expert)] = hf_name
            if len(found) == 3 * n_experts:
                out += [self._merged(layer, p, [found[(p, e)] for e in range(n_experts)]) for p in _PROJECTIONS]
                del pending[layer]
        if pending:
            layer, found = next(iter(pending.items()))
            raise SourceError(
                f"{self.source.folder}: layer {layer} has {len(found)} of {3 * n_experts} expert tensors"
            )
        return out

    def _merged(self, layer: int, projection: str, parts: list[str]) -> OutTensor:
        kind, name = super().gguf_name(f"model.layers.{layer}.mlp.experts.{projection}.weight")
        infos = [self.source.weight(p) for p in parts]
        for part, info in zip(parts, infos):
            self.check_shape(part, info.shape, infos[0].shape)
        return OutTensor(name, (len(parts), *infos[0].shape), tuple(parts), kind=kind, sources=infos)
