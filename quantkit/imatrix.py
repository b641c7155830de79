"""Importance matrices (llama.cpp's "imatrix"): collect them from calibration text, read and write them.

An importance matrix holds, for every weight matrix that will be quantized, the sum over calibration
tokens of each input column's squared activation, and the number of tokens summed. Divided, that is
the mean squared activation per column, the weight each column gets in the quantizers' error
searches (``quantkit.quantize(w, qtype, imatrix=im[name])``).

Files, both as llama.cpp's ``tools/imatrix`` writes them:

- GGUF (current): ``general.type = "imatrix"``, ``imatrix.datasets`` (array of strings),
  ``imatrix.chunk_count`` and ``imatrix.chunk_size`` (uint32); per matrix ``<name>.in_sum2`` (F32,
  numpy shape (n_mat, n_cols): raw sums of x^2) and ``<name>.counts`` (F32, (n_mat, 1): tokens summed),
  names sorted. n_mat is 1 for a dense matrix and n_expert for a MoE expert stack.
- legacy ``.dat``: int32 n_entries; per entry int32 name length, the name, int32 ncall, int32 nval,
  nval float32 values equal to mean * ncall; then optionally int32 chunk count, int32 length and the
  dataset name. The mean is values / ncall (values themselves when ncall is 0).

Means are computed as llama-quantize does: sums / count in float32, and 1.0 for an expert no token
reached (count 0).
"""

from __future__ import annotations

import struct
import warnings
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from .errors import ImatrixError, QuantkitError

GGUF_MAGIC = b"GGUF"
KEY_TYPE = "general.type"
KEY_DATASETS = "imatrix.datasets"
KEY_CHUNK_COUNT = "imatrix.chunk_count"
KEY_CHUNK_SIZE = "imatrix.chunk_size"
SUMS_SUFFIX = ".in_sum2"
COUNTS_SUFFIX = ".counts"


@dataclass
class ImatrixEntry:
    """One matrix: ``sums`` float32 (n_mat, n_cols) of x^2 per input column, ``counts`` int64 (n_mat,) tokens."""

    sums: np.ndarray
    counts: np.ndarray

    def mean(self) -> np.ndarray:
        """Mean squared activation, float32 (n_cols,) for one matrix, (n_mat, n_cols) for experts."""
        counts = self.counts.astype(np.float32)[:, None]
        mean = np.ones(self.sums.shape, dtype=np.float32)
        np.divide(self.sums, counts, out=mean, where=counts > 0)
        return mean[0] if mean.shape[0] == 1 else mean


@dataclass(eq=False)
class Imatrix(Mapping):
    """GGUF tensor name -> mean squared input activation per column (see :meth:`ImatrixEntry.mean`).

    ``entries`` keeps the raw sums and token counts; ``datasets``, ``chunk_count`` and
    ``chunk_size`` are the file's metadata; ``source`` names the file (or the collection) in messages.
    An entry read from a legacy file holds the stored values as sums and ncall as its count; for a
    MoE stack it is flat (n_expert * n_cols) and :meth:`weights_for` gives it its shape.
    """

    entries: dict[str, ImatrixEntry]
    datasets: list[str] = field(default_factory=list)
    chunk_count: int = 0
    chunk_size: int = 0
    source: str = "imatrix"

    def __getitem__(self, name: str) -> np.ndarray:
        return self.entries[name].mean()

    def __iter__(self):
        return iter(self.entries)

    def __len__(self) -> int:
        return len(self.entries)

    def token_count(self, name: str) -> int:
        """Tokens summed for ``name`` (the most any expert got, for a MoE stack)."""
        return int(self.entries[name].counts.max())

    def weights_for(self, name: str, shape) -> np.ndarray:
        """The mean for tensor ``name`` of numpy ``shape`` ((rows, cols) or (n_expert, rows, cols)).

        Raises :class:`ImatrixError` when the columns (or expert count) differ: an imatrix made
        for another model.
        """
        mean = self[name]
        n_cols = int(shape[-1])
        n_mat = int(np.prod(shape[:-2], dtype=np.int64)) if len(shape) > 2 else 1
        if mean.ndim == 1 and n_mat > 1 and mean.size == n_cols * n_mat:
            mean = mean.reshape(n_mat, n_cols)  # legacy file: experts flattened
        got_cols = mean.shape[-1]
        got_mat = mean.shape[0] if mean.ndim == 2 else 1
        if got_cols != n_cols:
            raise ImatrixError(f"{self.source}: {name}: the model's tensor has {n_cols} columns, the imatrix "
                               f"{got_cols} (an imatrix made for another model?)")
        if got_mat != n_mat:
            raise ImatrixError(f"{self.source}: {name}: the model's tensor has {n_mat} experts, the imatrix "
                               f"{got_mat} (an imatrix made for another model?)")
        return mean

    def quantize_metadata(self, file: str, n_entries: int | None = None) -> dict:
        """The keys llama-quantize adds to a model quantized with this imatrix, in its order.

        ``file`` is the imatrix path as the user gave it; ``n_entries`` the entries used (default:
        all). Strings are cut to 127 bytes and the counts are uint32, as quantize.cpp's kv
        overrides write them; the dataset is the first one, the chunk count only when positive.
        """
        from gguf import GGUFValueType

        from .ggufio import typed

        def cut(text: str) -> str:
            return text.encode("utf-8")[:127].decode("utf-8", "ignore")

        keys = {"quantize.imatrix.file": cut(file)}
        if self.datasets:
            keys["quantize.imatrix.dataset"] = cut(self.datasets[0])
        n_entries = len(self) if n_entries is None else n_entries
        keys["quantize.imatrix.entries_count"] = typed(n_entries, GGUFValueType.UINT32)
        if self.chunk_count > 0:
            keys["quantize.imatrix.chunks_count"] = typed(self.chunk_count, GGUFValueType.UINT32)
        return keys


