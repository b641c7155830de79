"""Requantize a GGUF file with one of llama-quantize's presets, streaming one row chunk at a time.

The preset's rules (quantkit.plan.presets.plan_types, llama.cpp's llama-quant.cpp) give each
tensor its type; tensors whose type does not change (norms, biases, ...) are copied byte for byte,
the others are dequantized from their source type and quantized to the target, with the importance
matrix row of their expert when one is given. Like llama-quantize, the output lists the tensors in
llama.cpp's order (layer, then name) and ends its metadata with general.quantization_version and
general.file_type. Peak memory is one chunk of about ``CHUNK_BYTES`` of float32, whatever the model
size. The output is written atomically.
"""

from __future__ import annotations

import sys
import time
from dataclasses import dataclass
from typing import Iterator

from gguf import GGMLQuantizationType, GGUFValueType

from ..engine import Chunk, TensorWork, rows_per_chunk, write_model
from ..errors import QuantkitError
from ..ggufio import GGUFTensor, read_gguf, shards_note, typed
from ..ggufio.writer import SPLIT_KEYS
from ..plan.presets import PRESETS, plan_types, resolve_preset, tensor_imatrix, tensor_sort_key
from ..quants import QuantizedTensor, check_finite, dequantize
from ..types import quant_type

QUANTIZATION_VERSION = 2  # GGML_QNT_VERSION


@dataclass(frozen=True)
class TensorPlan:
    name: str
    shape: tuple
    source: GGMLQuantizationType
    target: GGMLQuantizationType


def _chunks(tensor: GGUFTensor, p: TensorPlan, imatrix, hessians=None) -> Iterator[Chunk]:
    """``tensor``'s bytes as they are when its type stays, else its rows dequantized in chunks.

    Rows are those of the last axis; a chunk never crosses from one expert (index of axis -3) to the
    next, so each chunk takes its expert's importance weights. ``hessians``: an object whose
    ``get(name)`` gives a 2-D tensor's input second moments or None (error-feedback quantization).
    """
    if p.source == p.target:
        check_finite(tensor, p.name)  # F32/F16/BF16 copies are checked as quantized tensors are
        yield Chunk(stored=tensor.data, consumed=tensor.nbytes)
        return
    if tensor.nbytes == 0:  # a zero dimension: no rows
        return
    weights = tensor_imatrix(imatrix, p.name, p.shape)
    hessian = None
    if hessians is not None and len(p.shape) == 2 and quant_type(p.target).family != "floats":
        hessian = hessians.get(p.name)
    n_per_row = p.shape[-1]
    row_bytes = quant_type(p.source).row_bytes(n_per_row)
    nrows = tensor.nbytes // row_bytes
    rows_per_expert = p.shape[-2] if len(p.shape) >= 2 else 1
    step = rows_per_chunk(n_per_row)
    for expert_first in range(0, nrows, rows_per_expert):
        expert_end = min(expert_first + rows_per_expert, nrows)
        expert_weights = weights[expert_first // rows_per_expert] if weights is not None and weights.ndim == 2 else weights
        for first in range(expert_first, expert_end, step):
            count = min(step, expert_end - first)
            stored = tensor.data[first * row_bytes:(first + count) * row_bytes]
            if p.source == GGMLQuantizationType.BF16:  # quantize() widens BF16 itself, in the kernel where it can
                values = QuantizedTensor(p.source, (count, n_per_row), stored)
            else:
                values = dequantize(QuantizedTensor(p.source, (count, n_per_row), stored))
            yield Chunk(values=values, imatrix=expert_weights, consumed=stored.nbytes, hessian=hessian)


def requantize(src, dst, preset, imatrix=None, threads: int | None = None, overwrite: bool = False,
               progress: bool = True, overrides=(), pure: bool = False, output_type=None,
               token_embedding_type=None, extra_metadata=None, split_max_size: int = 0,
               split_max_tensors: int = 0, optimize: bool = False, hessians=None) -> list[TensorPlan]:
    """Write ``dst``: the GGUF ``src`` quantized with llama-quantize's ``preset`` (Q4_K_M, Q8_0, IQ4_XS, ...).

    ``imatrix``: optional mapping GGUF tensor name -> importance weights, (n_cols,) or (n_expert, n_cols).
    ``overrides``: ``REGEX=TYPE`` specs like llama-quantize's --tensor-type; ``pure``: --pure;
    ``output_type`` / ``token_embedding_type``: --output-tensor-type / --token-embedding-type.
    ``extra_metadata``: keys set last, after general.file_type (llama-quantize's kv overrides, e.g. the
    ``quantize.imatrix.*`` keys its tool adds; see Imatrix.quantize_metadata).
    ``split_max_size`` / ``split_max_tensors``: write llama.cpp's split files (a split ``src`` is read
    whole from its first shard; its split.* keys are not copied). ``optimize``: the data-free search of
    ``quantize(..., optimize=True)`` on the tensors that are requantized (same types and sizes).
    ``hessians`` (with ``optimize``): a :class:`quantkit.jobs.calibrate.HessianFile` of input second
    moments by GGUF name; the 2-D tensors it has are quantized with error feedback.
    Returns the per-tensor plan that was carried out, in output order.
    """
    name = resolve_preset(preset)
    if hessians is not None and not optimize:
        raise QuantkitError("--calibrate-from needs --optimize (error feedback is part of the optimized path)")
    start = time.perf_counter()
    with read_gguf(src) as source:
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
        if hessians is not None:
            hessians.check([(p.name, p.shape) for p in plans if p.source != p.target and len(p.shape) == 2])
        work = [TensorWork(p.name, p.target, p.shape, lambda t=t, p=p: _chunks(t, p, imatrix, hessians),
                           optimize=optimize)
                for t, p in zip(tensors, plans)]
        paths = write_model(dst, metadata, work, inputs=[src] + [shard.path for shard in source.shards],
                            overwrite=overwrite, threads=threads, progress=progress,
                            total=sum(t.nbytes for t in tensors), desc=f"-> {name}",
                            split_max_size=split_max_size, split_max_tensors=split_max_tensors)
    if progress:
        size = sum(p.stat().st_size for p in paths)
        print(f"wrote {shards_note(paths)}: {size / 1e6:.1f} MB in {time.perf_counter() - start:.1f} s", file=sys.stderr)
    return plans
