"""llama-quantize's presets (file types such as Q4_K_M): which GGUF type each tensor gets.

:func:`plan_types` follows llama.cpp's ``src/llama-quant.cpp`` (llama-cpp-python 0.3.36's
vendored copy) rule for rule: which tensors are quantized at all, the preset's default type,
the per-category rules of ``llama_tensor_get_type_impl`` (output / tied token embeddings,
attn_v and ffn_down "more bits" layers, attn_k / attn_q / attn_output, MoE expert counts,
GQA, 70B), ``--tensor-type`` style overrides, ``--pure``, and the fallback to a smaller block
when a row length (ne[0], the last numpy axis) is not a multiple of the chosen type's block.

Tensors are visited in llama.cpp's order (:func:`tensor_sort_key`: layer number, then name),
because the attn_v counter of Q3_K_M / Q4_K_M / Q5_K_M / Q4_K_S and the ffn_down counter of
dense models count tensors in that order. docs/presets.md lists the rules in words.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from gguf import GGMLQuantizationType, LlamaFileType

from ..errors import ImatrixError, QuantkitError, ShapeError, UnsupportedTypeError
from ..types import GGMLType, known_type
from .overrides import override_type, parse_overrides

T = GGMLType  # gguf's GGMLQuantizationType and the types it lacks (Q2_0)
F = LlamaFileType

# preset name (llama-quantize's spelling) -> (general.file_type, default tensor type)
PRESETS: dict[str, tuple[LlamaFileType, GGMLQuantizationType]] = {
    "F32": (F.ALL_F32, T.F32),
    "F16": (F.MOSTLY_F16, T.F16),
    "BF16": (F.MOSTLY_BF16, T.BF16),
    "Q8_0": (F.MOSTLY_Q8_0, T.Q8_0),
    "Q4_0": (F.MOSTLY_Q4_0, T.Q4_0),
    "Q4_1": (F.MOSTLY_Q4_1, T.Q4_1),
    "Q5_0": (F.MOSTLY_Q5_0, T.Q5_0),
    "Q5_1": (F.MOSTLY_Q5_1, T.Q5_1),
    "Q2_K": (F.MOSTLY_Q2_K, T.Q2_K),
    "Q2_K_S": (F.MOSTLY_Q2_K_S, T.Q2_K),
    "Q3_K_S": (F.MOSTLY_Q3_K_S, T.Q3_K),
    "Q3_K_M": (F.MOSTLY_Q3_K_M, T.Q3_K),
    "Q3_K_L": (F.MOSTLY_Q3_K_L, T.Q3_K),
    "Q4_K_S": (F.MOSTLY_Q4_K_S, T.Q4_K),
    "Q4_K_M": (F.MOSTLY_Q4_K_M, T.Q4_K),
    "Q5_K_S": (F.MOSTLY_Q5_K_S, T.Q5_K),
    "Q5_K_M": (F.MOSTLY_Q5_K_M, T.Q5_K),
    "Q6_K": (F.MOSTLY_Q6_K, T.Q6_K),
    "IQ1_S": (F.MOSTLY_IQ1_S, T.IQ1_S),
    "IQ1_M": (F.MOSTLY_IQ1_M, T.IQ1_M),
    "IQ2_XXS": (F.MOSTLY_IQ2_XXS, T.IQ2_XXS),
    "IQ2_XS": (F.MOSTLY_IQ2_XS, T.IQ2_XS),
    "IQ2_S": (F.MOSTLY_IQ2_S, T.IQ2_XS),
    "IQ2_M": (F.MOSTLY_IQ2_M, T.IQ2_S),
    "IQ3_XXS": (F.MOSTLY_IQ3_XXS, T.IQ3_XXS),
    "IQ3_XS": (F.MOSTLY_IQ3_XS, T.IQ3_S),
    "IQ3_S": (F.MOSTLY_IQ3_S, T.IQ3_S),
    "IQ3_M": (F.MOSTLY_IQ3_M, T.IQ3_S),
    "IQ4_NL": (F.MOSTLY_IQ4_NL, T.IQ4_NL),
    "IQ4_XS": (F.MOSTLY_IQ4_XS, T.IQ4_XS),
    "TQ1_0": (F.MOSTLY_TQ1_0, T.TQ1_0),
    "TQ2_0": (F.MOSTLY_TQ2_0, T.TQ2_0),
    "MXFP4_MOE": (F.MOSTLY_MXFP4_MOE, T.MXFP4),
}
# llama-quantize's aliases
ALIASES = {"Q3_K": "Q3_K_M", "Q4_K": "Q4_K_M", "Q5_K": "Q5_K_M"}

# the ftype groups llama-quant.cpp tests together
_IQ2_FAMILY = {F.MOSTLY_IQ2_XXS, F.MOSTLY_IQ2_XS, F.MOSTLY_IQ1_S, F.MOSTLY_IQ2_S, F.MOSTLY_IQ2_M, F.MOSTLY_IQ1_M}
_OUTPUT_Q5_K = {F.MOSTLY_IQ2_XXS, F.MOSTLY_IQ2_XS, F.MOSTLY_IQ3_XXS, F.MOSTLY_IQ1_S, F.MOSTLY_IQ2_S, F.MOSTLY_IQ2_M,
                F.MOSTLY_IQ1_M}
_MOE8_ATTN_OUTPUT_Q5_K = {F.MOSTLY_Q2_K, F.MOSTLY_IQ3_XS, F.MOSTLY_IQ3_XXS, F.MOSTLY_Q3_K_S, F.MOSTLY_Q3_K_M,
                          F.MOSTLY_IQ4_NL, F.MOSTLY_Q4_K_S, F.MOSTLY_Q4_K_M, F.MOSTLY_IQ3_S, F.MOSTLY_IQ3_M,
                          F.MOSTLY_IQ4_XS}
# target types llama-quantize refuses to produce without an importance matrix (tensor_requires_imatrix)
_NEEDS_IMATRIX = {T.IQ3_XXS, T.IQ2_XXS, T.IQ2_XS, T.IQ2_S, T.IQ1_M, T.IQ1_S}
# architectures whose 80-layer (jais2: 68-layer) models llama.cpp types as LLM_TYPE_70B
_TYPE_70B_LAYERS = {"qwen2": 80, "deci": 80, "olmo": 80, "jais2": 68}

_TOKEN_EMBD = ("token_embd.weight", "per_layer_token_embd.weight")
_OUTPUT = "output.weight"
# substrings that keep a weight matrix out of quantization (tensor_allows_quantization)
_NEVER_QUANTIZED = (
    "_norm.weight", "ffn_gate_inp.weight", "ffn_gate_tid2eid.weight", "altup", "laurel", "per_layer_model_proj",
    "ssm_conv1d", "shortconv.conv.weight", "indexer.k_proj.weight", "indexer.q_proj.weight",
    "time_mix_first.weight", "time_mix_w0.weight", "time_mix_w1.weight", "time_mix_w2.weight",
    "time_mix_v0.weight", "time_mix_v1.weight", "time_mix_v2.weight", "time_mix_a0.weight", "time_mix_a1.weight",
    "time_mix_a2.weight", "time_mix_g1.weight", "time_mix_g2.weight", "time_mix_decay_w1.weight",
    "time_mix_decay_w2.weight", "time_mix_lerp_fused.weight", "attn_rel_b.weight",
    ".position_embd", "sam.pos_embd", "sam.neck.", "sam.net_", ".rel_pos", ".patch_embd", ".patch_merger",
    "a.rvq.codebook", "mm.a.code_embd",
)
_GLM5_NEXT_NEVER_QUANTIZED = (
    "hc_", "indexer.attn_q_b", "indexer.attn_k", "indexer.proj", "indexer_compressor_gate", "indexer_compressor_ape",
    "ssm_f_a.weight", "ssm_f_b.weight", "ssm_g_a.weight", "ssm_g_b.weight", "ssm_beta.weight",
    "attn_kv_a_mqa.weight", "attn_k_b.weight", "attn_v_b.weight",
)
_GLM5_NEXT_Q8_0 = ("attn_q_a", "attn_q_b", "nextn.eh_proj")
# (substring, category) in llama.cpp's test order; output and token_embd are matched by full name first
_CATEGORIES = (
    ("attn_qkv.weight", "attn_qkv"), ("attn_kv_b.weight", "attn_kv_b"), ("attn_v.weight", "attn_v"),
    ("attn_k.weight", "attn_k"), ("attn_q.weight", "attn_q"), ("attn_output.weight", "attn_output"),
    ("ffn_up", "ffn_up"), ("ffn_gate", "ffn_gate"), ("ffn_down", "ffn_down"),
)
_ATTN_V_LIKE = {"attn_v", "attn_qkv", "attn_kv_b"}
_LAYER = re.compile(r"blk\.([+-]?\d+)")  # sscanf(name, "blk.%d.")


def resolve_preset(name: str) -> str:
    """The canonical preset name for ``name`` (any case; Q3_K/Q4_K/Q5_K mean their _M presets)."""
    key = str(name).strip().upper()
    key = ALIASES.get(key, key)
    if key not in PRESETS:
        raise UnsupportedTypeError(f"unknown preset {name!r}; presets: {', '.join(PRESETS)}")
    return key


def file_type(preset: str) -> LlamaFileType:
    """general.file_type llama-quantize writes for ``preset``."""
    return PRESETS[resolve_preset(preset)][0]


def tensor_sort_key(name: str) -> tuple[int, bytes]:
    """llama.cpp's tensor order (llama_model_loader's weights_map): layer number (-1 outside blocks), then name."""
    match = _LAYER.match(name)
    return (int(match.group(1)) if match else -1, name.encode())


def category(name: str) -> str:
    """llama-quant.cpp's broad tensor category: output, token_embd, attn_v, ffn_down, ... or other."""
    if name == _OUTPUT:
        return "output"
    if name in _TOKEN_EMBD:
        return "token_embd"
    for needle, cat in _CATEGORIES:
        if needle in name:
            return cat
    return "other"


