"""Run a model at each quantization and read its next-token distributions.

Two backends, one interface (:class:`TorchBackend`, :class:`LlamaCppBackend`):

- ``prepare(name)`` makes the variant ``name`` (``BASELINE`` = the model's own 16-bit weights, or
  a type/preset such as ``Q4_K_M``), caching what is expensive, loads it, and returns its
  :class:`Variant` (size, bits per weight, quantize time, notes);
- ``generate(prompts, max_new_tokens)``: greedy answers, token ids per prompt;
- ``score(sequences, top_k, full)``: teacher-forced next-token distributions. A sequence is
  ``(token_ids, start)``; positions ``start..len-1`` are scored: the distribution the model gives
  for token ``i`` from tokens ``0..i-1``.

The torch backend measures weight quantization alone: the Hugging Face model in float32 with each
weight matrix replaced by ``dequantize(quantize(w, type))``. The llama.cpp backend runs the GGUF
``quantkit.convert`` writes, through xllamacpp's in-process server, whose completions give the
top-k log-probabilities of a position (``n_probs``), not the full vocabulary.
"""

from __future__ import annotations

import hashlib
import os
import re
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ..errors import QuantkitError
from .metrics import TopK, top_k

BASELINE = "baseline"
# preset suffixes llama.cpp's file types add to a tensor type (Q4_K_M is mostly Q4_K)
_PRESET_SUFFIX = re.compile(r"^(?P<base>.+_K)_(?:S|M|L)$")


@dataclass
class Variant:
    """One model variant as evaluated: what it costs in bytes and time, and what was kept."""

    name: str
    size_bytes: int  # weights bytes (torch) or the GGUF file size (llama.cpp)
    bits_per_weight: float
    quantize_seconds: float | None
    tensor_types: dict  # type name -> number of tensors
    notes: list = field(default_factory=list)
    weight_error: float | None = None  # sqrt(sum (w_q - w)^2 / sum w^2) over the quantized matrices


@dataclass
class Scored:
    """Teacher-forced distributions over one sequence's scored positions."""

    topk: TopK
    target_logprobs: np.ndarray  # log-probability of the token that actually came, per position
    full: np.ndarray | None = None  # (positions, vocab) float32 log-probabilities, torch only


# --- which type each tensor gets ------------------------------------------------------------------


@dataclass
class Plan:
    """What a variant quantizes: Hugging Face tensor name -> (type name, importance weights or None)."""

    types: dict
    size_bytes: int  # the GGUF file's size (exact, from the converter) or the weights' bytes
    bits_per_weight: float
    tensor_types: dict  # GGUF type name -> number of tensors
    notes: list


def stored_16bit(model_dir: Path) -> str:
    """BF16 or F16: the 16-bit type of the model's weights as stored (F16 for float32 models)."""
    return "BF16" if "BF16" in set(stored_dtypes(model_dir).values()) else "F16"


def plan_variant(model_dir: Path, name: str, imatrix=None) -> Plan:
    """The per-tensor types of type or preset ``name`` (``BASELINE``: the stored 16-bit type).

    With the converter installed, its plan (llama.cpp's preset rules and fallbacks, keyed by GGUF
    names, mapped back to the Hugging Face tensors each GGUF tensor is made of); otherwise
    :func:`plan_uniform`.
    """
    from collections import Counter

    preset = stored_16bit(model_dir) if name == BASELINE else name
    try:
        from ..converter import plan_conversion
    except ImportError:
        return plan_uniform(model_dir, preset)
    plan = plan_conversion(model_dir, preset, imatrix=imatrix)
    types = {}
    for p in plan.tensors:
        if len(p.shape) < 2 or p.qtype.name == "F32":
            continue
        weights = None if plan.imatrix is None or p.name not in plan.imatrix else np.asarray(plan.imatrix[p.name])
        for part, hf_name in enumerate(p.tensor.parts):
            row = weights[part] if weights is not None and weights.ndim == 2 else weights
            types[hf_name] = (p.qtype.name, row)
    counts = Counter(p.qtype.name for p in plan.tensors)
    return Plan(types, plan.expected_file_size(), plan.bits_per_weight, dict(counts.most_common()), [])


