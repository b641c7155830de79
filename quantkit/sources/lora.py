"""PEFT LoRA adapters: read them and merge them into a base (writing them as GGUF: quantkit.jobs.lora).

A PEFT adapter folder holds ``adapter_config.json`` (``r``, ``lora_alpha``, ``target_modules``, ...)
and ``adapter_model.safetensors`` with, per adapted linear layer ``<module>``, the tensors
``base_model.model.<module>.lora_A.weight`` (A: rank x n_in) and ``...lora_B.weight`` (B: n_out x rank).
The layer's effective weight is ``W + (alpha / r) * B @ A``.

GGUF adapter (as llama.cpp's convert_lora_to_gguf.py writes it): ``general.type = adapter``,
``adapter.type = lora``, ``adapter.lora.alpha`` (float32), per adapted tensor ``<gguf name>.lora_a``
(A) and ``<gguf name>.lora_b`` (B), where ``<gguf name>`` is the base tensor's name in the base
model's GGUF (``blk.0.attn_q.weight``). Row transforms of the base architecture (llama's Q/K
permutation) act on W's rows and so on B's rows; A is written as it is. llama.cpp applies the
adapter as ``W x + scale * (alpha / rank) * B (A x)``, the rank being read from the tensors.

Merging (:class:`MergedSource`) adds ``scale * (alpha / r) * B[rows] @ A`` to each row chunk of W
as it is read, in float32, so conversion stays streaming.
"""

from __future__ import annotations

import hashlib
import json
import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from gguf import GGMLQuantizationType

from ..errors import QuantkitError
from .hf import HFSource, SourceTensor, file_tensors, read_rows

ADAPTER_CONFIG = "adapter_config.json"
ADAPTER_WEIGHTS = "adapter_model.safetensors"
PEFT_PREFIX = "base_model.model."
LORA_TYPES = {  # --type -> the type of the 2-D tensors (llama.cpp's converter writes no file type for adapters)
    "F32": GGMLQuantizationType.F32,
    "F16": GGMLQuantizationType.F16,
    "BF16": GGMLQuantizationType.BF16,
    "Q8_0": GGMLQuantizationType.Q8_0,
}


class AdapterError(QuantkitError):
    """A LoRA adapter that is malformed, does not fit its base model, or that llama.cpp cannot apply."""


@dataclass(frozen=True)
class LoraPair:
    """One adapted base tensor: its checkpoint name and the A (rank x n_in) and B (n_out x rank) tensors."""

    base_name: str
    a: SourceTensor
    b: SourceTensor

    @property
    def rank(self) -> int:
        return self.a.shape[0]


def _refusal(name: str) -> str:
    """Why llama.cpp cannot apply adapter tensor ``name``, which is not a lora_A/lora_B weight."""
    if ".lora_embedding_" in name:
        return f"{name!r} is LoRA on the token embeddings, which quantkit does not convert"
    if ".lora_magnitude_vector" in name:
        return f"{name!r} is a DoRA magnitude; llama.cpp applies plain LoRA only"
    return f"{name!r} is a whole weight, not a lora_A/lora_B pair; llama.cpp cannot apply it"


