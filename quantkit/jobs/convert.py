"""Hugging Face folder -> GGUF in one streaming pass: plan, then per tensor read -> transform -> quantize -> write.

``plan_conversion`` reads config.json, the safetensors headers and the tokenizer (no weights) and
decides every output tensor's GGUF name, shape and type and every metadata key. ``convert`` then
hands the engine (:mod:`quantkit.engine`) each tensor's rows, read in chunks of whole groups of the
architecture's ``row_align`` rows (e.g. attention heads, so transforms stay row-local); the engine
quantizes and streams them into the atomic writer. Peak memory is one chunk plus the tokenizer,
whatever the model size.

Types: the uniform presets F32, F16, BF16 and Q8_0 follow llama.cpp's convert_hf_to_gguf.py (norms,
1-D tensors and a few kinds stay F32; rows a type cannot take fall back to F16), in its tensor order.
Every other preset (Q4_K_M, ...) is planned by :func:`quantkit.plan.presets.plan_types`,
llama-quantize's rules, and written in llama-quantize's order, so the one-pass file equals
llama-quantize's output for a lossless (bf16/f32) conversion of the same folder.
"""

from __future__ import annotations

import logging
import os
import sys
import time
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Iterator, Mapping

import gguf
import numpy as np
from gguf import GGMLQuantizationType, GGUFValueType, LlamaFileType

from ..engine import Chunk, TensorWork, rows_per_chunk, write_model
from ..errors import ImatrixError, QuantkitError
from ..ggufio import shards_note, typed
from ..ggufio.reader import shard_paths
from ..ggufio.writer import encode_kv, shard_plan
from ..plan import presets
from ..plan.imatrix_file import read_imatrix
from ..plan.overrides import override_type, parse_overrides
from ..sources.archs import OutTensor, arch_for
from ..sources.hf import HFSource
from ..sources.lora import merged_source
from ..types import known_type, quant_type
from .calibrate import LayerHessians, calibration_text, read_calibration

UNIFORM_PRESETS = {
    "F32": (GGMLQuantizationType.F32, LlamaFileType.ALL_F32),
    "F16": (GGMLQuantizationType.F16, LlamaFileType.MOSTLY_F16),
    "BF16": (GGMLQuantizationType.BF16, LlamaFileType.MOSTLY_BF16),
    "Q8_0": (GGMLQuantizationType.Q8_0, LlamaFileType.MOSTLY_Q8_0),
}
# kinds llama.cpp's converter always keeps in F32 (unless the architecture forces a type)
_F32_KINDS = {
    gguf.MODEL_TENSOR.FFN_GATE_INP,
    gguf.MODEL_TENSOR.FFN_GATE_INP_SHEXP,
    gguf.MODEL_TENSOR.POS_EMBD,
    gguf.MODEL_TENSOR.TOKEN_TYPES,
}


@dataclass
class PlannedTensor:
    """An output tensor, its GGUF type and its size in the file."""

    tensor: OutTensor
    qtype: GGMLQuantizationType

    @property
    def name(self) -> str:
        return self.tensor.name

    @property
    def shape(self) -> tuple:
        return self.tensor.shape

    @property
    def nbytes(self) -> int:
        return quant_type(self.qtype).nbytes(self.shape)

    @property
    def n_elements(self) -> int:
        return int(np.prod(self.shape, dtype=np.int64))


