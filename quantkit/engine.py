"""The one streaming engine: planned tensors -> one GGUF file, a row chunk at a time.

Every job that writes a model (``convert``, ``quantize``, the scorecard's files) describes each output
tensor as a :class:`TensorWork` - its name, type, shape and a function yielding its rows in
:class:`Chunk` s - and hands the list to :func:`write_model`. The engine quantizes each chunk of
float32 rows to the tensor's type (``quantkit.quantize``: NaN/Inf refused, bytes equal llama.cpp's),
or passes through bytes already in that type, and streams them into the atomic
:class:`quantkit.ggufio.GGUFStreamWriter`, with writes overlapping the next chunk's work. Peak memory
is about one chunk of ``CHUNK_BYTES`` float32 (plus the writer's small queue), whatever the model size.
"""

from __future__ import annotations

import os
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterable, Iterator

import numpy as np
from gguf import GGMLQuantizationType
from tqdm import tqdm

from .ggufio import TensorInfo, open_gguf_writer
from .quants import quantize

CHUNK_BYTES = 32 << 20  # float32 bytes of one row chunk
WRITE_BEHIND = 2  # chunks queued for the writer thread


@dataclass(frozen=True)
class Chunk:
    """Consecutive rows of one output tensor.

    Exactly one of ``values`` (rows to quantize: float32, or a QuantizedTensor of rows in a stored type,
    which quantize() widens itself) and ``stored`` (uint8: bytes already in the
    tensor's type) is set. ``imatrix``: importance weights for ``values`` (one per column) or None.
    ``hessian``: second moments of the layer's inputs (n_cols, n_cols): quantize with error feedback.
    ``consumed``: input bytes this chunk stands for (progress only).
    """

    values: np.ndarray | None = None
    stored: np.ndarray | None = None
    imatrix: np.ndarray | None = None
    consumed: int = 0
    hessian: np.ndarray | None = None


@dataclass(frozen=True)
class TensorWork:
    """One output tensor: GGUF name, type and numpy-order shape, and its rows as chunks, in order.

    ``optimize``: quantize with ``quantize(..., optimize=True)`` (same type and size, a harder search).
    """

    name: str
    qtype: GGMLQuantizationType
    shape: tuple
    chunks: Callable[[], Iterator[Chunk]]
    optimize: bool = False


def rows_per_chunk(row_elements: int, align: int = 1) -> int:
    """Rows of ``row_elements`` float32 values in one chunk: about CHUNK_BYTES, a multiple of ``align``."""
    step = max(1, CHUNK_BYTES // (4 * max(row_elements, 1)))
    return max(align, step - step % align)


def idle_cores() -> int:
    """Cores not busy with other work: usable cores minus the 1-minute load average, at least 1.

    Numba's parallel kernels wait at a barrier for their slowest thread; on an oversubscribed machine
    one descheduled thread stalls them all (measured: 2 threads 3x slower than 1 at load 8 on 2 cores).
    """
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    try:
        busy = os.getloadavg()[0]
    except OSError:
        busy = 0.0
    return max(1, min(cores, int(cores - busy + 0.5)))


def write_model(path, metadata: dict, tensors: list[TensorWork], *, inputs: Iterable = (), overwrite: bool = False,
                threads: int | None = None, progress: bool = True, total: int | None = None,
                desc: str | None = None, split_max_size: int = 0, split_max_tensors: int = 0) -> list[Path]:
    """Write the GGUF ``path``: ``metadata`` (key -> value or ``typed``), then ``tensors`` in order.

    ``inputs``: files the output must not overwrite; ``threads``: kernel threads (default
    :func:`idle_cores`); ``total``: the sum of the chunks' ``consumed``, for the progress bar (stderr);
    ``split_max_size`` / ``split_max_tensors``: llama.cpp's split files (``GGUFSplitWriter``).
    Returns the files written (one, or the shards in order).
    """
    threads = threads or idle_cores()
    infos = [TensorInfo(t.name, t.qtype, t.shape) for t in tensors]
    with open_gguf_writer(path, metadata, infos, overwrite=overwrite, inputs=list(inputs), write_behind=WRITE_BEHIND,
                          split_max_size=split_max_size, split_max_tensors=split_max_tensors) as writer, tqdm(
        total=total, unit="B", unit_scale=True, desc=desc, disable=not progress, file=sys.stderr
    ) as bar:
        for t in tensors:
            bar.set_postfix_str(t.name, refresh=False)
            for chunk in t.chunks():
                if chunk.stored is not None:
                    data = chunk.stored
                else:
                    data = quantize(chunk.values, t.qtype, imatrix=chunk.imatrix, threads=threads, name=t.name,
                                    optimize=t.optimize, hessian=chunk.hessian).data
                writer.write(t.name, data)
                bar.update(chunk.consumed)
    return writer.paths
