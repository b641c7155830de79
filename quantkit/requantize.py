"""Requantize a GGUF file to another type, streaming one row chunk at a time.

Every weight matrix (2-D or more, name ending in ``.weight``) whose row length fits the target
type is dequantized from its source type and quantized to the target; other tensors (norms,
biases, rows the type cannot take) are copied as they are. Peak memory is one chunk of about
``CHUNK_BYTES`` of float32, whatever the model size. The output is written atomically.
(The per-tensor rules of llama-quantize's presets - Q4_K_M and friends - belong to the plan of
``quantkit convert``; this is the uniform case.)
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from gguf import GGMLQuantizationType, GGUFValueType, LlamaFileType

from .errors import ImatrixError, QuantkitError
from .ggufio import GGUFStreamWriter, TensorInfo, read_gguf, typed
from .types import QuantType, quant_type

CHUNK_BYTES = 64 << 20  # float32 bytes dequantized and quantized at a time


@dataclass(frozen=True)
class TensorPlan:
    name: str
    shape: tuple
    source: GGMLQuantizationType
    target: GGMLQuantizationType


def file_type(qt: QuantType) -> LlamaFileType:
    """general.file_type for a file whose weights are mostly ``qt`` (the _M preset for k-quants)."""
    if qt.name == "F32":
        return LlamaFileType.ALL_F32
    members = LlamaFileType.__members__
    return members.get(f"MOSTLY_{qt.name}") or members[f"MOSTLY_{qt.name}_M"]


def plan(tensors, target: QuantType) -> list[TensorPlan]:
    """Which type each tensor gets: the target for weight matrices whose rows fit it, else its own."""
    plans = []
    for t in tensors:
        fits = len(t.shape) >= 2 and t.name.endswith(".weight") and t.shape[-1] % target.block_size == 0
        plans.append(TensorPlan(t.name, tuple(t.shape), t.qtype, target.ggml if fits else t.qtype))
    return plans


def _row_chunks(tensor, rows_per_chunk: int):
    """(first row, QuantizedTensor-like view of the rows) over a tensor's data, without copying."""
    from .quants import QuantizedTensor

    n_per_row = tensor.shape[-1]
    nrows = tensor.nbytes // quant_type(tensor.qtype).row_bytes(n_per_row)
    row_bytes = tensor.nbytes // nrows
    data = tensor.data
    for first in range(0, nrows, rows_per_chunk):
        count = min(rows_per_chunk, nrows - first)
        yield QuantizedTensor(tensor.qtype, (count, n_per_row), data[first * row_bytes:(first + count) * row_bytes])


def requantize(src, dst, qtype, imatrix: dict | None = None, threads: int | None = None,
               overwrite: bool = False, progress: bool = True) -> list[TensorPlan]:
    """Write ``dst``: the GGUF ``src`` with its weight matrices quantized to ``qtype``.

    ``imatrix``: optional mapping tensor name -> importance weights (one per column).
    Returns the per-tensor plan that was carried out.
    """
    from tqdm import tqdm

    from .quants import dequantize, quantize

    target = quant_type(qtype)
    source = read_gguf(src)
    plans = plan(source.tensors, target)
    for p in plans:
        if p.source != p.target:
            quant_type(p.source)  # can we read it? (raises UnsupportedTypeError naming the type)
    if target.requires_imatrix and not imatrix:
        raise ImatrixError(f"{target.name} needs an importance matrix (--imatrix)")
    metadata = source.metadata.copy()
    metadata["general.file_type"] = typed(int(file_type(target)), GGUFValueType.UINT32)
    metadata["general.quantization_version"] = typed(2, GGUFValueType.UINT32)
    infos = [TensorInfo(p.name, p.target, p.shape) for p in plans]
    total = sum(t.nbytes for t in source.tensors)
    start = time.perf_counter()
    with GGUFStreamWriter(dst, metadata, infos, overwrite=overwrite, inputs=[src]) as writer, tqdm(
        total=total, unit="B", unit_scale=True, desc=f"-> {target.name}", disable=not progress
    ) as bar:
        for tensor, p in zip(source.tensors, plans):
            if p.source == p.target:
                writer.write(p.name, tensor.data)
                bar.update(tensor.nbytes)
                continue
            weights = None if imatrix is None else imatrix.get(p.name)
            if target.requires_imatrix and weights is None:
                raise ImatrixError(f"{p.name}: no importance matrix entry, and {target.name} needs one")
            rows_per_chunk = max(1, CHUNK_BYTES // (4 * p.shape[-1]))
            for chunk in _row_chunks(tensor, rows_per_chunk):
                values = dequantize(chunk, threads=threads)
                writer.write(p.name, quantize(values, target.ggml, imatrix=weights, threads=threads, name=p.name).data)
                bar.update(chunk.data.nbytes)
    source.close()
    if progress:
        size = Path(dst).stat().st_size
        print(f"wrote {dst}: {size / 1e6:.1f} MB in {time.perf_counter() - start:.1f} s")
    return plans


def relative_rmse(reference, candidate) -> float:
    """sqrt(sum (a-b)^2 / sum a^2) over all weights a of ``reference`` and b of ``candidate`` (GGUF paths)."""
    err = ref = 0.0
    with read_gguf(reference) as a, read_gguf(candidate) as b:
        for ta in a.tensors:
            tb = b.tensor(ta.name)
            if ta.qtype == tb.qtype and np.array_equal(ta.data, tb.data):
                ref += float(np.sum(ta.dequantize().astype(np.float64) ** 2))
                continue
            va = ta.dequantize().astype(np.float64)
            err += float(np.sum((va - tb.dequantize()) ** 2))
            ref += float(np.sum(va**2))
    if ref == 0:
        raise QuantkitError(f"{reference}: all weights are zero")
    return float(np.sqrt(err / ref))