@dataclass
class ConversionPlan:
    """Everything decided before any weight is read."""

    source: HFSource
    arch_name: str  # GGUF general.architecture
    preset: str
    metadata: dict  # key -> quantkit.ggufio.Typed, in file order
    tensors: list[PlannedTensor]
    imatrix: dict | None

    @property
    def tensor_bytes(self) -> int:
        return sum(t.nbytes for t in self.tensors)

    @property
    def n_elements(self) -> int:
        return sum(t.n_elements for t in self.tensors)

    @property
    def bits_per_weight(self) -> float:
        return 8 * self.tensor_bytes / self.n_elements

    def expected_file_size(self) -> int:
        """Exact size of the GGUF file: header, metadata, tensor infos and aligned data."""
        align = 32
        header = 24 + sum(len(encode_kv(k, v)) for k, v in self.metadata.items())
        header += sum(8 + len(t.name.encode()) + 4 + 8 * len(t.shape) + 4 + 8 for t in self.tensors)
        padded = lambda n: -(-n // align) * align  # noqa: E731
        return padded(header) + sum(padded(t.nbytes) for t in self.tensors)


@dataclass
class ConversionResult:
    path: Path
    plan: ConversionPlan
    file_bytes: int
    seconds: float

    @property
    def bits_per_weight(self) -> float:
        return self.plan.bits_per_weight


def uniform_type(t: OutTensor, target: GGMLQuantizationType) -> GGMLQuantizationType:
    """The type llama.cpp's converter gives ``t`` for --outtype ``target`` (f32, f16, bf16, q8_0)."""
    if len(t.shape) <= 1 or t.name.endswith("_norm.weight"):
        return GGMLQuantizationType.F32
    chosen = t.force_type
    if chosen is None:
        if t.kind in _F32_KINDS or not t.name.endswith(".weight"):
            return GGMLQuantizationType.F32
        chosen = target
    if t.shape[-1] % quant_type(chosen).block_size:
        return GGMLQuantizationType.F16
    return chosen


def _tensor_types(preset, tensors, metadata, overrides, imatrix) -> dict[str, GGMLQuantizationType]:
    if preset in UNIFORM_PRESETS:
        types = {t.name: uniform_type(t, UNIFORM_PRESETS[preset][0]) for t in tensors}
        for t in tensors:
            if len(t.shape) >= 2:
                types[t.name] = override_type(overrides, t.name) or types[t.name]
        return types
    plain = {k: v.value for k, v in metadata.items()}
    return presets.plan_types(preset, plain, [(t.name, t.shape) for t in tensors], overrides=overrides, imatrix=imatrix)


@contextmanager
def quiet_gguf():
    """Silence gguf-py's info/warning logging (e.g. special token kinds its writer has no key for)."""
    log = logging.getLogger("gguf")
    level = log.level
    log.setLevel(logging.ERROR)
    try:
        yield
    finally:
        log.setLevel(level)


def _collect_metadata(arch, out_tensors, ftype) -> dict:
    """GGUF keys as llama.cpp's converter writes them, collected through a path-less gguf.GGUFWriter."""
    with quiet_gguf():
        w = gguf.GGUFWriter(None, arch.gguf_arch_name)
        _add_keys(w, arch, out_tensors, ftype)
    return writer_metadata(w)


def writer_metadata(w) -> dict:
    """The keys a path-less gguf.GGUFWriter collected, as key -> quantkit.ggufio.Typed in its order."""
    metadata = {}
    for key, value in w.kv_data[0].items():
        if value.type == GGUFValueType.ARRAY:
            items = list(value.value)
            sub = value.sub_type or GGUFValueType.get_type(items[0])
            metadata[key] = typed(items, sub)
        else:
            metadata[key] = typed(value.value, value.type)
    return metadata


def _add_keys(w, arch, out_tensors, ftype) -> None:
    """In llama.cpp's order: general.* (gguf.Metadata from the folder), hyperparameters, file type,
    quantization version, tokenizer."""
    for t in out_tensors:  # only for the parameter count behind general.size_label
        w.add_tensor_info(t.name, t.shape, np.float32, 0, raw_dtype=GGMLQuantizationType.F32)
    total, shared, expert, n_expert = w.get_total_parameter_count()
    w.add_type(gguf.GGUFType.MODEL)
    meta = gguf.Metadata.load(None, arch.source.folder, None, total)
    if meta.name is None:
        meta.name = arch.source.folder.name
    if meta.size_label is None and total > 0:
        meta.size_label = gguf.size_label(total, shared, expert, n_expert)
    meta.set_gguf_meta_model(w)
    arch.set_parameters(w)
    w.add_file_type(ftype)
    w.add_quantization_version(gguf.GGML_QUANT_VERSION)
    arch.write_vocab(w)


def plan_conversion(model_dir, preset: str = "F16", imatrix=None, tensor_types=(), lora=(),
                    lora_scale: float = 1.0) -> ConversionPlan:
    """Decide names, shapes, types and metadata of the GGUF made from ``model_dir`` (reads no weights).

    ``lora``: PEFT adapter folders merged into the weights as they are read (``lora_scale`` times each).
    """
    preset = str(preset).strip().upper()
    if preset in UNIFORM_PRESETS:
        ftype = UNIFORM_PRESETS[preset][1]
    else:  # Q3_K means Q3_K_M etc., as in llama-quantize
        preset = presets.resolve_preset(preset)
        ftype = presets.file_type(preset)
    overrides = parse_overrides(tensor_types)
    source = merged_source(model_dir, lora, lora_scale)
    arch = arch_for(source)
    out_tensors = arch.tensors()
    metadata = _collect_metadata(arch, out_tensors, ftype)
    if isinstance(imatrix, (str, Path)):
        imatrix = read_imatrix(imatrix)
    types = _tensor_types(preset, out_tensors, metadata, overrides, imatrix)
    planned = [PlannedTensor(t, known_type(types[t.name]).ggml) for t in out_tensors]
    if preset not in UNIFORM_PRESETS:  # llama-quantize writes its loader's order: by layer, then name
        planned.sort(key=lambda p: presets.tensor_sort_key(p.name))
    for p in planned:
        quant_type(p.qtype).nbytes(p.shape)  # the row fits the type (ShapeError otherwise)
        if quant_type(p.qtype).requires_imatrix and (imatrix is None or p.name not in imatrix):
            raise ImatrixError(f"{p.name}: {p.qtype.name} needs an importance matrix entry (--imatrix)")
    return ConversionPlan(source, arch.gguf_arch_name, preset, metadata, planned, imatrix)


def _chunks(plan: ConversionPlan, p: PlannedTensor, hessians=None) -> Iterator[Chunk]:
    """``p``'s rows, read from the checkpoint in chunks of whole ``row_align`` groups and transformed.

    A chunk of a stacked expert tensor (3-D: experts first) is given as one chunk per expert, each
    with its expert's importance weights. ``hessians``: a :class:`quantkit.jobs.calibrate.LayerHessians`;
    a 2-D block-typed tensor made from one weight gets its matrix (error-feedback quantization).
    """
    t = p.tensor
    weights = None if plan.imatrix is None else plan.imatrix.get(p.name)
    hessian = None
    if hessians is not None and len(t.parts) == 1 and len(p.shape) == 2 and quant_type(p.qtype).family != "floats":
        hessian = hessians.get(p.name)

    def chunks(values: np.ndarray, part: int, consumed: int, first_row: int = 0) -> Iterator[Chunk]:
        if hessian is not None:
            yield Chunk(values=values, consumed=consumed, hessian=hessian)
            return
        if weights is None or p.qtype == GGMLQuantizationType.F32:
            yield Chunk(values=values, consumed=consumed)
            return
        # (n_cols,), or one row per expert (n_expert, n_cols) or flat
        w = np.asarray(weights, dtype=np.float32).reshape(max(len(t.parts), 1), -1)[part]
        if values.ndim != 3:
            yield Chunk(values=values, imatrix=w, consumed=consumed)
            return
        expert_rows = w.reshape(-1, values.shape[-1])[first_row:first_row + len(values)]
        for i, (v, r) in enumerate(zip(values, expert_rows)):
            yield Chunk(values=v, imatrix=r, consumed=consumed if i == 0 else 0)

    if t.values is not None:
        yield from chunks(t.values(), 0, 0)
        return
    for part, (hf_name, info) in enumerate(zip(t.parts, t.sources)):
        if len(info.shape) <= 1:
            values = plan.source.read(hf_name)
            yield from chunks(t.transform(values) if t.transform else values, part, info.nbytes)
            continue
        rows = info.shape[0]
        step = rows_per_chunk(int(np.prod(info.shape[1:], dtype=np.int64)), t.row_align)
        for start in range(0, rows, step):
            stop = min(rows, start + step)
            values = plan.source.read(hf_name, start, stop)
            if t.transform:
                values = t.transform(values)
            yield from chunks(values, part, info.nbytes * (stop - start) // rows, start)


def convert(model_dir: str | os.PathLike, output: str | os.PathLike | None = None, preset: str = "F16", *,
            imatrix: str | os.PathLike | Mapping | None = None, tensor_types: Iterable[str] = (),
            dry_run: bool = False, threads: int | None = None, overwrite: bool = False, progress: bool = True,
            lora: Iterable = (), lora_scale: float = 1.0, split_max_size: int = 0,
            split_max_tensors: int = 0, optimize: bool = False, calibrate: bool = False,
            calibration: str | os.PathLike | None = None) -> ConversionResult | ConversionPlan:
    """Convert the Hugging Face folder ``model_dir`` to the GGUF file ``output`` with ``preset``.

    ``imatrix``: path of an importance matrix (or a mapping GGUF tensor name -> weights);
    ``tensor_types``: ``"REGEX=TYPE"`` overrides; ``threads``: kernel threads (default: the idle
    cores); ``lora``: PEFT adapter folders merged in (``W + lora_scale * alpha / r * B @ A``);
    ``split_max_size`` / ``split_max_tensors``: write llama.cpp's split files; ``optimize``: the
    data-free search of ``quantize(..., optimize=True)`` (same types and sizes). With ``dry_run`` nothing
    is written and the :class:`ConversionPlan` is returned; otherwise a :class:`ConversionResult`
    (``path``: the file, or the first shard). ``calibrate`` (with ``optimize``): run the model on
    ``calibration`` (a text file; default: the held-in half of the built-in text) and quantize each
    decoder weight with error feedback (:mod:`quantkit.jobs.calibrate`, docs/optimize.md).
    """
    if calibrate and not optimize:
        raise QuantkitError("--calibrate needs --optimize (error feedback is part of the optimized path)")
    if calibrate and lora:
        raise QuantkitError("--calibrate cannot be combined with --lora yet")
    start = time.perf_counter()
    plan = plan_conversion(model_dir, preset, imatrix=imatrix, tensor_types=tensor_types, lora=lora,
                           lora_scale=lora_scale)
    if dry_run:
        if progress:
            print_plan(plan)
            if split_max_size or split_max_tensors:
                print_shards(plan, output or "OUT.gguf", split_max_size, split_max_tensors)
        return plan
    if output is None:
        raise QuantkitError("no output path given (-o OUT.gguf)")
    output = Path(output)
    hessians = None
    if calibrate:
        text = calibration_text(None if calibration is None else read_calibration(calibration))
        hessians = LayerHessians(plan.source.folder, text, types={p.name: p.qtype for p in plan.tensors},
                                 progress=progress, threads=threads)
    work = [TensorWork(p.name, p.qtype, p.shape, lambda p=p: _chunks(plan, p, hessians), optimize=optimize)
            for p in plan.tensors]
    paths = write_model(output, plan.metadata, work, inputs=plan.source.inputs, overwrite=overwrite, threads=threads,
                        progress=progress, total=sum(info.nbytes for p in plan.tensors for info in p.tensor.sources),
                        desc=f"{plan.source.folder.name} -> {plan.preset}", split_max_size=split_max_size,
                        split_max_tensors=split_max_tensors)
    result = ConversionResult(paths[0], plan, sum(p.stat().st_size for p in paths), time.perf_counter() - start)
    if progress:
        print(
            f"wrote {shards_note(paths)}: {result.file_bytes / 1e6:.1f} MB, {len(plan.tensors)} tensors, "
            f"{result.bits_per_weight:.2f} bits per weight, {result.seconds:.1f} s",
            file=sys.stderr,
        )
    return result


def print_shards(plan: ConversionPlan, output, split_max_size: int, split_max_tensors: int, file=None) -> None:
    """The --dry-run lines of a split conversion: each shard's file name, tensor count and tensor MB."""
    counts = shard_plan([p.nbytes for p in plan.tensors], split_max_size, split_max_tensors)
    paths = shard_paths(output, len(counts)) if len(counts) > 1 else [Path(output)]
    first = 0
    for path, count in zip(paths, counts):
        mb = sum(p.nbytes for p in plan.tensors[first:first + count]) / 1e6
        print(f"{path.name}: {count} tensors, {mb:.1f} MB", file=file or sys.stdout)
        first += count


def print_plan(plan: ConversionPlan, file=None) -> None:
    """The --dry-run table: one line per tensor (name, shape, type, MB), then the totals."""
    file = file or sys.stdout
    rows = [("tensor", "shape", "type", "MB")]
    rows += [(p.name, " x ".join(map(str, p.shape)), p.qtype.name, f"{p.nbytes / 1e6:.2f}") for p in plan.tensors]
    widths = [max(len(r[i]) for r in rows) for i in range(4)]
    for r in rows:
        print("  ".join(c.ljust(w) if i < 3 else c.rjust(w) for i, (c, w) in enumerate(zip(r, widths))), file=file)
    counts: dict[str, int] = {}
    for p in plan.tensors:
        counts[p.qtype.name] = counts.get(p.qtype.name, 0) + 1
    print(
        f"{plan.source.folder.name} ({plan.arch_name}) -> {plan.preset}: {len(plan.tensors)} tensors "
        f"({', '.join(f'{n} {k}' for k, n in counts.items())}), {plan.n_elements:,} weights, "
        f"{plan.bits_per_weight:.2f} bits per weight, expected file size {plan.expected_file_size() / 1e6:.1f} MB",
        file=file,
    )