class LoraAdapter:
    """A PEFT LoRA adapter folder: ``config``, ``alpha`` (as llama.cpp uses it: scale = alpha / rank),
    ``pairs`` (checkpoint base tensor name -> :class:`LoraPair`, in the order their tensors appear)."""

    def __init__(self, folder):
        self.folder = Path(folder)
        config_path = self.folder / ADAPTER_CONFIG
        weights_path = self.folder / ADAPTER_WEIGHTS
        if not self.folder.is_dir():
            raise AdapterError(f"{self.folder}: not a folder (expected a PEFT adapter folder)")
        if not config_path.is_file():
            raise AdapterError(f"{self.folder}: no {ADAPTER_CONFIG}; is this a PEFT LoRA adapter folder?")
        if not weights_path.is_file():
            if (self.folder / "adapter_model.bin").is_file():
                raise AdapterError(f"{self.folder}: only adapter_model.bin (pickle); quantkit reads safetensors only - "
                                   "save the adapter with safe_serialization=True")
            raise AdapterError(f"{self.folder}: no {ADAPTER_WEIGHTS}")
        try:
            self.config = json.loads(config_path.read_text(encoding="utf-8"))
        except (json.JSONDecodeError, UnicodeDecodeError) as e:
            raise AdapterError(f"{config_path}: not valid JSON ({e})") from None
        if not isinstance(self.config, dict):
            raise AdapterError(f"{config_path}: expected a JSON object")
        self.alpha = self._alpha(Path(self.folder.name, ADAPTER_CONFIG))
        self.pairs = self._pairs(weights_path)

    def _alpha(self, config_path: Path) -> float:
        c = self.config
        if str(c.get("peft_type", "LORA")).upper() != "LORA":
            raise AdapterError(f"{config_path}: peft_type {c.get('peft_type')!r}; only LORA adapters can be converted")
        for key, why in (("use_dora", "DoRA adapters"), ("modules_to_save", "modules_to_save (whole trained modules)"),
                         ("alpha_pattern", "per-module alpha (alpha_pattern)"),
                         ("fan_in_fan_out", "fan_in_fan_out (transposed Conv1D) adapters")):
            if c.get(key):
                raise AdapterError(f"{config_path}: {key} is set; llama.cpp cannot apply {why}")
        if c.get("bias", "none") != "none":
            raise AdapterError(f"{config_path}: bias {c['bias']!r}; llama.cpp's LoRA applies no trained biases")
        r, alpha = c.get("r"), c.get("lora_alpha")
        for key, value in (("r", r), ("lora_alpha", alpha)):
            if isinstance(value, bool) or not isinstance(value, (int, float)) or value <= 0:
                raise AdapterError(f"{config_path}: {key} {value!r} is not a positive number")
        if c.get("use_rslora"):  # rsLoRA scales by alpha / sqrt(r); llama.cpp by alpha / r
            alpha = alpha * math.sqrt(r)
        return float(alpha)

    def _pairs(self, weights_path: Path) -> dict[str, LoraPair]:
        path = Path(self.folder.name, ADAPTER_WEIGHTS)  # in messages
        halves: dict[str, dict[str, SourceTensor]] = {}
        for t in file_tensors(weights_path):
            module, sep, half = t.name.rpartition(".lora_")
            if not sep or half not in ("A.weight", "B.weight"):
                raise AdapterError(f"{path}: {_refusal(t.name)}")
            base = module.removeprefix(PEFT_PREFIX) + ".weight"
            if t.dtype not in ("F32", "F16", "BF16") or len(t.shape) != 2:
                raise AdapterError(
                    f"{path}: tensor {t.name!r} is {t.dtype} {t.shape}; expected a 2-D F32, F16 or BF16 matrix")
            halves.setdefault(base, {})[half[0]] = t
        pairs = {}
        rank_pattern = self.config.get("rank_pattern") or {}
        for base, ab in halves.items():
            if set(ab) != {"A", "B"}:
                have = next(iter(ab.values())).name
                raise AdapterError(f"{path}: {have!r} has no lora_{'B' if 'A' in ab else 'A'} partner")
            pair = LoraPair(base, ab["A"], ab["B"])
            if pair.b.shape[1] != pair.rank:
                raise AdapterError(
                    f"{path}: {pair.b.name!r} has {pair.b.shape[1]} columns, its lora_A has rank {pair.rank}")
            if not rank_pattern and pair.rank != self.config["r"]:
                raise AdapterError(
                    f"{path}: {pair.a.name!r} has rank {pair.rank}, adapter_config.json says r = {self.config['r']}")
            pairs[base] = pair
        if not pairs:
            raise AdapterError(f"{path}: no lora_A/lora_B tensors")
        return pairs

    def check_fits(self, base: HFSource) -> None:
        """Every adapted tensor exists in ``base`` with shape (rows of B, columns of A)."""
        for pair in self.pairs.values():
            if pair.base_name not in base.tensors and pair.base_name == "lm_head.weight":
                raise AdapterError(f"{self.folder.name}: the adapter targets lm_head, which base {base.folder.name} "
                                   "ties to the embeddings; llama.cpp cannot apply it")
            if pair.base_name not in base.tensors:
                raise AdapterError(f"{self.folder.name}: {pair.a.name!r} adapts {pair.base_name!r}, which base "
                                   f"{base.folder.name} does not have")
            expected = base.tensors[pair.base_name].shape
            if (pair.b.shape[0], pair.a.shape[1]) != tuple(expected):
                raise AdapterError(
                    f"{self.folder.name}: {pair.base_name!r} is {tuple(expected)} in the base, the adapter's B @ A is "
                    f"({pair.b.shape[0]}, {pair.a.shape[1]})"
                )

    def delta(self, pair: LoraPair, start: int, stop: int) -> np.ndarray:
        """(alpha / rank) * B[start:stop] @ A in float32."""
        b = read_rows(pair.b, start, stop)
        return np.float32(self.alpha / pair.rank) * (b @ read_rows(pair.a))