def plan_uniform(model_dir: Path, preset: str) -> Plan:
    """Without the converter: ``preset``'s base type (Q4_K_M -> Q4_K) for every weight matrix.

    1-D tensors (norms, biases) stay as stored; so does a matrix whose rows are not whole blocks of
    the type (a note says which).
    """
    from collections import Counter

    from ..types import quant_type

    match = _PRESET_SUFFIX.match(preset.strip().upper())
    qt = quant_type(match.group("base") if match else preset)
    shapes, dtypes = stored_shapes(model_dir), stored_dtypes(model_dir)
    types, kept, counts, size = {}, [], Counter(), 0
    for hf_name, shape in shapes.items():
        fits = len(shape) >= 2 and hf_name.endswith(".weight") and shape[-1] % qt.block_size == 0
        if len(shape) >= 2 and hf_name.endswith(".weight") and not fits:
            kept.append(hf_name)
        if fits:
            types[hf_name] = (qt.name, None)
        kind = qt.name if fits else dtypes[hf_name]
        counts[kind] += 1
        size += qt.nbytes(shape) if fits else int(np.prod(shape)) * _DTYPE_BYTES.get(kind, 4)
    notes = []
    if kept:
        notes.append(f"{len(kept)} weight matrices kept {'/'.join(sorted({dtypes[n] for n in kept}))}: rows of "
                     f"{sorted({shapes[n][-1] for n in kept})} are not whole {qt.name} blocks of {qt.block_size}")
    elements = sum(int(np.prod(s)) for s in shapes.values())
    return Plan(types, size, 8.0 * size / elements, dict(counts.most_common()), notes)


# --- the torch backend ----------------------------------------------------------------------------


def safetensors_files(model_dir: Path) -> list[Path]:
    files = sorted(Path(model_dir).glob("*.safetensors"))
    if not files:
        raise QuantkitError(f"{model_dir}: no *.safetensors files (a Hugging Face model folder is needed)")
    return files


def stored_shapes(model_dir: Path) -> dict:
    """name -> shape of every tensor in the folder's safetensors files (reads headers only)."""
    from safetensors import safe_open

    shapes = {}
    for path in safetensors_files(model_dir):
        with safe_open(str(path), framework="pt") as f:
            for name in f.keys():
                shapes[name] = tuple(f.get_slice(name).get_shape())
    return shapes


_DTYPE_BYTES = {"F32": 4, "BF16": 2, "F16": 2}


def stored_dtypes(model_dir: Path) -> dict:
    """name -> safetensors dtype (F32, BF16, F16, ...) of each stored tensor."""
    from safetensors import safe_open

    out = {}
    for path in safetensors_files(model_dir):
        with safe_open(str(path), framework="pt") as f:
            for name in f.keys():
                out[name] = f.get_slice(name).get_dtype()
    return out


def _stored_tensors(model_dir: Path):
    """(name, torch tensor as stored) over the folder's safetensors files, one at a time."""
    from safetensors import safe_open

    for path in safetensors_files(model_dir):
        with safe_open(str(path), framework="pt") as f:
            for name in f.keys():
                yield name, f.get_tensor(name)


