"""Run a model at each quantization and read its next-token distributions.

Two backends, one interface (:class:`TorchBackend`, :class:`LlamaCppBackend`):

- ``prepare(name)`` loads the variant ``name`` (``BASELINE`` = the model's own 16-bit weights, or
  a type/preset such as ``Q4_K_M``) and returns its :class:`Variant` (file size, bits per weight,
  quantize time, tensor types);
- ``generate(prompts, max_new_tokens)``: greedy answers, token ids per prompt;
- ``score(sequences, top_k, full)``: teacher-forced next-token distributions. A sequence is
  ``(token_ids, start)``; positions ``start..len-1`` are scored: the distribution the model gives
  for token ``i`` from tokens ``0..i-1``.

Both start from the same GGUF file per variant, made once by ``quantkit.convert`` (llama.cpp's
preset rules and fallbacks, e.g. for 576-wide rows) and kept in the cache folder. The torch
backend measures weight quantization alone: the Hugging Face model in float32 with each weight
matrix replaced by the dequantized GGUF tensor (``dequantize(quantize(w, type))``, mapped back
through the converter's row permutations). The llama.cpp backend runs the GGUF through
xllamacpp's in-process server, whose completions give the top-k log-probabilities of a position
(``n_probs``), not the full vocabulary.
"""

from __future__ import annotations

import hashlib
import importlib.util
import os
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from safetensors import safe_open

import quantkit

from ..errors import QuantkitError
from ..files import write_atomic
from ..ggufio import read_gguf
from ..jobs.convert import convert, plan_conversion
from ..sources.hf import load_pretrained, read_json
from .metrics import TopK, top_k

BASELINE = "baseline"


@dataclass
class Variant:
    """One model variant as evaluated: what it costs in bytes and time, and which tensor types it has."""

    name: str
    size_bytes: int  # the GGUF file's size
    bits_per_weight: float  # 8 x tensor bytes / weights
    quantize_seconds: float | None  # the conversion's (None for the baseline)
    tensor_types: dict  # GGUF type name -> number of tensors
    weight_error: float | None = None  # sqrt(sum (w_q - w)^2 / sum w^2) over the matrices (torch)


@dataclass
class Scored:
    """Teacher-forced distributions over one sequence's scored positions."""

    topk: TopK
    target_logprobs: np.ndarray  # log-probability of the token that actually came, per position
    full: np.ndarray | None = None  # (positions, vocab) float32 log-probabilities, torch only


# --- the GGUF of each variant, shared by both backends ----------------------------------------------


def stored_16bit(model_dir: Path) -> str:
    """BF16 or F16: the 16-bit type of the model's weights as stored (F16 for float32 models)."""
    for path in safetensors_files(model_dir):
        with safe_open(str(path), framework="pt") as f:
            if any(f.get_slice(n).get_dtype() == "BF16" for n in f.keys()):
                return "BF16"
    return "F16"


# a variant is a preset with optional "+SUFFIX"es (Q4_K_M+OPT, Q4_K_M+CAL): each adds convert() keywords
VARIANT_OPTIONS = {"OPT": {"optimize": True}, "CAL": {"optimize": True, "calibrate": True}}
AUTO_PREFIX = "AUTO@"  # scorecard variants auto@4.5bpw, auto@100MB: files made by eval.automix


def variant_options(name: str) -> tuple[str, dict]:
    """(preset, convert keywords) of a variant name like ``Q4_K_M+OPT`` (suffixes in any case)."""
    preset, *suffixes = name.split("+")
    options: dict = {}
    for suffix in suffixes:
        if suffix.upper() not in VARIANT_OPTIONS:
            raise QuantkitError(f"variant {name!r}: unknown suffix +{suffix}; known: "
                                + ", ".join(f"+{s}" for s in VARIANT_OPTIONS))
        options.update(VARIANT_OPTIONS[suffix.upper()])
    return preset, options


def preset_of(model_dir: Path, name: str) -> str:
    """The preset that makes variant ``name`` (its name without ``+SUFFIX``es); for an auto mix, one with
    the same tensors and layout (the file itself is made by eval.automix before the backend reads it)."""
    if name == BASELINE or name.upper().startswith(AUTO_PREFIX):
        return stored_16bit(model_dir)
    return variant_options(name)[0]