def allows_quantization(name: str, shape: Sequence[int], arch: str) -> bool:
    """Whether llama-quantize changes this tensor's type at all: weight matrices, minus norms, routers, ..."""
    if all(int(d) == 1 for d in shape[:-1]):  # ggml_n_dims < 2
        return False
    if not name.endswith("weight") or name in ("position_embd.weight", "token_types.weight"):
        return False
    never = _NEVER_QUANTIZED + (_GLM5_NEXT_NEVER_QUANTIZED if arch == "glm5-next" else ())
    return not any(needle in name for needle in never)


def _block_size(qtype: GGMLQuantizationType) -> int:
    return known_type(qtype).block_size


def _is_quantized(qtype: GGMLQuantizationType) -> bool:
    return _block_size(qtype) > 1


def fallback_type(qtype: GGMLQuantizationType, n_per_row: int) -> GGMLQuantizationType:
    """``qtype``, or what llama.cpp uses instead when rows of ``n_per_row`` don't split into its blocks."""
    if n_per_row % _block_size(qtype) == 0:
        return qtype
    if known_type(qtype).fallback is not None:
        replacement = known_type(known_type(qtype).fallback).ggml
    elif _block_size(qtype) <= 32:
        replacement = qtype
    else:
        raise ShapeError(f"rows of {n_per_row} do not fit {qtype.name} and llama.cpp defines no fallback for it")
    return replacement if n_per_row % _block_size(replacement) == 0 else T.F16