def check_coverage(imatrix: Imatrix, tensor_names, requiring_imatrix: set) -> list[str]:
    """Names in ``tensor_names`` the imatrix has no entry for; warns listing them.

    Raises :class:`ImatrixError` when any of them is in ``requiring_imatrix`` (tensors whose
    quantization type cannot be made without an importance matrix, e.g. IQ2_XS).
    """
    missing = [n for n in tensor_names if n not in imatrix.entries]
    fatal = [n for n in missing if n in requiring_imatrix]
    if fatal:
        raise ImatrixError(f"{imatrix.source}: no entry for {len(fatal)} tensor(s) whose type needs an importance "
                           f"matrix: {', '.join(fatal)}")
    if missing:
        warnings.warn(f"{imatrix.source}: no entry for {len(missing)} tensor(s), quantized without importance "
                      f"weights: {', '.join(missing)}", stacklevel=2)
    return missing


# --- files ----------------------------------------------------------------------------------------


def write_imatrix(path, imatrix: Imatrix, overwrite: bool = False) -> Path:
    """Write ``imatrix`` in llama.cpp's GGUF imatrix format (atomically); returns the path."""
    from gguf import GGUFValueType

    from .ggufio import typed, write_gguf

    metadata = {
        KEY_TYPE: "imatrix",
        KEY_DATASETS: typed(list(imatrix.datasets), GGUFValueType.STRING),
        KEY_CHUNK_COUNT: typed(int(imatrix.chunk_count), GGUFValueType.UINT32),
        KEY_CHUNK_SIZE: typed(int(imatrix.chunk_size), GGUFValueType.UINT32),
    }
    tensors = []
    for name in sorted(imatrix.entries):
        entry = imatrix.entries[name]
        sums = np.ascontiguousarray(entry.sums, dtype=np.float32)
        counts = np.ascontiguousarray(entry.counts, dtype=np.float32).reshape(-1, 1)
        tensors.append(_F32(name + SUMS_SUFFIX, sums))
        tensors.append(_F32(name + COUNTS_SUFFIX, counts))
    return write_gguf(path, metadata, tensors, overwrite=overwrite)


class _F32:
    """A float32 array as the GGUF writer takes tensors (.name, .qtype, .shape, .data bytes)."""

    def __init__(self, name: str, values: np.ndarray):
        from gguf import GGMLQuantizationType

        self.name, self.qtype = name, GGMLQuantizationType.F32
        self.shape, self.data = values.shape, values.view(np.uint8)


