"""Mixture-of-experts checkpoints: per-expert 2-D projections -> llama.cpp's 3-D ``ffn_*_exps``.

Hugging Face stores each expert's gate/up/down projection as its own tensor; llama.cpp wants one
tensor per projection and layer, experts along the first axis. :class:`MergedExperts` groups them
and emits the merged tensors where llama.cpp's converter emits them: when a layer's last expert
tensor (in name order) has been seen, the projections in the architecture's order. The parts are
streamed expert by expert, never stacked in memory.
"""

from __future__ import annotations

import re

from ..hf import SourceError
from . import OutTensor


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
        if self.expert_pattern.match(hf_name):
            return hf_name  # grouped below, never mapped one by one
        return super().rename(hf_name)

    def gguf_name(self, hf_name):
        if self.expert_pattern.match(hf_name):
            return None, hf_name
        return super().gguf_name(hf_name)

    def group(self, items):
        n_experts = int(self.hparam("num_local_experts", "num_experts"))
        n_parts = len(self.expert_projections) * n_experts
        pending: dict[int, dict[tuple[str, int], str]] = {}  # layer -> (projection, expert) -> hf name
        out = []
        for hf_name, kind, name in items:
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
