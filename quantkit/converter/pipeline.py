"""Hugging Face folder -> GGUF in one streaming pass: plan, then per tensor read -> transform -> quantize -> write.

``plan_conversion`` reads config.json, the safetensors headers and the tokenizer (no weights) and
decides every output tensor's GGUF name, shape and type and every metadata key. ``convert`` then
reads each tensor in row chunks of about ``CHUNK_BYTES`` of float32 (whole groups of the
architecture's ``row_align`` rows, e.g. attention heads, so transforms stay row-local), transforms,
quantizes and streams the bytes into :class:`quantkit.ggufio.GGUFStreamWriter`, which writes under a
temporary name and renames on success. Peak memory is one chunk plus the tokenizer, whatever the
model size.

Types: the uniform presets F32, F16, BF16 and Q8_0 follow llama.cpp's convert_hf_to_gguf.py (norms,
1-D tensors and a few kinds stay F32; rows a type cannot take fall back to F16), in its tensor order.
Every other preset (Q4_K_M, ...) is planned by :func:`quantkit.converter.presets.plan_types`,
llama-quantize's rules, and written in llama-quantize's order, so the one-pass file equals
llama-quantize's output for a lossless (bf16/f32) conversion of the same folder.
"""

from __future__ import annotations

import logging
import re
import sys
import time
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

import gguf
import numpy as np
from gguf import GGMLQuantizationType, GGUFValueType, LlamaFileType

from ..errors import ImatrixError, QuantkitError
from ..ggufio import GGUFStreamWriter, TensorInfo, typed
from ..source import HFSource
from ..types import quant_type
from .archs import OutTensor, arch_for

CHUNK_BYTES = 32 << 20  # float32 bytes of one row chunk
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
        from ..ggufio.writer import encode_kv

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


def _presets():
    """quantkit.converter.presets (llama-quantize's rules), imported when a preset needs it."""
    try:
        from . import presets
    except ImportError:
        raise QuantkitError("llama-quantize presets are not available (quantkit.converter.presets is missing)") from None
    return presets


def parse_overrides(overrides) -> list[tuple[str, str]]:
    """``["REGEX=TYPE", ...]`` (or (regex, type) pairs) -> checked (regex, type name) pairs."""
    parsed = []
    for item in overrides or ():
        if isinstance(item, str):
            pattern, sep, type_name = item.rpartition("=")
            if not sep or not pattern:
                raise QuantkitError(f"--tensor-type {item!r}: expected REGEX=TYPE, e.g. 'attn_v=Q8_0'")
        else:
            pattern, type_name = item
        try:
            re.compile(pattern)
        except re.error as e:
            raise QuantkitError(f"--tensor-type {pattern!r}: bad regular expression ({e})") from None
        parsed.append((pattern, quant_type(type_name.upper() if isinstance(type_name, str) else type_name).name))
    return parsed


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
                match = next((name for pattern, name in overrides if re.search(pattern, t.name)), None)
                if match is not None:
                    types[t.name] = quant_type(match).ggml
        return types
    plain = {k: v.value for k, v in metadata.items()}
    return _presets().plan_types(preset, plain, [(t.name, t.shape) for t in tensors], overrides=overrides, imatrix=imatrix)


@contextmanager
def _quiet_gguf():
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
    with _quiet_gguf():
        w = gguf.GGUFWriter(None, arch.gguf_arch_name)
        _add_keys(w, arch, out_tensors, ftype)
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
    arch.set_vocab(w)


def plan_conversion(model_dir, preset: str = "F16", imatrix=None, tensor_types=()) -> ConversionPlan:
    """Decide names, shapes, types and metadata of the GGUF made from ``model_dir`` (reads no weights)."""
    preset = str(preset).strip().upper()
    if preset in UNIFORM_PRESETS:
        ftype = UNIFORM_PRESETS[preset][1]
    else:  # Q3_K means Q3_K_M etc., as in llama-quantize
        preset = _presets().resolve_preset(preset)
        ftype = _presets().file_type(preset)
    overrides = parse_overrides(tensor_types)
    source = HFSource(model_dir)
    arch = arch_for(source)
    out_tensors = arch.tensors()
    metadata = _collect_metadata(arch, out_tensors, ftype)
    if isinstance(imatrix, (str, Path)):
        from ..imatrix import read_imatrix

        imatrix = read_imatrix(imatrix)
    types = _tensor_types(preset, out_tensors, metadata, overrides, imatrix)
    planned = [PlannedTensor(t, GGMLQuantizationType(types[t.name])) for t in out_tensors]
    if preset not in UNIFORM_PRESETS:  # llama-quantize writes its loader's order: by layer, then name
        planned.sort(key=lambda p: _presets().tensor_sort_key(p.name))
    for p in planned:
        quant_type(p.qtype).nbytes(p.shape)  # the row fits the type (ShapeError otherwise)
        if quant_type(p.qtype).requires_imatrix and (imatrix is None or p.name not in imatrix):
            raise ImatrixError(f"{p.name}: {p.qtype.name} needs an importance matrix entry (--imatrix)")
    return ConversionPlan(source, arch.gguf_arch_name, preset, metadata, planned, imatrix)