def tensor_requires_imatrix(name: str, qtype: GGMLQuantizationType, ftype: LlamaFileType) -> bool:
    """llama-quantize refuses to write ``name`` as ``qtype`` in preset ``ftype`` without an importance matrix.

    Besides llama-quant.cpp's rule, IQ2_XXS / IQ2_XS / IQ1_S need one for every tensor (ggml asserts it).
    """
    if known_type(qtype).requires_imatrix:
        return True
    if name in _TOKEN_EMBD or name == _OUTPUT:
        return False
    return qtype in _NEEDS_IMATRIX or (qtype == T.Q2_K and ftype == F.MOSTLY_Q2_K_S)


@dataclass(frozen=True)
class ModelInfo:
    """The hyperparameters llama-quant.cpp's rules look at, read from GGUF metadata."""

    arch: str
    n_layer: int  # <arch>.block_count (hparams.n_layer_all)
    n_expert: int  # <arch>.expert_count, 0 for dense models
    n_gqa: int  # head_count // head_count_kv of layer 0 (0 when head_count_kv is 0)
    is_70b: bool  # llama.cpp's LLM_TYPE_70B

    @classmethod
    def from_metadata(cls, metadata: Mapping[str, Any]) -> ModelInfo:
        def plain(key, default=None):  # values may be ggufio.typed(...) wrappers
            value = metadata.get(key, default)
            return getattr(value, "value", value)

        arch = plain("general.architecture")
        if not isinstance(arch, str):
            raise QuantkitError("metadata has no general.architecture: cannot apply a preset")

        def first(key, default):  # a per-layer array counts by its first layer, as llama.cpp's n_head() does
            value = plain(f"{arch}.{key}", default)
            return int(np.asarray(value).ravel()[0]) if np.size(value) else default

        n_layer = first("block_count", 0)
        if n_layer <= 0:
            raise QuantkitError(f"metadata has no {arch}.block_count: cannot apply a preset")
        n_head = first("attention.head_count", 0)
        n_head_kv = first("attention.head_count_kv", n_head)
        n_expert = first("expert_count", 0)
        n_layer_main = n_layer - first("nextn_predict_layers", 0)
        if arch == "llama":
            is_70b = n_expert != 8 and n_layer_main == 80 and n_head != n_head_kv
        else:
            is_70b = _TYPE_70B_LAYERS.get(arch) == n_layer_main
        return cls(arch, n_layer, n_expert, n_head // n_head_kv if n_head_kv else 0, is_70b)


def _use_more_bits(i_layer: int, n_layers: int) -> bool:
    """llama.cpp's use_more_bits: the first and last eighth of the layers and every third in between."""
    return i_layer < n_layers // 8 or i_layer >= 7 * n_layers // 8 or (i_layer - n_layers // 8) % 3 == 2


@dataclass
class _Planner:
    """The state llama_tensor_get_type_impl keeps while it walks the tensors (quantize_state_impl)."""

    ftype: LlamaFileType
    model: ModelInfo
    has_imatrix: bool
    tied_embeddings: bool
    n_attention_wv: int
    output_type: GGMLQuantizationType | None
    token_embedding_type: GGMLQuantizationType | None
    i_attention_wv: int = 0
    # n_ffn_* all equal model.n_layer
    i_ffn: dict = field(default_factory=lambda: {"ffn_down": 0, "ffn_gate": 0, "ffn_up": 0})

    def _layer(self, cat: str, name: str) -> tuple[int, int]:
        """(layer index, layer count) for an ffn tensor: a counter for dense models, the name for MoE."""
        i_layer, n_layer = self.i_ffn[cat], self.model.n_layer
        if max(1, self.model.n_expert) > 1:
            match = _LAYER.match(name)
            if not match:
                raise QuantkitError(f"{name}: cannot determine its layer (expected blk.N.)")
            i_layer = int(match.group(1))
            if not 0 <= i_layer < n_layer:
                raise QuantkitError(f"{name}: layer {i_layer} is outside [0, {n_layer})")
        return i_layer, n_layer

    def choose(self, name: str, shape: Sequence[int], cat: str, new: GGMLQuantizationType) -> GGMLQuantizationType:
        """llama_tensor_get_type_impl: the preset's type for one quantizable tensor, before the fallback."""
        ftype, model = self.ftype, self.model
        n_expert = model.n_expert
        if model.arch == "glm5-next" and any(s in name for s in _GLM5_NEXT_Q8_0):
            if new not in (T.F32, T.BF16, T.F16):
                return T.Q8_0
        if cat == "output" or (self.tied_embeddings and cat == "token_embd"):
            if self.output_type is not None:
                return self.output_type
            if ftype == F.MOSTLY_MXFP4_MOE or model.arch == "falcon" or int(shape[-1]) % _block_size(new) != 0:
                return T.Q8_0
            if ftype in _OUTPUT_Q5_K:
                return T.Q5_K
            return new if new == T.Q8_0 else T.Q6_K
        if ftype == F.MOSTLY_MXFP4_MOE:  # expert tensors (3-D: ne[2] > 1) MXFP4, everything else Q8_0
            experts = len(shape) >= 3 and int(shape[-3]) > 1
            if experts and (model.arch != "bailingmoe3" or cat in ("ffn_up", "ffn_gate", "ffn_down")):
                return T.MXFP4
            return T.Q8_0
        if cat == "token_embd":
            if self.token_embedding_type is not None:
                return self.token_embedding_type
            if ftype in (F.MOSTLY_IQ2_XXS, F.MOSTLY_IQ2_XS, F.MOSTLY_IQ1_S, F.MOSTLY_IQ1_M):
                return T.Q2_K
            if ftype in (F.MOSTLY_IQ2_S, F.MOSTLY_IQ2_M, F.MOSTLY_IQ3_XXS):
                return T.IQ3_S
            if ftype in (F.MOSTLY_TQ1_0, F.MOSTLY_TQ2_0):
                return T.Q4_K
            return new
        if ftype in _IQ2_FAMILY:
            return self._choose_iq2(name, cat, new)
        if cat in _ATTN_V_LIKE:
            return self._choose_attn_v(new)
        if cat == "attn_k":
            if n_expert == 8:
                return T.Q8_0
            if ftype == F.MOSTLY_IQ3_XS:
                return T.IQ3_XXS
            if ftype == F.MOSTLY_IQ3_XXS:
                return T.IQ2_S
            return new
        if cat == "attn_q":
            if ftype == F.MOSTLY_IQ3_XS:
                return T.IQ3_XXS
            if ftype == F.MOSTLY_IQ3_XXS:
                return T.IQ2_S
            return new
        if cat == "ffn_down":
            i_layer, n_layer = self._layer(cat, name)
            self.i_ffn[cat] += 1
            return self._choose_ffn_down(i_layer, n_layer, new)
        if cat == "attn_output":
            if model.arch == "falcon":
                return T.Q4_K if ftype == F.MOSTLY_Q3_K_L else new
            if n_expert == 8:
                return T.Q5_K if ftype in _MOE8_ATTN_OUTPUT_Q5_K else new
            return {F.MOSTLY_Q2_K: T.Q3_K, F.MOSTLY_IQ3_XXS: T.IQ3_S, F.MOSTLY_Q3_K_M: T.Q4_K,
                    F.MOSTLY_Q3_K_L: T.Q5_K, F.MOSTLY_IQ3_M: T.Q4_K}.get(ftype, new)
        if cat in ("ffn_gate", "ffn_up"):
            i_layer, n_layer = self._layer(cat, name)
            self.i_ffn[cat] += 1
            if ftype == F.MOSTLY_IQ3_XS and n_layer // 8 <= i_layer < 7 * n_layer // 8:
                return T.IQ3_XXS
            return new
        return new

    def _choose_iq2(self, name: str, cat: str, new: GGMLQuantizationType) -> GGMLQuantizationType:
        """The IQ1/IQ2 presets' rules (one branch in llama.cpp, ahead of the per-category ones)."""
        ftype, model = self.ftype, self.model
        iq3_s_or_q2_k = T.IQ3_S if ftype in (F.MOSTLY_IQ2_S, F.MOSTLY_IQ2_M) else T.Q2_K
        if cat in _ATTN_V_LIKE:
            self.i_attention_wv += 1
            return T.Q4_K if model.n_gqa >= 4 or model.n_expert >= 4 else iq3_s_or_q2_k
        if model.n_expert == 8 and cat == "attn_k":
            return T.Q4_K
        if cat == "ffn_down":
            below = self.i_ffn[cat] < model.n_layer // 8
            self.i_ffn[cat] += 1
            return iq3_s_or_q2_k if below else new
        if cat == "attn_output":
            if model.n_expert == 8:
                return T.Q5_K
            if ftype in (F.MOSTLY_IQ1_S, F.MOSTLY_IQ1_M):
                return T.IQ2_XXS
            if ftype in (F.MOSTLY_IQ2_S, F.MOSTLY_IQ2_M):
                return T.IQ3_S
        return new

    def _choose_attn_v(self, new: GGMLQuantizationType) -> GGMLQuantizationType:
        ftype, model = self.ftype, self.model
        gqa4 = model.n_gqa >= 4
        if ftype == F.MOSTLY_Q2_K:
            new = T.Q4_K if gqa4 else T.Q3_K
        elif ftype == F.MOSTLY_Q2_K_S and gqa4:
            new = T.Q4_K
        elif ftype == F.MOSTLY_IQ3_XXS:
            new = T.Q4_K if gqa4 else (T.IQ3_XXS if self.has_imatrix else T.IQ3_S)
        elif ftype in (F.MOSTLY_IQ3_XS, F.MOSTLY_IQ3_S) and gqa4:
            new = T.Q4_K
        elif ftype == F.MOSTLY_IQ3_M:
            new = T.Q4_K
        elif ftype == F.MOSTLY_Q3_K_M:
            new = T.Q5_K if self.i_attention_wv < 2 else T.Q4_K
        elif ftype == F.MOSTLY_Q3_K_L:
            new = T.Q5_K
        elif ftype in (F.MOSTLY_IQ4_NL, F.MOSTLY_IQ4_XS) and gqa4:
            new = T.Q5_K
        elif ftype in (F.MOSTLY_Q4_K_M, F.MOSTLY_Q5_K_M) and _use_more_bits(self.i_attention_wv, self.n_attention_wv):
            new = T.Q6_K
        elif ftype == F.MOSTLY_Q4_K_S and self.i_attention_wv < 4:
            new = T.Q5_K
        if model.is_70b and new in (T.Q3_K, T.Q4_K):
            new = T.Q5_K
        if model.n_expert == 8:
            new = T.Q8_0
        self.i_attention_wv += 1
        return new

    def _choose_ffn_down(self, i_layer: int, n_layer: int, new: GGMLQuantizationType) -> GGMLQuantizationType:
        ftype, falcon = self.ftype, self.model.arch == "falcon"
        first_eighth = i_layer < n_layer // 8
        if ftype == F.MOSTLY_Q2_K:
            return T.Q3_K
        if ftype == F.MOSTLY_Q2_K_S:
            return T.Q4_K if first_eighth else new
        if ftype == F.MOSTLY_IQ3_XXS and not self.has_imatrix:
            return T.Q4_K if first_eighth else T.Q3_K
        if ftype == F.MOSTLY_Q3_K_M:
            if i_layer < n_layer // 16:
                return T.Q5_K
            return T.Q4_K if not falcon or _use_more_bits(i_layer, n_layer) else T.Q3_K
        if ftype == F.MOSTLY_IQ3_M and (first_eighth or (self.model.n_expert == 8 and _use_more_bits(i_layer, n_layer))):
            return T.Q4_K
        if ftype == F.MOSTLY_Q3_K_L:
            return T.Q4_K if falcon else T.Q5_K
        if ftype == F.MOSTLY_Q4_K_M:
            if falcon:
                if i_layer < n_layer // 16:
                    return T.Q6_K
                return T.Q5_K if _use_more_bits(i_layer, n_layer) else T.Q4_K
            return T.Q6_K if _use_more_bits(i_layer, n_layer) else new
        if first_eighth and ftype in (F.MOSTLY_IQ4_NL, F.MOSTLY_IQ4_XS) and not self.has_imatrix:
            return T.Q5_K
        if ftype == F.MOSTLY_Q5_K_M and _use_more_bits(i_layer, n_layer):
            return T.Q6_K
        if ftype == F.MOSTLY_Q4_K_S and not falcon and first_eighth:
            return T.Q5_K
        if ftype in (F.MOSTLY_Q4_0, F.MOSTLY_Q5_0) and self.has_imatrix and first_eighth:
            return T.Q4_1 if ftype == F.MOSTLY_Q4_0 else T.Q5_1
        return new


def tensor_imatrix(imatrix: Mapping[str, Any] | None, name: str, shape: Sequence[int]) -> np.ndarray | None:
    """The importance weights llama-quantize uses for ``name``: float32 (n_cols,) or (n_expert, n_cols), or None.

    An entry whose size is not columns x experts is an error, except for the token embeddings, whose entry
    llama.cpp ignores (it never matches: imatrix tools see token ids, not embeddings).
    """
    if imatrix is None or name not in imatrix:
        return None
    weights = np.asarray(imatrix[name], dtype=np.float32)
    n_cols = int(shape[-1])
    n_expert = int(shape[-3]) if len(shape) >= 3 else 1
    if weights.size != n_cols * n_expert:
        if name in _TOKEN_EMBD:
            return None
        raise ImatrixError(f"imatrix entry {name}: {weights.size} values, the tensor needs {n_cols * n_expert} "
                           f"({n_expert} expert(s) x {n_cols} columns)")
    return weights.reshape(n_expert, n_cols) if len(shape) >= 3 else weights.reshape(n_cols)


def _explicit_type(name, shape, patterns, output_type, token_embedding_type) -> GGMLQuantizationType | None:
    """--token-embedding-type / --output-tensor-type, which llama.cpp applies as given (no fallback).

    per_layer_token_embd.weight follows --token-embedding-type unless a --tensor-type pattern names it.
    """
    cat = category(name)
    if token_embedding_type is not None and cat == "token_embd":
        if name != "per_layer_token_embd.weight" or override_type(patterns, name) is None:
            chosen = token_embedding_type
        else:
            return None
    elif output_type is not None and cat == "output":
        chosen = output_type
    else:
        return None
    if int(shape[-1]) % _block_size(chosen):
        raise ShapeError(f"{name}: rows of {shape[-1]} do not split into {chosen.name} blocks of {_block_size(chosen)}")
    return chosen


def plan_types(preset: str, metadata: Mapping[str, Any], tensors: Sequence[tuple], overrides=(),
               imatrix: Mapping[str, Any] | None = None, *, pure: bool = False, output_type=None,
               token_embedding_type=None) -> dict[str, GGMLQuantizationType]:
    """llama-quantize's type for every tensor, in the order given.

    ``tensors``: (GGUF name, numpy-order shape) or (name, shape, source type); a tensor llama-quantize
    leaves alone (norms, biases, 1-D, routers, ...) keeps its source type (F32 when none is given).
    ``overrides``: ``--tensor-type`` specs (``REGEX=TYPE`` strings, (regex, type) pairs; see plan.overrides); the first whose regex
    is found in the name wins and skips the preset rules. ``imatrix``: name -> importance weights, or None;
    whether one is given changes some choices, and presets whose tensors need one raise ImatrixError
    without it. ``pure``: every quantizable tensor gets the preset's default type (``--pure``).
    ``output_type`` / ``token_embedding_type``: type names for output.weight / token_embd.weight
    (``--output-tensor-type`` / ``--token-embedding-type``; tied embeddings take the output type).
    """
    ftype, default = PRESETS[resolve_preset(preset)]
    model = ModelInfo.from_metadata(metadata)
    patterns = parse_overrides(overrides)
    entries = [(str(t[0]), tuple(int(d) for d in t[1]), known_type(t[2]).ggml if len(t) > 2 else T.F32)
               for t in tensors]
    names = [name for name, _, _ in entries]
    output_type = None if output_type is None else known_type(output_type).ggml
    token_embedding_type = None if token_embedding_type is None else known_type(token_embedding_type).ggml
    planner = _Planner(ftype, model, has_imatrix=imatrix is not None, tied_embeddings=_OUTPUT not in names,
                       n_attention_wv=sum(category(n) in _ATTN_V_LIKE for n in names), output_type=output_type,
                       token_embedding_type=token_embedding_type)
    if imatrix is not None:
        for key, values in imatrix.items():
            if not np.all(np.isfinite(np.asarray(values, dtype=np.float32))):
                raise ImatrixError(f"imatrix entry {key} contains NaN or Inf")
    chosen: dict[str, GGMLQuantizationType] = {}
    for name, shape, source in sorted(entries, key=lambda e: tensor_sort_key(e[0])):
        if not allows_quantization(name, shape, model.arch):
            chosen[name] = source
            continue
        new = _explicit_type(name, shape, patterns, output_type, token_embedding_type)
        if new is None:
            new = default
            if _is_quantized(default):
                manual = override_type(patterns, name)
                if manual is not None:
                    new = manual
                elif not pure:
                    new = planner.choose(name, shape, category(name), default)
                try:
                    new = fallback_type(new, shape[-1])
                except ShapeError as exc:  # NVFP4, Q1_0: llama-quantize has no fallback either
                    raise ShapeError(f"{name}: {exc}") from None
        chosen[name] = new
        # llama.cpp: without an imatrix any such tensor is refused; with one, those it requantizes need an entry
        # (and every requantized tensor's entry must have the right size)
        weights = tensor_imatrix(imatrix, name, shape) if new != source else None
        if tensor_requires_imatrix(name, new, ftype) and weights is None and (imatrix is None or new != source):
            where = "no importance matrix was given" if imatrix is None else "the importance matrix has no entry for it"
            raise ImatrixError(f"preset {resolve_preset(preset)} makes {name} {new.name}, which needs an importance "
                               f"matrix (--imatrix), but {where}")
    return {name: chosen[name] for name in names}