class TorchBackend:
    """The Hugging Face model in float32; variants swap dequantized weights in and out."""

    name = "torch"

    def __init__(self, model_dir, cache_dir, imatrix=None, threads=None, progress=True):
        import torch
        import transformers

        self.model_dir = Path(model_dir)
        self.cache_dir = Path(cache_dir)
        self.imatrix = imatrix
        self.threads = threads
        self.progress = progress
        if threads:
            torch.set_num_threads(threads)
        config = transformers.AutoConfig.from_pretrained(self.model_dir)
        self.can_generate = any(a.endswith("ForCausalLM") for a in (config.architectures or []))
        self.model = None
        if self.can_generate:
            self.model = transformers.AutoModelForCausalLM.from_pretrained(self.model_dir, dtype=torch.float32)
            self.model.eval()
            self.params = dict(self.model.named_parameters())
            self.eos_ids = _eos_ids(self.model.generation_config)

    def _cache_path(self, name: str) -> Path:
        key = hashlib.sha256(f"{self.model_dir.resolve()}|{name}|{self.imatrix}".encode()).hexdigest()[:12]
        return self.cache_dir / f"{self.model_dir.name}.{name}.{key}.tensors.gguf"

    def quantized(self, name: str, plan: Plan) -> tuple[Path, float]:
        """The variant's quantized tensors (Hugging Face names) in a GGUF cache file made once, and
        the seconds quantizing took when it was made."""
        from gguf import GGUFValueType
        from tqdm import tqdm

        from ..ggufio import read_gguf, typed, write_gguf
        from ..quants import quantize

        path = self._cache_path(name)
        if path.exists():
            with read_gguf(path) as f:
                return path, float(f.metadata[_SECONDS_KEY])
        tensors, seconds = [], 0.0
        stored = tqdm(_stored_tensors(self.model_dir), total=len(stored_shapes(self.model_dir)),
                      desc=f"quantize {name}", disable=not self.progress, leave=False)
        for hf_name, values in stored:
            if hf_name not in plan.types:
                continue
            qtype, weights = plan.types[hf_name]
            begin = time.perf_counter()
            q = quantize(values, qtype, imatrix=weights, threads=self.threads, name=hf_name)
            seconds += time.perf_counter() - begin
            tensors.append(_Named(hf_name, q.qtype, q.shape, q.data))
        self.cache_dir.mkdir(parents=True, exist_ok=True)
        metadata = {"general.architecture": "quantkit-eval-cache", _SECONDS_KEY: typed(seconds, GGUFValueType.FLOAT64)}
        write_gguf(path, metadata, tensors, overwrite=True)
        return path, seconds

    def prepare(self, name: str) -> Variant:
        import torch

        from ..ggufio import read_gguf

        plan = plan_variant(self.model_dir, name, self.imatrix)
        seconds = error = None
        stored = {}
        with torch.no_grad():
            for hf_name, values in _stored_tensors(self.model_dir):
                if self.model is not None:  # start from the stored weights; a variant replaces its matrices
                    self._param(hf_name).copy_(values)
                if hf_name in plan.types and name != BASELINE:
                    stored[hf_name] = values
            if name != BASELINE:
                path, seconds = self.quantized(name, plan)
                squared_error = squared = 0.0
                with read_gguf(path) as f:
                    for t in f.tensors:
                        values = torch.from_numpy(t.dequantize())
                        original = stored.pop(t.name).double()
                        squared_error += float(((values.double() - original) ** 2).sum())
                        squared += float((original ** 2).sum())
                        if self.model is not None:
                            self._param(t.name).copy_(values)
                error = (squared_error / squared) ** 0.5 if squared else 0.0
        return Variant(name, plan.size_bytes, plan.bits_per_weight, seconds, plan.tensor_types, plan.notes, error)

    def _param(self, name: str):
        param = self.params.get(name)
        if param is None:
            raise QuantkitError(f"{self.model_dir}: stored tensor {name} is no parameter of the transformers model")
        return param.data

    def generate(self, prompts: list, max_new_tokens: int, batch_size: int = 16) -> list:
        """Greedy answers (token ids, up to and including an end-of-sequence token), batched with left padding."""
        import torch

        pad = self.eos_ids[0] if self.eos_ids else 0
        answers = []
        for first in range(0, len(prompts), batch_size):
            batch = prompts[first:first + batch_size]
            width = max(len(p) for p in batch)
            ids = torch.tensor([[pad] * (width - len(p)) + list(p) for p in batch])
            mask = torch.tensor([[0] * (width - len(p)) + [1] * len(p) for p in batch])
            with torch.no_grad():
                out = self.model.generate(input_ids=ids, attention_mask=mask, max_new_tokens=max_new_tokens,
                                          do_sample=False, pad_token_id=pad, eos_token_id=self.eos_ids or None)
            answers.extend(_cut_at_eos(row, self.eos_ids) for row in out[:, width:].tolist())
        return answers

    def score(self, sequences: list, k: int, full: bool = False) -> list:
        import torch

        out = []
        for ids, start in sequences:
            with torch.no_grad():
                logits = self.model(input_ids=torch.tensor([list(ids)])).logits[0, start - 1:len(ids) - 1]
            lp = torch.log_softmax(logits.double(), dim=-1).numpy()
            targets = lp[np.arange(len(lp)), np.asarray(ids[start:])]
            out.append(Scored(top_k(lp, k), targets, lp.astype(np.float32) if full else None))
        return out

    def close(self):
        self.model = None


_SECONDS_KEY = "quantkit.eval.quantize_seconds"


@dataclass(frozen=True)
class _Named:
    """A quantized tensor with its name, as write_gguf takes it."""

    name: str
    qtype: object
    shape: tuple
    data: np.ndarray


def _eos_ids(generation_config) -> list:
    eos = generation_config.eos_token_id
    if eos is None:
        return []
    return [int(e) for e in (eos if isinstance(eos, (list, tuple)) else [eos])]


def _cut_at_eos(tokens: list, eos_ids: list) -> list:
    """Generated tokens up to and including the first end-of-sequence token."""
    for i, t in enumerate(tokens):
        if t in eos_ids:
            return tokens[:i + 1]
    return tokens


# --- the llama.cpp backend ------------------------------------------------------------------------