def check_variant(model_dir: Path, name: str, imatrix=None, lora=None) -> None:
    """Raise the converter's one-line error now if ``name`` is unknown or cannot be made (imatrix, adapters)."""
    plan_conversion(model_dir, preset_of(model_dir, name), imatrix=imatrix, lora=lora or ())


def digest(*parts) -> str:
    """16 hex digits of the sha256 of the parts' reprs: a cache key."""
    h = hashlib.sha256()
    for p in parts:
        h.update(repr(p).encode())
        h.update(b"\0")
    return h.hexdigest()[:16]


# files besides the weights that change what a model computes or how it is converted
MODEL_FILES = ("config.json", "generation_config.json", "tokenizer.json", "tokenizer_config.json", "tokenizer.model",
               "special_tokens_map.json", "added_tokens.json", "vocab.txt", "vocab.json", "merges.txt",
               "model.safetensors.index.json")
SAMPLES, SAMPLE_BYTES = 64, 4096  # bytes of each safetensors data section read into the digest


def model_digest(model_dir) -> str:
    """sha256 of a model folder's content, read in milliseconds: the files of MODEL_FILES and, per
    ``*.safetensors``, its header (tensor names, dtypes, shapes, offsets) and SAMPLES evenly spaced
    pieces of SAMPLE_BYTES of its data (so two fine-tunes of one architecture differ)."""
    model_dir = Path(model_dir)
    h = hashlib.sha256()
    for name in MODEL_FILES:
        if (model_dir / name).is_file():
            h.update(f"{name}\0".encode() + (model_dir / name).read_bytes() + b"\0")
    for path in safetensors_files(model_dir):
        with open(path, "rb") as fh:
            size = os.fstat(fh.fileno()).st_size
            header_len = int.from_bytes(fh.read(8), "little")
            start = min(8 + header_len, size)
            h.update(f"{path.name}\0{size}\0".encode() + fh.read(start - 8))
            span = size - start
            if span <= SAMPLES * SAMPLE_BYTES:
                h.update(fh.read(span))
                continue
            for i in range(SAMPLES):
                fh.seek(start + i * (span - SAMPLE_BYTES) // (SAMPLES - 1))
                h.update(fh.read(SAMPLE_BYTES))
    return h.hexdigest()


def quantkit_version() -> str:
    return quantkit.__version__


class VariantFiles:
    """``<cache>/<model>[.lora-<tag>].<name>.<key>.gguf`` made by ``quantkit.convert`` once, reused after.

    The key digests the model's content (:func:`model_digest`), quantkit's version, the variant and
    the imatrix file's bytes, so another model of the same folder name, a changed model or another
    quantkit never reuses a file. The conversion's seconds are kept next to the file (``.seconds``)
    so that a reused file still reports its quantize time. ``lora``: a
    :class:`quantkit.sources.lora.LoraMerge` merged into every variant, or None.
    """

    def __init__(self, model_dir: Path, cache_dir: Path, imatrix=None, threads=None, progress=True, lora=None):
        self.model_dir, self.cache_dir = Path(model_dir), Path(cache_dir)
        self.imatrix, self.threads, self.progress, self.lora = imatrix, threads, progress, lora
        self.model_digest = model_digest(self.model_dir)
        self.imatrix_digest = None if imatrix is None else hashlib.sha256(Path(imatrix).read_bytes()).hexdigest()
        self.model_tag = self.model_dir.name + (f".lora-{lora.tag()}" if lora else "")

    def path(self, name: str) -> Path:
        key = digest(self.model_digest, quantkit_version(), name, None if name == BASELINE else self.imatrix_digest)
        return self.cache_dir / f"{self.model_tag}.{name}.{key}.gguf"

    def get(self, name: str) -> Variant:
        """The variant's GGUF (converted now if missing) described as a :class:`Variant`."""

        path = self.path(name)
        seconds_file = path.with_name(path.name + ".seconds")
        if not path.exists() or not seconds_file.exists():
            self.cache_dir.mkdir(parents=True, exist_ok=True)
            result = convert(self.model_dir, path, preset_of(self.model_dir, name),
                             imatrix=None if name == BASELINE else self.imatrix, threads=self.threads,
                             overwrite=True, progress=self.progress, lora=self.lora or (),
                             **({} if name == BASELINE else variant_options(name)[1]))
            write_atomic(seconds_file, f"{result.seconds:.3f}\n")
        with read_gguf(path) as f:
            counts = Counter(t.qtype.name for t in f.tensors)
            elements = sum(int(np.prod(t.shape)) for t in f.tensors)
            tensor_bytes = sum(t.nbytes for t in f.tensors)
        seconds = None if name == BASELINE else float(seconds_file.read_text())
        return Variant(name, path.stat().st_size, 8.0 * tensor_bytes / elements, seconds, dict(counts.most_common()))


def _source_rows(t, rows: int) -> np.ndarray | None:
    """For a converter tensor with a row transform: ``order`` with GGUF row i = checkpoint row order[i].

    Found by sending row numbers through the transform; only row permutations can be mapped back.
    """
    if t.transform is None:
        return None
    order = np.asarray(t.transform(np.arange(rows, dtype=np.float32).reshape(rows, 1))).reshape(-1)
    if order.shape != (rows,) or not np.array_equal(np.sort(order), np.arange(rows)):
        raise QuantkitError(f"{t.name}: the converter's transform of {t.parts[0]} is not a row permutation; "
                            "the torch backend cannot map it back (use --backend llama.cpp)")
    return order.astype(np.int64)


def checkpoint_tensors(model_dir: Path, name: str, path: Path, imatrix=None):
    """(checkpoint name, float32 values) of every non-F32 tensor of a variant's GGUF, dequantized and
    mapped back to the Hugging Face layout (expert stacks split, row permutations undone)."""
    plan = plan_conversion(model_dir, preset_of(model_dir, name), imatrix=imatrix)
    made_of = {p.name: p.tensor for p in plan.tensors}
    with read_gguf(path) as f:
        for g in f.tensors:
            t = made_of.get(g.name)
            if g.qtype.name == "F32" or t is None or not t.parts:
                continue
            values = g.dequantize().reshape(len(t.parts), *t.sources[0].shape)
            for hf_name, part in zip(t.parts, values):
                order = _source_rows(t, part.shape[0])
                if order is not None:
                    restored = np.empty_like(part)
                    restored[order] = part
                    part = restored
                yield hf_name, part


# --- the torch backend ----------------------------------------------------------------------------


def safetensors_files(model_dir: Path) -> list[Path]:
    files = sorted(Path(model_dir).glob("*.safetensors"))
    if not files:
        raise QuantkitError(f"{model_dir}: no *.safetensors files (a Hugging Face model folder is needed)")
    return files


def can_generate(model_dir: Path) -> bool:
    """Whether config.json names a causal language model (``...ForCausalLM``) that can answer prompts."""
    config = read_json(Path(model_dir) / "config.json")
    return any(str(a).endswith("ForCausalLM") for a in config.get("architectures") or [])


def _stored_tensors(model_dir: Path):
    """(name, torch tensor as stored) over the folder's safetensors files, one at a time."""
    for path in safetensors_files(model_dir):
        with safe_open(str(path), framework="pt") as f:
            for name in f.keys():
                yield name, f.get_tensor(name)


class TorchBackend:
    """The Hugging Face model in float32; a variant's dequantized matrices are swapped in."""

    name = "torch"

    def __init__(self, model_dir, cache_dir, imatrix=None, threads=None, progress=True, lora=None):
        import torch
        import transformers

        self.model_dir = Path(model_dir)
        self.files = VariantFiles(self.model_dir, cache_dir, imatrix, threads, progress, lora)
        if threads:
            torch.set_num_threads(threads)
        self.can_generate = can_generate(self.model_dir)
        self.model = None
        if self.can_generate:
            self.model = load_pretrained(transformers.AutoModelForCausalLM.from_pretrained, self.model_dir, "model",
                                         local_files_only=True, dtype=torch.float32)
            self.model.eval()
            self.params = dict(self.model.named_parameters())
            self.eos_ids = _eos_ids(self.model.generation_config)

    def prepare(self, name: str) -> Variant:
        """Load the stored weights, then (not for the baseline) the variant's matrices over them."""
        import torch

        variant = self.files.get(name)
        stored = {}
        with torch.no_grad():
            for hf_name, values in _stored_tensors(self.model_dir):
                if self.files.lora and hf_name in self.files.lora.names:  # the merged model is the baseline
                    values = torch.from_numpy(self.files.lora.add_to(hf_name, values.float().numpy()))
                if self.model is not None:
                    self._param(hf_name).copy_(values)
                stored[hf_name] = values
            if name == BASELINE:
                return variant
            squared_error = squared = 0.0
            for hf_name, values in checkpoint_tensors(self.model_dir, name, self.files.path(name), self.files.imatrix):
                original = stored[hf_name].double()
                restored = torch.from_numpy(values)
                squared_error += float(((restored.double() - original) ** 2).sum())
                squared += float((original ** 2).sum())
                if self.model is not None:
                    self._param(hf_name).copy_(restored)
        variant.weight_error = (squared_error / squared) ** 0.5 if squared else 0.0
        return variant

    def _param(self, name: str):
        param = self.params.get(name)
        if param is None:
            raise QuantkitError(f"{self.model_dir}: stored tensor {name} is no parameter of the transformers model")
        return param.data

    def generate(self, prompts: list, max_new_tokens: int, batch_size: int = 64) -> list:
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

    def score(self, sequences: list, k: int, full: bool = False, batch_tokens: int = 2048) -> list:
        """Right-padded batches of about ``batch_tokens`` tokens (padding after a token cannot change
        a causal model's output at that token)."""
        import torch

        out = []
        for batch in _batches(sequences, batch_tokens):
            width = max(len(ids) for ids, _ in batch)
            ids = torch.tensor([list(s) + [0] * (width - len(s)) for s, _ in batch])
            mask = torch.tensor([[1] * len(s) + [0] * (width - len(s)) for s, _ in batch])
            with torch.no_grad():
                logits = self.model(input_ids=ids, attention_mask=mask).logits
            for row, (seq, start) in zip(logits, batch):
                lp = torch.log_softmax(row[start - 1:len(seq) - 1].double(), dim=-1).numpy()
                targets = lp[np.arange(len(lp)), np.asarray(seq[start:])]
                out.append(Scored(top_k(lp, k), targets, lp.astype(np.float32) if full else None))
        return out

    def close(self):
        self.model = None


def _batches(sequences: list, batch_tokens: int):
    """Consecutive groups of sequences whose count x longest length stays within ``batch_tokens``."""
    batch, width = [], 0
    for seq in sequences:
        longer = max(width, len(seq[0]))
        if batch and longer * (len(batch) + 1) > batch_tokens:
            yield batch
            batch, longer = [], len(seq[0])
        batch.append(seq)
        width = longer
    if batch:
        yield batch


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

    def __init__(self, model_dir, cache_dir, imatrix=None, threads=None, progress=True, n_ctx=2048, lora=None):
        if importlib.util.find_spec("xllamacpp") is None:
            raise QuantkitError("the llama.cpp backend needs the xllamacpp package (pip install xllamacpp)")
        self.model_dir = Path(model_dir)
        self.files = VariantFiles(self.model_dir, cache_dir, imatrix, threads, progress, lora)
        self.threads = threads or os.cpu_count()
        self.n_ctx = n_ctx
        self.server = None
        self.can_generate = can_generate(self.model_dir)

    def prepare(self, name: str) -> Variant:
        variant = self.files.get(name)
        if self.can_generate:
            self._start(self.files.path(name))
        return variant

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

        tokenizer = load_pretrained(AutoTokenizer.from_pretrained, self.model_dir, "tokenizer", local_files_only=True)
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


def make_backend(kind: str, model_dir, cache_dir, imatrix=None, threads=None, progress=True, lora=None):
    """The backend called ``kind`` ("torch" or "llama.cpp"); ``lora``: a LoraMerge merged into the model, or None."""
    backends = {"torch": TorchBackend, "llama.cpp": LlamaCppBackend}
    if kind not in backends:
        raise QuantkitError(f"unknown backend {kind!r}; choose torch or llama.cpp")
    return backends[kind](model_dir, cache_dir, imatrix=imatrix, threads=threads, progress=progress, lora=lora)
