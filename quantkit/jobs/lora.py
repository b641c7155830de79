"""A PEFT LoRA adapter -> llama.cpp's GGUF LoRA adapter, as convert_lora_to_gguf.py writes it.

The adapter's tensors (:mod:`quantkit.sources.lora`) get the base model's GGUF names through its
architecture; B's rows take the base's row transforms (llama's Q/K permutation). The engine writes
them as F32, F16, BF16 or Q8_0.
"""

from __future__ import annotations

import sys
from pathlib import Path

import gguf
import numpy as np
from gguf import GGMLQuantizationType

from ..engine import Chunk, TensorWork, write_model
from ..sources.archs import arch_for
from ..sources.hf import HFSource, read_rows
from ..sources.lora import ADAPTER_CONFIG, ADAPTER_WEIGHTS, LORA_TYPES, AdapterError, LoraAdapter, LoraPair
from ..types import quant_type
from .convert import quiet_gguf, writer_metadata


def _out_tensors(adapter: LoraAdapter, arch) -> list[tuple[str, LoraPair, object]]:
    """(GGUF base name, pair, transform of B's rows or None) per pair, through the base's architecture."""
    by_part = {}
    for t in arch.tensors():
        for part in t.parts:
            by_part[part] = t
    out = []
    for pair in adapter.pairs.values():
        t = by_part.get(pair.base_name)
        if t is None:
            raise AdapterError(
                f"{adapter.folder.name}: {pair.base_name!r} is not a tensor llama.cpp's {arch.gguf_arch_name} uses")
        if len(t.parts) != 1:
            raise AdapterError(f"{adapter.folder.name}: {pair.base_name!r} is one expert of {t.name}; LoRA on MoE "
                               "experts is not supported (merge it instead: convert --lora)")
        out.append((t.name, pair, t.transform))
    return out


def _lora_type(shape: tuple, target: GGMLQuantizationType) -> GGMLQuantizationType:
    """llama.cpp's converter's choice: ``target``, or F16 when the row does not fit its blocks."""
    if shape[-1] % quant_type(target).block_size:
        return GGMLQuantizationType.F16
    return target


def _metadata(adapter: LoraAdapter, base: HFSource, arch_name: str, infos) -> dict:
    """The keys convert_lora_to_gguf.py writes, through a path-less gguf.GGUFWriter."""
    with quiet_gguf():
        w = gguf.GGUFWriter(None, arch_name)
        for info in infos:  # for the (negated, LoRA) parameter count gguf.Metadata reads
            w.add_tensor_info(info.name, info.shape, np.float32, 0, raw_dtype=GGMLQuantizationType.F32)
        total = w.get_total_parameter_count()[0]
        w.add_type(gguf.GGUFType.ADAPTER)
        w.add_string(gguf.Keys.Adapter.TYPE, "lora")
        meta = gguf.Metadata.load(None, adapter.folder, None, total)
        if meta.name is None:
            meta.name = base.folder.name
        meta.set_gguf_meta_model(w)
        w.add_float32(gguf.Keys.Adapter.LORA_ALPHA, adapter.alpha)
        tokens = adapter.config.get("alora_invocation_tokens")
        if tokens:
            w.add_key_value(gguf.Keys.Adapter.ALORA_INVOCATION_TOKENS, list(tokens), gguf.GGUFValueType.ARRAY,
                            gguf.GGUFValueType.UINT32)
        elif adapter.config.get("invocation_string"):
            raise AdapterError(f"{adapter.folder / ADAPTER_CONFIG}: aLoRA invocation_string without "
                               "alora_invocation_tokens; give the token ids")
        w.add_quantization_version(gguf.GGML_QUANT_VERSION)
    return writer_metadata(w)


def convert_lora(adapter_dir, base_dir, output, type_name: str = "F16", *, overwrite: bool = False,
                 threads: int | None = None, progress: bool = True) -> Path:
    """Write the PEFT adapter ``adapter_dir`` for the base model ``base_dir`` as llama.cpp's GGUF LoRA adapter.

    ``type_name``: F32, F16, BF16 or Q8_0 (lora_b falls back to F16 when its rank is not a multiple
    of 32, as in llama.cpp's converter). ``threads``: kernel threads (default: the idle cores).
    """
    key = str(type_name).strip().upper()
    if key not in LORA_TYPES:
        raise AdapterError(f"--type {type_name!r}: an adapter is written as one of {', '.join(LORA_TYPES)}")
    base = HFSource(base_dir)
    adapter = LoraAdapter(adapter_dir)
    adapter.check_fits(base)
    arch = arch_for(base)
    tensors = _out_tensors(adapter, arch)
    work = []
    for name, pair, transform in tensors:
        read_b = (lambda p=pair, f=transform: f(read_rows(p.b)) if f else read_rows(p.b))
        for suffix, info, read in ((".lora_a", pair.a, lambda p=pair: read_rows(p.a)), (".lora_b", pair.b, read_b)):
            work.append(TensorWork(name + suffix, _lora_type(info.shape, LORA_TYPES[key]), info.shape,
                                   lambda read=read, info=info: iter([Chunk(values=read(), consumed=info.nbytes)])))
    metadata = _metadata(adapter, base, arch.gguf_arch_name, work)
    output = Path(output)
    write_model(output, metadata, work, inputs=[adapter.folder / ADAPTER_WEIGHTS, adapter.folder / ADAPTER_CONFIG],
                overwrite=overwrite, threads=threads, progress=False)
    if progress:
        print(f"wrote {output}: {len(work)} tensors, {output.stat().st_size / 1e6:.1f} MB", file=sys.stderr)
    return output