def _chunks(plan: ConversionPlan, p: PlannedTensor, threads) -> Iterator[tuple[bytes, int]]:
    """(GGUF bytes as a uint8 array, checkpoint bytes consumed) of ``p``, one row chunk at a time."""
    from ..quants import quantize

    t = p.tensor
    weights = None if plan.imatrix is None else plan.imatrix.get(p.name)

    def encode(values: np.ndarray, part: int, first_row: int = 0) -> np.ndarray:
        if p.qtype == GGMLQuantizationType.F32:
            return np.ascontiguousarray(values, dtype=np.float32).view(np.uint8).reshape(-1)
        w = None
        if weights is not None:  # (n_cols,), or one row per expert (n_expert, n_cols) or flat
            w = np.asarray(weights, dtype=np.float32).reshape(max(len(t.parts), 1), -1)[part]
            if values.ndim == 3:  # experts first_row... of one stacked part: each with its own row
                rows = w.reshape(-1, values.shape[-1])[first_row:first_row + len(values)]
                return np.concatenate([quantize(v, p.qtype, imatrix=r, threads=threads, name=p.name).data
                                       for v, r in zip(values, rows)])
        return quantize(values, p.qtype, imatrix=w, threads=threads, name=p.name).data

    if t.values is not None:
        yield encode(t.values(), 0), 0
        return
    for part, (hf_name, info) in enumerate(zip(t.parts, t.sources)):
        if len(info.shape) <= 1:
            values = plan.source.read(hf_name)
            yield encode(t.transform(values) if t.transform else values, part), info.nbytes
            continue
        rows = info.shape[0]
        row_elements = int(np.prod(info.shape[1:], dtype=np.int64))
        step = max(1, CHUNK_BYTES // (4 * max(row_elements, 1)))
        step = max(t.row_align, step - step % t.row_align)
        for start in range(0, rows, step):
            stop = min(rows, start + step)
            values = plan.source.read(hf_name, start, stop)
            if t.transform:
                values = t.transform(values)
            yield encode(values, part, start), info.nbytes * (stop - start) // rows


def idle_cores() -> int:
    """Cores not busy with other work: usable cores minus the 1-minute load average, at least 1.

    Numba's parallel kernels wait at a barrier for their slowest thread; on an oversubscribed machine
    one descheduled thread stalls them all (measured: 2 threads 3x slower than 1 at load 8 on 2 cores).
    """
    import os

    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    try:
        busy = os.getloadavg()[0]
    except OSError:
        busy = 0.0
    return max(1, min(cores, int(cores - busy + 0.5)))


def convert(model_dir, output=None, preset: str = "F16", *, imatrix=None, tensor_types=(), dry_run: bool = False,
            threads: int | None = None, overwrite: bool = False, progress: bool = True):
    """Convert the Hugging Face folder ``model_dir`` to the GGUF file ``output`` with ``preset``.

    ``imatrix``: path of an importance matrix (or a mapping GGUF tensor name -> weights);
    ``tensor_types``: ``"REGEX=TYPE"`` overrides; ``threads``: kernel threads (default
    :func:`idle_cores`). With ``dry_run`` nothing is written and the :class:`ConversionPlan` is
    returned; otherwise a :class:`ConversionResult`.
    """
    from tqdm import tqdm

    start = time.perf_counter()
    plan = plan_conversion(model_dir, preset, imatrix=imatrix, tensor_types=tensor_types)
    if dry_run:
        if progress:
            print_plan(plan)
        return plan
    if output is None:
        raise QuantkitError("no output path given (-o OUT.gguf)")
    output = Path(output)
    threads = threads or idle_cores()
    inputs = [p for p in plan.source.folder.iterdir() if p.is_file()]
    infos = [TensorInfo(p.name, p.qtype, p.shape) for p in plan.tensors]
    total = sum(info.nbytes for p in plan.tensors for info in p.tensor.sources)
    with GGUFStreamWriter(output, plan.metadata, infos, overwrite=overwrite, inputs=inputs, write_behind=2) as writer, tqdm(
        total=total, unit="B", unit_scale=True, desc=f"{plan.source.folder.name} -> {plan.preset}",
        disable=not progress, file=sys.stderr,
    ) as bar:
        for p in plan.tensors:
            bar.set_postfix_str(p.name, refresh=False)
            for data, consumed in _chunks(plan, p, threads):
                writer.write(p.name, data)
                bar.update(consumed)
    result = ConversionResult(output, plan, output.stat().st_size, time.perf_counter() - start)
    if progress:
        print(
            f"wrote {output}: {result.file_bytes / 1e6:.1f} MB, {len(plan.tensors)} tensors, "
            f"{result.bits_per_weight:.2f} bits per weight, {result.seconds:.1f} s",
            file=sys.stderr,
        )
    return result


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