class LoraMerge:
    """PEFT adapters to merge into a base model: ``W + scale * (alpha / r) * B @ A`` for each adapter."""

    def __init__(self, folders, scale: float = 1.0):
        self.adapters = [LoraAdapter(folder) for folder in folders]
        self.scale = float(scale)

    def check_fits(self, base: HFSource) -> None:
        for adapter in self.adapters:
            adapter.check_fits(base)

    @property
    def names(self) -> set[str]:
        """Checkpoint names of the tensors the adapters change."""
        return {name for adapter in self.adapters for name in adapter.pairs}

    @property
    def files(self) -> list[Path]:
        return [a.folder / name for a in self.adapters for name in (ADAPTER_CONFIG, ADAPTER_WEIGHTS)]

    def tag(self) -> str:
        """8 hex digits naming these adapters and this scale (for cache file names)."""
        digest = hashlib.sha256(repr(self.scale).encode())
        for path in self.files:
            digest.update(path.read_bytes())
        return digest.hexdigest()[:8]

    def add_to(self, name: str, values: np.ndarray, start: int = 0) -> np.ndarray:
        """Rows ``start:start + len(values)`` of checkpoint tensor ``name`` (float32) with the adapters added."""
        for adapter in self.adapters:
            pair = adapter.pairs.get(name)
            if pair is not None:
                values += np.float32(self.scale) * adapter.delta(pair, start, start + values.shape[0])
        return values

    def merge_into(self, params: dict) -> None:
        """Add the adapters to torch parameters (checkpoint name -> tensor), in place."""
        import torch

        for adapter in self.adapters:
            for name, pair in adapter.pairs.items():
                if name not in params:
                    raise AdapterError(f"{adapter.folder.name}: {name!r} is no parameter of the transformers model")
                param = params[name]
                delta = np.float32(self.scale) * adapter.delta(pair, 0, pair.b.shape[0])
                param.add_(torch.from_numpy(delta).to(param.device, param.dtype))


class MergedSource:
    """A base :class:`HFSource` whose weights read with a :class:`LoraMerge` added, row chunk by row chunk.

    Everything but ``read`` and ``inputs`` is the base's (config, tensors, folder, ...).
    """

    def __init__(self, base: HFSource, merge: LoraMerge):
        self._base = base
        self.merge = merge
        merge.check_fits(base)

    def __getattr__(self, name):
        return getattr(self._base, name)

    @property
    def inputs(self) -> list[Path]:
        return self._base.inputs + self.merge.files

    def read(self, name: str, start: int = 0, stop: int | None = None) -> np.ndarray:
        return self.merge.add_to(name, self._base.read(name, start, stop), start)


def merged_source(model_dir, lora=(), lora_scale: float = 1.0):
    """``HFSource(model_dir)``, or with ``lora`` (adapter folders, or a LoraMerge) a :class:`MergedSource` of it."""
    source = HFSource(model_dir)
    if not lora:
        return source
    return MergedSource(source, lora if isinstance(lora, LoraMerge) else LoraMerge(lora, lora_scale))