def read_imatrix(path) -> Imatrix:
    """Read an imatrix file, GGUF or legacy ``.dat`` (told apart by the magic ``GGUF``)."""
    path = Path(path)
    try:
        with open(path, "rb") as fh:
            head = fh.read(4)
    except FileNotFoundError:
        raise QuantkitError(f"{path}: no such file") from None
    except IsADirectoryError:
        raise QuantkitError(f"{path}: is a directory, not an imatrix file") from None
    return _read_gguf_imatrix(path) if head == GGUF_MAGIC else _read_legacy_imatrix(path)


def _read_gguf_imatrix(path: Path) -> Imatrix:
    from gguf import GGMLQuantizationType

    from .ggufio import read_gguf

    with read_gguf(path) as f:
        meta = f.metadata
        pairs: dict[str, dict[str, np.ndarray]] = {}
        for t in f.tensors:
            for suffix in (SUMS_SUFFIX, COUNTS_SUFFIX):
                if t.name.endswith(suffix):
                    if t.qtype != GGMLQuantizationType.F32:
                        raise ImatrixError(f"{path}: tensor {t.name} is {t.qtype.name}, an imatrix holds F32")
                    values = np.array(t.data).view(np.float32).reshape(t.shape)
                    pairs.setdefault(t.name[: -len(suffix)], {})[suffix] = values
        if not pairs:
            kind = meta.get(KEY_TYPE, "not set")
            raise ImatrixError(f"{path}: not an imatrix: no {SUMS_SUFFIX}/{COUNTS_SUFFIX} tensors "
                               f"(general.type is {kind!r})")
        missing = [k for k in (KEY_DATASETS, KEY_CHUNK_COUNT, KEY_CHUNK_SIZE) if k not in meta]
        if missing:
            raise ImatrixError(f"{path}: imatrix metadata missing: {', '.join(missing)}")
        entries = {}
        for name, pair in sorted(pairs.items()):
            if len(pair) != 2:
                have = next(iter(pair))
                lacking = COUNTS_SUFFIX if have == SUMS_SUFFIX else SUMS_SUFFIX
                raise ImatrixError(f"{path}: {name} has {name}{have} but no {name}{lacking}")
            sums, counts = pair[SUMS_SUFFIX], pair[COUNTS_SUFFIX].reshape(-1)
            sums = sums.reshape(-1, sums.shape[-1])
            if counts.size != sums.shape[0]:
                raise ImatrixError(f"{path}: {name} has {sums.shape[0]} matrices of sums but {counts.size} counts")
            entries[name] = ImatrixEntry(sums.astype(np.float32), np.rint(counts).astype(np.int64))
        return Imatrix(entries, [str(d) for d in meta[KEY_DATASETS]], int(meta[KEY_CHUNK_COUNT]),
                       int(meta[KEY_CHUNK_SIZE]), str(path))


class _LegacyCursor:
    """Bounds-checked little-endian reads from a legacy imatrix file's bytes."""

    def __init__(self, data: bytes, path: Path):
        self.data, self.pos, self.path = data, 0, path

    def take(self, n: int, what: str) -> bytes:
        if n < 0 or self.pos + n > len(self.data):
            raise ImatrixError(f"{self.path}: truncated or not an imatrix: {what} needs {n} bytes at offset "
                               f"{self.pos}, the file has {len(self.data)}")
        chunk = self.data[self.pos : self.pos + n]
        self.pos += n
        return chunk

    def int32(self, what: str) -> int:
        return struct.unpack("<i", self.take(4, what))[0]


def _read_legacy_imatrix(path: Path) -> Imatrix:
    cur = _LegacyCursor(path.read_bytes(), path)
    n_entries = cur.int32("the entry count")
    if n_entries < 1:
        raise ImatrixError(f"{path}: not an imatrix: neither GGUF nor a legacy imatrix with entries "
                           f"(first int32 is {n_entries})")
    entries = {}
    for i in range(1, n_entries + 1):
        name_len = cur.int32(f"entry {i}'s name length")
        if name_len < 1:
            raise ImatrixError(f"{path}: entry {i} has a name of length {name_len} (at offset {cur.pos - 4})")
        name = cur.take(name_len, f"entry {i}'s name").decode("utf-8", "replace")
        ncall = cur.int32(f"{name}'s call count")
        nval = cur.int32(f"{name}'s value count")
        if nval < 1:
            raise ImatrixError(f"{path}: {name} has {nval} values (entry {i})")
        values = np.frombuffer(cur.take(4 * nval, f"{name}'s {nval} values"), dtype="<f4").astype(np.float32)
        # llama-quantize divides by ncall, or uses the values as they are when ncall is not positive
        entries[name] = ImatrixEntry(values.reshape(1, nval), np.array([ncall if ncall > 0 else 1], dtype=np.int64))
    chunk_count, datasets = 0, []
    if cur.pos < len(cur.data):
        chunk_count = cur.int32("the chunk count")
        if cur.pos < len(cur.data):
            dataset_len = cur.int32("the dataset name length")
            if dataset_len > 0:
                datasets.append(cur.take(dataset_len, "the dataset name").decode("utf-8", "replace"))
    return Imatrix(entries, datasets, chunk_count, 0, str(path))


