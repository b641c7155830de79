"""Requantize a GGUF file with one of llama-quantize's presets, streaming one row chunk at a time.

The preset's rules (quantkit.converter.presets.plan_types, llama.cpp's llama-quant.cpp) give each
tensor its type; tensors whose type does not change (norms, biases, ...) are copied byte for byte,
the others are dequantized from their source type and quantized to the target, with the importance
matrix row of their expert when one is given. Like llama-quantize, the output lists the tensors in
llama.cpp's order (layer, then name) and ends its metadata with general.quantization_version and
general.file_type. Peak memory is one chunk of about ``CHUNK_BYTES`` of float32, whatever the model
size. The output is written atomically.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

from gguf import GGMLQuantizationType, GGUFValueType

from .converter.presets import PRESETS, plan_types, resolve_preset, tensor_imatrix, tensor_sort_key
from .errors import QuantkitError
from .ggufio import TensorInfo, open_gguf_writer, read_gguf, shards_note, typed
from .ggufio.writer import SPLIT_KEYS
from .types import quant_type

CHUNK_BYTES = 64 << 20  # float32 bytes dequantized and quantized at a time
QUANTIZATION_VERSION = 2  # GGML_QNT_VERSION


@dataclass(frozen=True)
class TensorPlan:
    name: str
    shape: tuple
    source: GGMLQuantizationType
    target: GGMLQuantizationType


def _row_chunks(tensor, rows_per_chunk: int):
    """(expert index, QuantizedTensor-like view of rows) over a tensor's data, without copying.

    Rows are those of the last axis; a chunk never crosses from one expert (index of axis -3) to the next.
    """
    from .quants import QuantizedTensor

    n_per_row = tensor.shape[-1]
    nrows = tensor.nbytes // quant_type(tensor.qtype).row_bytes(n_per_row)
    rows_per_expert = tensor.shape[-2] if len(tensor.shape) >= 2 else 1
    row_bytes = tensor.nbytes // nrows
    data = tensor.data
    for expert_first in range(0, nrows, rows_per_expert):
        expert_end = min(expert_first + rows_per_expert, nrows)
        for first in range(expert_first, expert_end, rows_per_chunk):
            count = min(rows_per_chunk, expert_end - first)
            view = QuantizedTensor(tensor.qtype, (count, n_per_row), data[first * row_bytes:(first + count) * row_bytes])
            yield expert_first // rows_per_expert, view


def requantize(src, dst, preset, imatrix=None, threads: int | None = None, overwrite: bool = False,
               progress: bool = True, overrides=(), pure: bool = False, output_type=None,
               token_embedding_type=None, extra_metadata=None, split_max_size: int = 0,
               split_max_tensors: int = 0) -> list[TensorPlan]:
    """Write ``dst``: the GGUF ``src`` quantized with llama-quantize's ``preset`` (Q4_K_M, Q8_0, IQ4_XS, ...).

    ``imatrix``: optional mapping GGUF tensor name -> importance weights, (n_cols,) or (n_expert, n_cols).
    ``overrides``: (pattern, type name) pairs like llama-quantize's --tensor-type; ``pure``: --pure;
    ``output_type`` / ``token_embedding_type``: --output-tensor-type / --token-embedding-type.
    ``extra_metadata``: keys set last, after general.file_type (llama-quantize's kv overrides, e.g. the
    ``quantize.imatrix.*`` keys its tool adds; see Imatrix.quantize_metadata).
    ``split_max_size`` / ``split_max_tensors``: write llama.cpp's split files (a split ``src`` is read
    whole from its first shard; its split.* keys are not copied).
    Returns the per-tensor plan that was carried out, in output order.
    """
    from tqdm import tqdm

    from .quants import dequantize, quantize

    name = resolve_preset(preset)
    source = read_gguf(src)
    try:
        tensors = sorted(source.tensors, key=lambda t: tensor_sort_key(t.name))
        try:
            targets = plan_types(name, source.metadata, [(t.name, t.shape, t.qtype) for t in tensors],
                                 overrides=overrides, imatrix=imatrix, pure=pure, output_type=output_type,
                                 token_embedding_type=token_embedding_type)
        except QuantkitError as e:
            raise type(e)(f"{src}: {e}") from None
        plans = [TensorPlan(t.name, tuple(t.shape), t.qtype, targets[t.name]) for t in tensors]
        for p in plans:
            if p.source != p.target:
                quant_type(p.source)  # can we read it? (raises UnsupportedTypeError naming the type)
                quant_type(p.target)
        metadata = source.metadata.copy()
        for key in SPLIT_KEYS:  # as llama-quantize: the output is one file unless it is split anew
            metadata.pop(key, None)
        for key in ("general.quantization_version", "general.file_type"):  # llama.cpp moves them to the end
            metadata.pop(key, None)
        metadata["general.quantization_version"] = typed(QUANTIZATION_VERSION, GGUFValueType.UINT32)
        metadata["general.file_type"] = typed(int(PRESETS[name][0]), GGUFValueType.UINT32)
        for key, value in (extra_metadata or {}).items():
            metadata.pop(key, None)
            metadata[key] = value
        infos = [TensorInfo(p.name, p.target, p.shape) for p in plans]
        start = time.perf_counter()
        inputs = [src] + [shard.path for shard in source.shards]
        with open_gguf_writer(dst, metadata, infos, overwrite=overwrite, inputs=inputs, write_behind=2,
                              split_max_size=split_max_size, split_max_tensors=split_max_tensors) as writer, tqdm(
            total=sum(t.nbytes for t in tensors), unit="B", unit_scale=True, desc=f"-> {name}", disable=not progress
        ) as bar:
            for tensor, p in zip(tensors, plans):
                bar.set_postfix_str(p.name, refresh=False)
                if p.source == p.target:
                    writer.write(p.name, tensor.data)
                    bar.update(tensor.nbytes)
                    continue
                weights = tensor_imatrix(imatrix, p.name, p.shape)
                rows_per_chunk = max(1, CHUNK_BYTES // (4 * p.shape[-1]))
                for expert, chunk in _row_chunks(tensor, rows_per_chunk):
                    row_weights = weights[expert] if weights is not None and weights.ndim == 2 else weights
                    values = dequantize(chunk, threads=threads)
                    writer.write(p.name, quantize(values, p.target, imatrix=row_weights, threads=threads, name=p.name).data)
                    bar.update(chunk.data.nbytes)
    finally:
        source.close()
    if progress:
        size = sum(p.stat().st_size for p in writer.paths)
        print(f"wrote {shards_note(writer.paths)}: {size / 1e6:.1f} MB in {time.perf_counter() - start:.1f} s")
    return plans
