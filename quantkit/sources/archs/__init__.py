"""Architecture families: how a Hugging Face checkpoint becomes llama.cpp's GGUF tensors and keys.

Each module here defines :class:`Arch` subclasses listing the ``architectures`` names of
``config.json`` they convert. An ``Arch`` answers three questions, the way llama.cpp's
convert_hf_to_gguf.py does for the same model:

- ``set_parameters(w)``: the model's hyperparameters as GGUF keys, written through a
  ``gguf.GGUFWriter`` used as a key collector (so keys and value types are gguf-py's);
- ``set_vocab(w)``: the tokenizer (see :mod:`quantkit.sources.vocab`);
- ``tensors()``: the output tensors, each an :class:`OutTensor` saying which checkpoint tensors it
  is made of and which row-local transform applies (Q/K permutation, norm + 1, ...), so the
  pipeline can stream it in row chunks.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass, field
from typing import Callable

import gguf
import numpy as np

from ...errors import QuantkitError, first_line
from ..hf import HFSource, SourceError
from ..vocab import set_bpe_vocab

# config.json "architectures" name -> module under quantkit.sources.archs defining its Arch
REGISTRY = {
    "LlamaForCausalLM": "llama",
    "MistralForCausalLM": "llama",
    "MixtralForCausalLM": "llama",
    "Qwen2ForCausalLM": "qwen",
    "Qwen3ForCausalLM": "qwen",
    "Qwen3MoeForCausalLM": "qwen",
    "Phi3ForCausalLM": "phi3",
    "Gemma2ForCausalLM": "gemma",
    "Gemma3ForCausalLM": "gemma",
    "SmolLM3ForCausalLM": "llama",
    "BertModel": "bert",
}



def kinds(*names: str) -> tuple:
    """gguf.MODEL_TENSOR kinds by name: ``kinds("ATTN_Q", "ATTN_K")``."""
    return tuple(gguf.MODEL_TENSOR[name] for name in names)


# Tensors llama.cpp's loader requires (created without TENSOR_NOT_REQUIRED in src/models/<arch>.cpp):
# outside the blocks of every decoder (Arch.required_tensors' default); the attention of a decoder
# block, with its FFN norm; its gated feed-forward; the feed-forward of a MoE block.
DECODER_TENSORS = kinds("TOKEN_EMBD", "OUTPUT_NORM")
ATTENTION = kinds("ATTN_NORM", "ATTN_Q", "ATTN_K", "ATTN_V", "ATTN_OUT")
DECODER_BLOCK = ATTENTION + kinds("FFN_NORM")
GATED_FFN = kinds("FFN_GATE", "FFN_DOWN", "FFN_UP")
MOE_FFN = kinds("FFN_GATE_INP", "FFN_GATE_EXP", "FFN_DOWN_EXP", "FFN_UP_EXP")


@dataclass
class OutTensor:
    """One GGUF tensor and how to make it.

    ``parts``: checkpoint tensor names; one part is the tensor itself, several are stacked along a
    new first axis (MoE experts -> a 3-D tensor). ``transform(rows)`` maps float32 rows of a part to
    output rows; it sees whole groups of ``row_align`` rows (e.g. one attention head), never a
    fraction. ``values``: a tensor computed rather than read (then ``parts`` is empty).
    ``kind``: its gguf.MODEL_TENSOR (for type rules), ``force_type``: a type the architecture
    imposes (llama.cpp's tensor_force_quant), or None.
    """

    name: str
    shape: tuple
    parts: tuple = ()
    transform: Callable[[np.ndarray], np.ndarray] | None = None
    row_align: int = 1
    values: Callable[[], np.ndarray] | None = None
    kind: object = None
    force_type: object = None
    sources: list = field(default_factory=list)  # SourceTensor of each part


class Arch:
    """Base of every architecture: maps checkpoint names through gguf's TensorNameMap."""

    architectures: tuple[str, ...] = ()
    model_arch = None  # gguf.MODEL_ARCH

    def __init__(self, source: HFSource, hf_arch: str):
        self.source = source
        self.hf_arch = hf_arch
        self.config = dict(source.config)
        if isinstance(self.config.get("text_config"), dict):
            self.config.update(self.config["text_config"])
        self.block_count = int(self.hparam("num_hidden_layers", "n_layers", "n_layer"))
        self.name_map = gguf.get_tensor_name_map(self.model_arch, self.block_count)
        self.rope = self._rope_parameters()

    # --- config ---------------------------------------------------------------------------------

    def hparam(self, *keys, default=KeyError):
        """The first of ``keys`` present in config.json; a one-line error if none is and no default."""
        for key in keys:
            if key in self.config:
                return self.config[key]
        if default is KeyError:
            raise SourceError(f"{self.source.folder / 'config.json'}: missing {keys[0]!r} (needed for {self.hf_arch})")
        return default

    def _rope_parameters(self) -> dict:
        """rope_parameters (transformers 5) or rope_scaling, with rope_theta folded in."""
        rope = dict(self.config.get("rope_parameters") or self.config.get("rope_scaling") or {})
        rope = dict(rope.get("full_attention", rope))
        if "rope_theta" not in rope and "rope_theta" in self.config:
            rope["rope_theta"] = self.config["rope_theta"]
        if "rope_type" not in rope and "type" in rope:
            rope["rope_type"] = rope["type"]
        for key in ("partial_rotary_factor", "original_max_position_embeddings"):
            if key not in rope and key in self.config:
                rope[key] = self.config[key]
        return rope

    def _rope_theta_swa(self):
        """The rope base of sliding-window layers (rope_parameters.sliding_attention or a local-theta key)."""
        rope = self.config.get("rope_parameters") or self.config.get("rope_scaling") or {}
        if "full_attention" in rope or "sliding_attention" in rope:
            return rope.get("sliding_attention", {}).get("rope_theta")
        keys = ("local_rope_theta", "rope_local_theta", "rope_theta_local", "swa_rope_theta", "rope_local_base_freq")
        return self.hparam(*keys, default=None)

    @property
    def gguf_arch_name(self) -> str:
        return gguf.MODEL_ARCH_NAMES[self.model_arch]

    # --- keys -----------------------------------------------------------------------------------

    def set_parameters(self, w) -> None:
        """Hyperparameter keys common to text models (llama.cpp's TextModel.set_gguf_parameters)."""
        w.add_block_count(self.block_count)
        if (n_ctx := self.hparam("max_position_embeddings", "n_ctx", "n_positions", default=None)) is not None:
            w.add_context_length(n_ctx)
        if (n_embd := self.hparam("hidden_size", "n_embd", default=None)) is not None:
            w.add_embedding_length(n_embd)
        if (n_ff := self.hparam("intermediate_size", "n_inner", default=None)) is not None:
            w.add_feed_forward_length(n_ff)
        if (n_head := self.hparam("num_attention_heads", "n_head", default=None)) is not None:
            w.add_head_count(n_head)
        if (n_head_kv := self.hparam("num_key_value_heads", "n_kv_heads", default=None)) is not None:
            w.add_head_count_kv(n_head_kv)
        rope_type = self.rope.get("rope_type")
        factor = self.rope.get("factor")
        if rope_type == "linear" and factor is not None:
            w.add_rope_scaling_type(gguf.RopeScalingType.LINEAR)
            w.add_rope_scaling_factor(factor)
        elif rope_type == "yarn" and factor is not None:
            w.add_rope_scaling_type(gguf.RopeScalingType.YARN)
            w.add_rope_scaling_factor(factor)
            w.add_rope_scaling_orig_ctx_len(self.rope["original_max_position_embeddings"])
        elif rope_type in ("su", "longrope"):
            w.add_rope_scaling_type(gguf.RopeScalingType.LONGROPE)
        if (theta := self.rope.get("rope_theta")) is not None:
            w.add_rope_freq_base(theta)
        if (theta_swa := self._rope_theta_swa()) is not None:
            w.add_rope_freq_base_swa(theta_swa)
        if (eps := self.hparam("rms_norm_eps", default=None)) is not None:
            w.add_layer_norm_rms_eps(eps)
        if (eps := self.hparam("layer_norm_eps", "layer_norm_epsilon", default=None)) is not None:
            w.add_layer_norm_eps(eps)
        if (n_experts := self.hparam("num_local_experts", "num_experts", default=None)) is not None:
            w.add_expert_count(n_experts)
        if (n_used := self.hparam("num_experts_per_tok", default=None)) is not None:
            w.add_expert_used_count(n_used)
        if (head_dim := self.config.get("head_dim")) is not None:
            w.add_key_length(head_dim)
            w.add_value_length(head_dim)

    def set_vocab(self, w) -> None:
        set_bpe_vocab(w, self.source.folder, self.config)

    def write_vocab(self, w) -> None:
        """``set_vocab``, with tokenizer files of an unexpected structure (a list where gguf-py or the
        tokenizer code expects an object, a missing field, ...) reported in one line."""
        try:
            self.set_vocab(w)
        except QuantkitError:
            raise
        except (KeyError, IndexError, TypeError, AttributeError, ValueError, RecursionError) as e:
            raise SourceError(f"{self.source.folder}: tokenizer files of an unexpected structure "
                              f"({type(e).__name__}: {first_line(e, 60)})") from None

    # --- tensors --------------------------------------------------------------------------------

    def rename(self, hf_name: str) -> str | None:
        """The checkpoint name to map (prefixes stripped), or None to skip the tensor."""
        if hf_name.endswith((".rotary_emb.inv_freq", ".attention.masked_bias", ".attention.bias")):
            return None
        return hf_name

    def gguf_name(self, hf_name: str) -> tuple[object, str]:
        """(gguf.MODEL_TENSOR, GGUF name) of a checkpoint tensor; a one-line error if unknown."""
        found = self.name_map.get_type_and_name(hf_name, try_suffixes=(".weight", ".bias"))
        if found is None:
            raise SourceError(f"{self.source.folder}: tensor {hf_name!r} has no GGUF name for {self.hf_arch}")
        return found

    def transform(self, gguf_name: str, kind, shape: tuple):
        """(row-local transform or None, row alignment) for one tensor; none by default."""
        return None, 1

    def extra_tensors(self) -> list[OutTensor]:
        """Tensors computed from the config (e.g. Llama 3's rope_freqs); none by default."""
        return []

    def group(self, items: list[tuple[str, object, str]]) -> list[OutTensor]:
        """Turn mapped (hf_name, kind, gguf_name) items into output tensors; one each by default."""
        out = []
        for hf_name, kind, name in items:
            info = self.source.weight(hf_name)
            transform, align = self.transform(name, kind, info.shape)
            out.append(OutTensor(name, info.shape, (hf_name,), transform, align, kind=kind, sources=[info]))
        return out

    def expected_tensors(self) -> list[str]:
        """GGUF names every checkpoint of this architecture must provide (checked before writing): the
        tensors llama.cpp's loader requires for the architecture, so no file is written that it cannot load."""
        names = [gguf.TENSOR_NAMES[k] + ".weight" for k in self.required_tensors]
        names += [gguf.TENSOR_NAMES[k] + ".bias" for k in self.required_biases]
        for bid in range(self.block_count):
            names += [gguf.TENSOR_NAMES[k].format(bid=bid) + ".weight" for k in self.required_block_tensors]
            names += [gguf.TENSOR_NAMES[k].format(bid=bid) + ".bias" for k in self.required_block_biases]
        return names

    # gguf.MODEL_TENSOR kinds llama.cpp requires (src/models/<arch>.cpp: created without TENSOR_NOT_REQUIRED)
    required_tensors: tuple = DECODER_TENSORS  # outside the blocks: their .weight
    required_block_tensors: tuple = ()  # in every block: their .weight
    required_biases: tuple = ()  # outside the blocks: their .bias (BERT's layer norms)
    required_block_biases: tuple = ()  # in every block: their .bias

    def tensors(self) -> list[OutTensor]:
        items = []
        for hf_name in self.source.tensors:
            mapped = self.rename(hf_name)
            if mapped is None:
                continue
            kind, name = self.gguf_name(mapped)
            items.append((hf_name, kind, name))
        out = self.extra_tensors() + self.group(items)
        self.check_embeddings(out)
        present = {t.name for t in out}
        missing = [n for n in self.expected_tensors() if n not in present]
        if missing:
            raise SourceError(
                f"{self.source.folder}: checkpoint lacks the tensor for {missing[0]!r}"
                + (f" and {len(missing) - 1} more" if len(missing) > 1 else "")
                + f" ({self.hf_arch}, {self.block_count} layers)"
            )
        return out

    def check_embeddings(self, out: list[OutTensor]) -> None:
        """token_embd (and output) must be vocab_size x hidden_size as config.json says."""
        vocab, hidden = self.config.get("vocab_size"), self.config.get("hidden_size")
        if vocab is None or hidden is None:
            return
        names = {gguf.TENSOR_NAMES[k] + ".weight" for k in (gguf.MODEL_TENSOR.TOKEN_EMBD, gguf.MODEL_TENSOR.OUTPUT)}
        for t in out:
            if t.name in names and t.parts:
                self.check_shape(t.parts[0], t.shape, (vocab, hidden))

    def check_shape(self, hf_name: str, shape: tuple, expected: tuple) -> None:
        if tuple(shape) != tuple(expected):
            raise SourceError(
                f"{self.source.tensor(hf_name).path}: tensor {hf_name!r} has shape {tuple(shape)}, "
                f"config.json implies {tuple(expected)}"
            )


def supported_architectures() -> list[str]:
    return sorted(REGISTRY)


def _short_list(names: list[str], suffix: str = "ForCausalLM") -> str:
    """``BertModel; Gemma2, Llama, ...ForCausalLM``: the names, those ending in ``suffix`` folded (short messages)."""
    folded = [n[: -len(suffix)] for n in names if n.endswith(suffix)]
    return "; ".join([n for n in names if not n.endswith(suffix)] + [", ".join(folded) + suffix])


def arch_for(source: HFSource) -> Arch:
    """The Arch converting ``source`` (by config.json's ``architectures``)."""
    names = source.config.get("architectures") or []
    if not isinstance(names, list) or not names:
        raise SourceError(f"{source.folder / 'config.json'}: no 'architectures' list")
    hf_arch = names[0]
    module_name = REGISTRY.get(hf_arch)
    if module_name is None:
        raise QuantkitError(
            f"{source.folder.name}/config.json: architecture {str(hf_arch)[:40]!r} is not supported; "
            f"supported: {_short_list(supported_architectures())}"
        )
    module = importlib.import_module(f"{__name__}.{module_name}")
    for cls in vars(module).values():
        if isinstance(cls, type) and issubclass(cls, Arch) and hf_arch in cls.architectures:
            return cls(source, hf_arch)
    raise AssertionError(f"{module.__name__} lists no Arch for {hf_arch}")