# --- collection -----------------------------------------------------------------------------------


@dataclass
class _Target:
    """Where F.linear inputs for one weight (or one expert's slice) are summed."""

    sums: object  # torch float32 (n_mat, n_cols)
    counts: object  # torch int64 (n_mat,)
    expert: int
    shape: tuple


def _gguf_names(name_map, hf_name: str) -> list[str]:
    """GGUF tensor names fed by the HF parameter ``hf_name`` (a fused gate_up expert stack feeds two)."""
    base = hf_name.removesuffix(".weight")
    if base.endswith(".gate_up_proj"):
        stem = base.removesuffix(".gate_up_proj")
        split = [name_map.get_name(f"{stem}.{part}") for part in ("gate_proj", "up_proj")]
        if all(split):
            return [n + ".weight" for n in split]
    name = name_map.get_name(base)
    return [name + ".weight"] if name else []


def _targets(model, name_map, process_output: bool, device):
    """weight data pointer -> _Target for every matrix to record, and GGUF name -> its accumulators.

    Matrices: 2-D Linear weights of the decoder blocks ("blk.*"), ``output.weight`` when
    ``process_output`` (and not tied to the embeddings, as llama-imatrix records it), and 3-D expert
    stacks, one target per expert slice (what the eager experts code passes to F.linear).
    """
    import torch

    tied = model.get_output_embeddings() is not None and (
        model.get_output_embeddings().weight.data_ptr() == model.get_input_embeddings().weight.data_ptr())
    targets, accumulators = {}, {}
    for hf_name, param in model.named_parameters():
        if param.ndim not in (2, 3):
            continue
        names = _gguf_names(name_map, hf_name)
        keep = [n for n in names if n.startswith("blk.") or (n == "output.weight" and process_output and not tied)]
        if not keep:
            continue
        n_mat = param.shape[0] if param.ndim == 3 else 1
        sums = torch.zeros((n_mat, param.shape[-1]), dtype=torch.float32, device=device)
        counts = torch.zeros(n_mat, dtype=torch.int64, device=device)
        for n in keep:
            accumulators[n] = (sums, counts)
        for e in range(n_mat):
            piece = param[e] if param.ndim == 3 else param
            targets[piece.data_ptr()] = _Target(sums, counts, e, tuple(piece.shape))
    return targets, accumulators


def _recorder(targets):
    """A TorchFunctionMode adding x^2 of every F.linear input whose weight is a target."""
    import torch.nn.functional as F
    from torch.overrides import TorchFunctionMode

    class Recorder(TorchFunctionMode):
        def __torch_function__(self, func, types, args=(), kwargs=None):
            kwargs = kwargs or {}
            if func is F.linear:
                x = args[0] if args else kwargs["input"]
                w = args[1] if len(args) > 1 else kwargs["weight"]
                target = targets.get(w.data_ptr())
                if target is not None and tuple(w.shape) == target.shape:
                    x = x.detach().reshape(-1, x.shape[-1]).float()
                    target.sums[target.expert] += (x * x).sum(dim=0)
                    target.counts[target.expert] += x.shape[0]
            return func(*args, **kwargs)

    return Recorder()


