"""Mixture-of-experts checkpoints: per-expert 2-D projections -> llama.cpp's 3-D ``ffn_*_exps``.

Hugging Face stores each expert's gate/up/down projection as its own tensor; llama.cpp wants one
tensor per projection and layer, experts along the first axis. :class:`MergedExperts` groups them
and emits the merged tensors where llama.cpp's converter emits them: when a layer's last expert
tensor (in name order) has been seen, the projections in the architecture's order. The parts are
streamed expert by expert, never stacked in memory.

transformers 5 saves them already stacked: ``mlp.experts.gate_up_proj`` of shape
(n_expert, 2 * n_ff, n_embd), the gate projection in the first n_ff rows of each expert and the up
projection in the rest, and ``mlp.experts.down_proj`` of shape (n_expert, n_embd, n_ff). As
llama.cpp's converter does for Qwen3-MoE, ``down_proj`` is written as it is and ``gate_up_proj``
as two tensors, gate then up, where they appear in the file.
"""

from __future__ import annotations

import re

import numpy as np

from ..hf import SourceError
from . import OutTensor

FUSED_PATTERN = re.compile(r"^model\.layers\.(\d+)\.mlp\.experts\.(gate_up_proj|down_proj)(?:\.weight)?$")


class MergedExperts:
    """Mixin for an :class:`~quantkit.sources.archs.Arch` whose experts are stored one by one.

    ``expert_pattern`` matches an expert tensor's name with groups (layer, expert, projection);
    ``expert_projections`` lists the projections in llama.cpp's emission order; ``merged_name``
    gives the name gguf's TensorNameMap knows for the merged tensor.
    """

    expert_pattern: re.Pattern
    expert_projections: tuple[str, ...]

    def merged_name(self, layer: int, projection: str) -> str:
        raise NotImplementedError

    def rename(self, hf_name):
        if self.expert_pattern.match(hf_name) or FUSED_PATTERN.match(hf_name):
            return hf_name  # grouped below, never mapped one by one
        return super().rename(hf_name)

    def gguf_name(self, hf_name):
        if self.expert_pattern.match(hf_name) or FUSED_PATTERN.match(hf_name):
            return None, hf_name
        return super().gguf_name(hf_name)

    def group(self, items):
        n_experts = int(self.hparam("num_local_experts", "num_experts"))
        n_parts = len(self.expert_projections) * n_experts
        pending: dict[int, dict[tuple[str, int], str]] = {}  # layer -> (projection, expert) -> hf name
        out = []
        for hf_name, kind, name in items:
            if fused := FUSED_PATTERN.match(hf_name):
                out += self._fused(hf_name, int(fused[1]), fused[2], n_experts)
                continue
            match = self.expert_pattern.match(hf_name)
            if match is None:
                out += super().group([(hf_name, kind, name)])
                continue
            layer, expert, projection = int(match[1]), int(match[2]), match[3]
            if expert >= n_experts:
                raise SourceError(f"{self.source.folder}: {hf_name}: expert {expert}, config.json has {n_experts} experts")
            found = pending.setdefault(layer, {})
            found[(projection, expert)] = hf_name
            if len(found) == n_parts:
                out += [self._merged(layer, p, [found[(p, e)] for e in range(n_experts)]) for p in self.expert_projections]
                del pending[layer]
        if pending:
            layer, found = next(iter(pending.items()))
            projection, expert = next((p, e) for p in self.expert_projections for e in range(n_experts)
                                      if (p, e) not in found)
            _, name = super().gguf_name(self.merged_name(layer, projection))
            raise SourceError(
                f"{self.source.folder}: checkpoint lacks expert {expert} of {name!r} "
                f"(layer {layer} has {len(found)} of {n_parts} expert tensors)"
            )
        return out

    def _merged(self, layer: int, projection: str, parts: list[str]) -> OutTensor:
        kind, name = super().gguf_name(self.merged_name(layer, projection))
        infos = [self.source.weight(p) for p in parts]
        for part, info in zip(parts, infos):
            self.check_shape(part, info.shape, infos[0].shape)
        return OutTensor(name, (len(parts), *infos[0].shape), tuple(parts), kind=kind, sources=infos)

    def _fused(self, hf_name: str, layer: int, projection: str, n_experts: int) -> list[OutTensor]:
        """The output tensors of a stacked ``down_proj`` or ``gate_up_proj`` (transformers 5)."""
        info = self.source.weight(hf_name)
        if len(info.shape) != 3 or info.shape[0] != n_experts or (projection == "gate_up_proj" and info.shape[1] % 2):
            raise SourceError(f"{info.path}: tensor {hf_name!r} has shape {info.shape}; expected ({n_experts} experts, "
                              f"rows, columns){', an even number of rows' if projection == 'gate_up_proj' else ''}")
        prefix = f"model.layers.{layer}.mlp.experts."
        if projection == "down_proj":
            kind, name = super().gguf_name(prefix + "down_proj.weight")
            return [OutTensor(name, info.shape, (hf_name,), kind=kind, sources=[info])]
        n_ff = info.shape[1] // 2
        out = []
        for half, part in enumerate(("gate_proj", "up_proj")):
            kind, name = super().gguf_name(prefix + part + ".weight")
            rows = slice(half * n_ff, (half + 1) * n_ff)
            out.append(OutTensor(name, (n_experts, n_ff, info.shape[2]), (hf_name,),
                                 transform=lambda values, rows=rows: np.ascontiguousarray(values[:, rows]),
                                 kind=kind, sources=[info]))
        return out