class LlamaCppBackend:
    """GGUF files made by ``quantkit.convert``, run by llama.cpp (xllamacpp's in-process server).

    Distributions come as top-k log-probabilities over the full vocabulary (``n_probs``); the
    log-probability of the token that actually came is read by forcing it with a logit bias (the
    server reports probabilities from the raw logits, before the bias).
    """

    name = "llama.cpp"

    def __init__(self, model_dir, cache_dir, imatrix=None, threads=None, progress=True, n_ctx=2048):
        import importlib.util

        if importlib.util.find_spec("xllamacpp") is None:
            raise QuantkitError("the llama.cpp backend needs the xllamacpp package (pip install xllamacpp)")
        if importlib.util.find_spec("quantkit.converter") is None:
            raise QuantkitError("the llama.cpp backend needs quantkit.convert, which this install does not have yet; "
                                "use --backend torch")
        self.model_dir = Path(model_dir)
        self.cache_dir = Path(cache_dir)
        self.imatrix = imatrix
        self.threads = threads or os.cpu_count()
        self.progress = progress
        self.n_ctx = n_ctx
        self.server = None
        self.can_generate = True

    def gguf_path(self, name: str) -> Path:
        tag = "" if self.imatrix is None else "." + hashlib.sha256(str(self.imatrix).encode()).hexdigest()[:8]
        return self.cache_dir / f"{self.model_dir.name}.{name}{tag}.gguf"

    def prepare(self, name: str) -> Variant:
        from collections import Counter

        from ..converter import convert
        from ..ggufio import read_gguf

        preset = stored_16bit(self.model_dir) if name == BASELINE else name
        path = self.gguf_path(name)
        if not path.exists():
            self.cache_dir.mkdir(parents=True, exist_ok=True)
            result = convert(self.model_dir, path, preset, imatrix=self.imatrix, threads=self.threads,
                             progress=self.progress)
            _seconds_path(path).write_text(f"{result.seconds:.3f}\n")
        with read_gguf(path) as f:
            counts = Counter(t.qtype.name for t in f.tensors)
            elements = sum(int(np.prod(t.shape)) for t in f.tensors)
            tensor_bytes = sum(t.nbytes for t in f.tensors)
        self._start(path)
        seconds = None if name == BASELINE else float(_seconds_path(path).read_text())
        return Variant(name, path.stat().st_size, 8.0 * tensor_bytes / elements, seconds, dict(counts.most_common()))

    def _start(self, path: Path):
        import xllamacpp

        self.close()
        params = xllamacpp.CommonParams()
        params.model.path = str(path)
        params.n_ctx = self.n_ctx
        params.n_batch = self.n_ctx
        params.cpuparams.n_threads = self.threads
        params.cpuparams_batch.n_threads = self.threads
        params.warmup = False
        params.verbosity = -1  # llama.cpp logs every request otherwise
        self.server = xllamacpp.Server(params)

    def _complete(self, request: dict) -> dict:
        result = self.server.handle_completions({"temperature": 0, "cache_prompt": True, **request})
        if "choices" not in result:
            raise QuantkitError(f"llama.cpp: {result.get('error', result)}")
        return result["choices"][0]

    def generate(self, prompts: list, max_new_tokens: int) -> list:
        from transformers import AutoTokenizer

        tokenizer = AutoTokenizer.from_pretrained(self.model_dir)
        answers = []
        for ids in prompts:
            text = self._complete({"prompt": list(ids), "max_tokens": max_new_tokens})["text"]
            answers.append(tokenizer.encode(text, add_special_tokens=False))
        return answers

    def score(self, sequences: list, k: int, full: bool = False) -> list:
        out = []
        for ids, start in sequences:
            top_ids, top_lp, targets = [], [], []
            for i in range(start, len(ids)):
                choice = self._complete({"prompt": list(ids[:i]), "max_tokens": 1, "n_probs": k,
                                         "logit_bias": [[int(ids[i]), 1000.0]]})
                entry = choice["logprobs"]["content"][0]
                if entry["id"] != ids[i]:
                    raise QuantkitError(f"llama.cpp did not take the forced token {ids[i]} (got {entry['id']})")
                targets.append(entry["logprob"])
                top_ids.append([e["id"] for e in entry["top_logprobs"]])
                top_lp.append([e["logprob"] for e in entry["top_logprobs"]])
            out.append(Scored(TopK(np.array(top_ids, dtype=np.int64), np.array(top_lp)), np.array(targets)))
        return out

    def close(self):
        self.server = None


def _seconds_path(path: Path) -> Path:
    """Where the seconds a cached GGUF's conversion took are kept, next to it."""
    return path.with_name(path.name + ".seconds")


def make_backend(kind: str, model_dir, cache_dir, imatrix=None, threads=None, progress=True):
    """The backend called ``kind`` ("torch" or "llama.cpp")."""
    backends = {"torch": TorchBackend, "llama.cpp": LlamaCppBackend}
    if kind not in backends:
        raise QuantkitError(f"unknown backend {kind!r}; choose torch or llama.cpp")
    return backends[kind](model_dir, cache_dir, imatrix=imatrix, threads=threads, progress=progress)