def tokenize_chunks(tokenizer, text: str, ctx: int, chunks: int | None):
    """The text's tokens cut into ``chunks`` (default: all full) chunks of ``ctx``; list of int lists.

    As llama-imatrix does: the whole text is tokenized once (with the tokenizer's special tokens)
    and, when the tokenizer adds a BOS token, each chunk's first token is replaced by BOS.
    """
    if ctx < 1:
        raise ImatrixError(f"--ctx must be at least 1, got {ctx}")
    if chunks is not None and chunks < 1:
        raise ImatrixError(f"--chunks must be at least 1, got {chunks}")
    tokens = tokenizer(text, add_special_tokens=True, verbose=False)["input_ids"]
    if len(tokens) < ctx:
        raise ImatrixError(f"the calibration text has {len(tokens)} tokens, fewer than one chunk of {ctx} "
                           f"(use a longer text or a smaller --ctx)")
    n_chunks = len(tokens) // ctx if chunks is None else min(chunks, len(tokens) // ctx)
    bos = tokenizer.bos_token_id
    adds_bos = bos is not None and tokenizer("a", add_special_tokens=True)["input_ids"][:1] == [bos]
    result = []
    for i in range(n_chunks):
        chunk = list(tokens[i * ctx : (i + 1) * ctx])
        if adds_bos:
            chunk[0] = bos
        result.append(chunk)
    return result


def collect_imatrix(model_dir, text: str, ctx: int = 512, chunks: int | None = None, device=None,
                    progress: bool = True, dataset: str | None = None, process_output: bool = False,
                    lora=(), lora_scale: float = 1.0) -> Imatrix:
    """Run the Hugging Face causal LM in ``model_dir`` over ``text`` and return its importance matrix.

    ``text`` is cut into chunks of ``ctx`` tokens (at most ``chunks``), each run on its own with no
    cache. For every weight matrix of the decoder blocks, per expert for MoE stacks, the inputs'
    squared values are summed per column in float32 (on ``device``: CUDA when present, else CPU),
    with the token count, keyed by the GGUF tensor name quantkit's converter gives it (so only
    architectures the converter supports). ``output.weight``
    is recorded only with ``process_output`` (llama-imatrix's ``--process-output``). ``dataset``
    is recorded as the file's dataset name. ``lora``: PEFT adapter folders merged into the weights
    (``lora_scale`` times each) before the model runs, so the matrix is the merged model's.
    """
    import torch
    from tqdm import tqdm
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from transformers.utils import logging as hf_logging

    from .converter.archs import arch_for
    from .converter.lora import merged_source

    model_dir = Path(model_dir)
    source = merged_source(model_dir, lora, lora_scale)  # adapters checked against the base before the model loads
    name_map = arch_for(source).name_map  # the names the converter gives the tensors
    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()
    device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
    tokenizer = AutoTokenizer.from_pretrained(model_dir, local_files_only=True)
    token_chunks = tokenize_chunks(tokenizer, text, ctx, chunks)

    dtype = torch.float32 if device.type == "cpu" else "auto"
    model = AutoModelForCausalLM.from_pretrained(model_dir, local_files_only=True, dtype=dtype,
                                                 experts_implementation="eager").to(device).eval()
    if lora:
        with torch.no_grad():
            source.merge.merge_into(dict(model.named_parameters()))
    targets, accumulators = _targets(model, name_map, process_output, device)
    if not accumulators:
        raise QuantkitError(f"{model_dir}: no weight matrix of the model maps to a GGUF tensor name")

    # Only the logits of the last token are needed unless output.weight's inputs are recorded.
    keep = {} if process_output else {"logits_to_keep": 1}
    with torch.inference_mode(), _recorder(targets), tqdm(
        total=len(token_chunks) * ctx, unit="tok", unit_scale=True, disable=not progress, desc="imatrix"
    ) as bar:
        for chunk in token_chunks:
            model(input_ids=torch.tensor([chunk], device=device), use_cache=False, **keep)
            bar.update(ctx)

    # a matrix the forward pass never multiplied by (e.g. used by an op other than F.linear) has no entry
    entries = {
        name: ImatrixEntry(sums.cpu().numpy().astype(np.float32), counts.cpu().numpy().astype(np.int64))
        for name, (sums, counts) in sorted(accumulators.items()) if int(counts.sum()) > 0
    }
    if not entries:
        raise QuantkitError(f"{model_dir}: the forward pass multiplied no weight matrix through F.linear")
    return Imatrix(entries, [dataset] if dataset else [], len(token_chunks), ctx, str(dataset or model_dir))
