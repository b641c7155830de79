"""The scorecard run: every type against the 16-bit baseline, cached, written as md, json and png.

Layout of a report folder::

    scorecard.md  scorecard.json  scorecard.png
    files/        the GGUF of each type, made by quantkit.convert once and used by both backends
    cache/        per type: its model outputs (.npz: answers, teacher-forced distributions), keyed by
                  the inputs, and one JSON of results per settings, both reused by later runs

Per type, with the baseline run the same way on the same backend:

- answers: greedy answers to each prompt (chat template when the tokenizer has one, at most
  ``max_new_tokens``), embedded with a sentence-transformers model; cosine to the baseline's
  answer to the same prompt (mean with 95% bootstrap CI over prompts, min, share identical);
- teacher-forced answers: the variant reads the baseline's answer tokens; mean KLD (top-k lumped,
  see metrics.py) and top-1 agreement along them, per prompt, CI over prompts;
- text: next-token distributions over the first ``text_tokens`` tokens of a text, in chunks of
  ``chunk_tokens``: KLD mean (CI over positions) and 99th percentile, top-1 agreement,
  perplexity and its ratio to the baseline's.

Neighbouring rows (sorted by size) whose difference is within noise (the 95% bootstrap interval
of the paired mean difference holds 0) are marked with "≈".
"""

from __future__ import annotations

import io
import json
import time
from dataclasses import asdict, dataclass
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path

import numpy as np
from tqdm import tqdm

from ..errors import QuantkitError
from ..files import write_atomic
from ..models import minilm_dir
from ..plan.targets import parse_size, parse_target
from ..sources.hf import load_pretrained
from ..sources.lora import LoraMerge
from . import metrics
from .automix import make_auto_variant
from .backends import AUTO_PREFIX, BASELINE, check_variant, digest, make_backend, quantkit_version
from .outputs import Outputs, load_outputs, save_outputs

DEFAULT_TYPES = ("F16", "Q8_0", "Q6_K", "Q5_K_M", "Q4_K_M", "IQ4_XS", "Q3_K_M", "IQ3_XXS", "Q2_K")
DATA_DIR = Path(__file__).parent / "data"
DEFAULT_PROMPTS = DATA_DIR / "prompts.txt"
DEFAULT_TEXT = DATA_DIR / "calibration.txt"
NOISE_MARK = "≈"
KLD_FLOOR = 1e-5  # a mean KLD at or below this is drawn at the plot's floor as "~ 0"


@dataclass(frozen=True)
class Settings:
    """Everything besides model, types and backend that changes the numbers (part of the cache key)."""

    max_new_tokens: int = 48
    text_tokens: int = 1024
    chunk_tokens: int = 512
    top_k: int = 40  # log-probabilities kept per position for the lumped KLD (llama.cpp's n_probs)
    seed: int = 0


# --- inputs ---------------------------------------------------------------------------------------


def read_text(path, what: str) -> str:
    """A UTF-8 text file's contents; a clear error when it is missing, binary or empty."""
    path = Path(path)
    try:
        raw = path.read_bytes()
    except OSError as e:
        raise QuantkitError(f"{path}: cannot read {what}: {e.strerror or e}") from None
    if b"\x00" in raw[:65536]:
        raise QuantkitError(f"{path}: {what} is not a text file (it holds NUL bytes)")
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as e:
        raise QuantkitError(f"{path}: {what} is not UTF-8 text (byte {e.start})") from None
    if not text.strip():
        raise QuantkitError(f"{path}: {what} is empty")
    return text


def read_prompts(path) -> list[str]:
    """One prompt per non-empty line; lines starting with '#' are comments; a literal ``\\n`` is a newline."""
    text = read_text(path, "prompts file")
    prompts = [line.strip().replace("\\n", "\n") for line in text.splitlines()]
    prompts = [p for p in prompts if p and not p.startswith("#")]
    if not prompts:
        raise QuantkitError(f"{path}: prompts file has no prompts (only comments)")
    return prompts


def prompt_ids(tokenizer, prompts: list[str]) -> list[list[int]]:
    """Token ids of each prompt, as a user turn of the chat template when the tokenizer has one."""
    if getattr(tokenizer, "chat_template", None):
        texts = [tokenizer.apply_chat_template([{"role": "user", "content": p}], tokenize=False,
                                               add_generation_prompt=True) for p in prompts]
        return [tokenizer.encode(t, add_special_tokens=False) for t in texts]
    return [tokenizer.encode(p) for p in prompts]


def text_chunks(tokenizer, text: str, text_tokens: int, chunk_tokens: int) -> list[list[int]]:
    """The text's first ``text_tokens`` tokens cut into chunks of ``chunk_tokens`` (each >= 2 tokens)."""
    ids = tokenizer.encode(text[: text_tokens * 16])[:text_tokens]
    chunks = [ids[i:i + chunk_tokens] for i in range(0, len(ids), chunk_tokens)]
    chunks = [c for c in chunks if len(c) >= 2]
    if not chunks:
        raise QuantkitError("the text is too short: it needs at least 2 tokens")
    return chunks


# --- one run ----------------------------------------------------------------------------------------


@dataclass
class Reference:
    """The baseline's outputs that every variant is compared with."""

    answers: list  # token ids per prompt
    texts: list
    embeddings: np.ndarray
    answer_scores: list  # metrics.Scored per prompt with a non-empty answer
    text_scores: list  # metrics.Scored per text chunk


@dataclass
class Run:
    """One backend, one model, one set of inputs; measures variants against the baseline.

    Each variant's model outputs are cached in ``cache`` (outputs.py), keyed by the inputs (prompt
    and text token ids, answer length, top-k), the backend and the variant's GGUF file name (model
    content, quantkit version, type, imatrix, adapters): the statistics can be recomputed (another
    seed or embedder) and types added without running the model again, the baseline included.
    """

    backend: object
    tokenizer: object
    prompts: list
    chunks: list
    embedder: object
    settings: Settings
    cache: Path
    reference: Reference | None = None

    @property
    def full(self) -> bool:
        return self.backend.name == "torch"

    def _decode(self, answers) -> list:
        return [self.tokenizer.decode(a, skip_special_tokens=True).strip() for a in answers]

    def _answer_sequences(self, answers):
        return [(list(p) + list(a), len(p)) for p, a in zip(self.prompts, answers) if a]

    def outputs_path(self, name: str) -> Path:
        inputs = digest(self.backend.name, self.prompts, self.chunks, self.settings.max_new_tokens, self.settings.top_k)
        files = self.backend.files
        key = digest(inputs, files.path(BASELINE).name, files.path(name).name)
        return self.cache / f"{self.backend.name}.{name}.outputs.{key}.npz"

    def outputs(self, name: str) -> Outputs:
        """The variant's model outputs, from the cache or computed (then cached): its answers and its
        teacher-forced passes along the baseline's answers (its own, for the baseline) and the text."""
        path = self.outputs_path(name)
        if path.exists():
            return load_outputs(path)
        out = Outputs(_variant_fields(self.backend.prepare(name)), [])
        if self.backend.can_generate:
            out.answers = self.backend.generate(self.prompts, self.settings.max_new_tokens)
            read = out.answers if name == BASELINE else self.reference.answers
            out.answer_scores = self.backend.score(self._answer_sequences(read), self.settings.top_k)
            out.text_scores = self.backend.score([(c, 1) for c in self.chunks], self.settings.top_k, full=self.full)
            if name != BASELINE and self.full:  # the exact KLD kept instead of the variant's full distributions
                out.text_kld = np.concatenate([metrics.kld(b.full, q.full)
                                               for b, q in zip(self.reference.text_scores, out.text_scores)])
                for s in out.text_scores:
                    s.full = None
        save_outputs(path, out)
        return out

    def baseline(self) -> dict:
        out = self.outputs(BASELINE)
        row = {"type": BASELINE, **out.variant}
        if not self.backend.can_generate:
            return row
        texts = self._decode(out.answers)
        self.reference = Reference(out.answers, texts, self.embedder.encode(texts), out.answer_scores, out.text_scores)
        targets = np.concatenate([s.target_logprobs for s in self.reference.text_scores])
        row["answers"] = {"texts": texts}
        row["text"] = {"perplexity": metrics.bootstrap_ci(-targets, self.settings.seed, np.exp)}
        return row

    def measure(self, name: str) -> dict:
        """Every number of one variant, with the per-prompt and per-position values behind them."""
        out = self.outputs(name)
        row = {"type": name, **out.variant}
        if self.reference is None:
            return row
        seed = self.settings.seed
        ref = self.reference
        texts = self._decode(out.answers)
        similarity = metrics.cosine_similarity(self.embedder.encode(texts), ref.embeddings)
        row["answers"] = {
            "similarity": metrics.bootstrap_ci(similarity, seed),
            "similarity_min": float(similarity.min()),
            "identical_share": float(np.mean([a == b for a, b in zip(texts, ref.texts)])),
            "per_prompt_similarity": similarity.tolist(),
            "texts": texts,
        }
        forced = out.answer_scores
        tf_kld = [metrics.kld_topk(b.topk, q.topk).mean() for b, q in zip(ref.answer_scores, forced)]
        tf_top1 = [np.mean(b.topk.top1() == q.topk.top1()) for b, q in zip(ref.answer_scores, forced)]
        row["teacher_forced"] = {"kld": metrics.bootstrap_ci(tf_kld, seed), "top1": metrics.bootstrap_ci(tf_top1, seed),
                                 "per_prompt_kld": [float(x) for x in tf_kld]}
        scores = out.text_scores
        lumped = np.concatenate([metrics.kld_topk(b.topk, q.topk) for b, q in zip(ref.text_scores, scores)])
        kld = out.text_kld if self.full else lumped
        top1 = np.concatenate([b.topk.top1() == q.topk.top1() for b, q in zip(ref.text_scores, scores)])
        targets = np.concatenate([s.target_logprobs for s in scores])
        base_targets = np.concatenate([s.target_logprobs for s in ref.text_scores])
        row["text"] = {
            "kld": metrics.bootstrap_ci(kld, seed),
            "kld_p99": float(np.quantile(kld, 0.99)),
            "kld_method": "exact (full vocabulary)" if self.full else f"top-{self.settings.top_k} lumped (lower bound)",
            "kld_topk": metrics.bootstrap_ci(lumped, seed),
            "top1": metrics.bootstrap_ci(top1.astype(float), seed),
            "perplexity": metrics.bootstrap_ci(-targets, seed, np.exp),
            "perplexity_ratio": float(np.exp(np.mean(base_targets - targets))),
            "per_position_kld": [round(float(x), 7) for x in kld],
        }
        return row


def _variant_fields(variant) -> dict:
    return {
        "size_bytes": variant.size_bytes,
        "bits_per_weight": round(variant.bits_per_weight, 4),
        "quantize_seconds": None if variant.quantize_seconds is None else round(variant.quantize_seconds, 2),
        "weight_error": None if variant.weight_error is None else round(variant.weight_error, 6),
        "tensor_types": variant.tensor_types,
    }


def _versions() -> dict:
    out = {}
    for package in ("quantkit", "numpy", "torch", "transformers", "sentence-transformers", "gguf", "xllamacpp"):
        try:
            out[package] = version(package)
        except PackageNotFoundError:
            out[package] = None
    return out


def _load_embedder(path):
    from sentence_transformers import SentenceTransformer

    path = Path(path)
    if not (path / "config.json").exists() and not (path / "modules.json").exists():
        raise QuantkitError(f"{path}: not a sentence-transformers model folder (no modules.json or config.json)")
    return load_pretrained(SentenceTransformer, path, "sentence-transformers model", device="cpu",
                           local_files_only=True)


def scorecard(model_dir, types=DEFAULT_TYPES, out_dir="report", *, backend: str = "torch", imatrix=None,
              prompts=None, text=None, embedder=None, settings: Settings = Settings(), threads: int | None = None,
              progress: bool = True, lora=(), lora_scale: float = 1.0, device=None) -> dict:
    """Measure what each quantization in ``types`` costs against the model's 16-bit weights.

    ``model_dir``: a Hugging Face folder; ``types``: type or preset names (``"Q8_0,Q4_K_M"`` or a
    list); ``prompts``/``text``: files (defaults: the shipped prompt set and calibration text);
    ``embedder``: a sentence-transformers folder (default all-MiniLM-L6-v2). Writes
    ``scorecard.md``, ``scorecard.json`` and ``scorecard.png`` into ``out_dir`` and returns the
    JSON's content. ``lora``: PEFT adapter folders merged into the model (``lora_scale`` times each)
    for every variant and for the 16-bit baseline. ``auto@4.5bpw`` / ``auto@100MB`` in ``types``: a mix
    made for that target by eval.automix (probes on the calibration text, on ``device``).
    """
    from transformers import AutoTokenizer

    model_dir = Path(model_dir)
    if not (model_dir / "config.json").exists():
        raise QuantkitError(f"{model_dir}: not a Hugging Face model folder (no config.json)")
    names = _parse_types(types)
    prompts_path = Path(prompts) if prompts else DEFAULT_PROMPTS
    text_path = Path(text) if text else DEFAULT_TEXT
    prompt_texts = read_prompts(prompts_path)
    text_content = read_text(text_path, "text")
    merge = None
    if lora:
        merge = LoraMerge(lora, lora_scale)
        if any(n.startswith(AUTO_PREFIX) for n in names):
            raise QuantkitError("auto@ variants do not combine with --lora (the probes run the unmerged model)")
    _check_types(model_dir, names, imatrix, merge)
    out = Path(out_dir)
    runner = make_backend(backend, model_dir, out / "files", imatrix=imatrix, threads=threads, progress=progress,
                          lora=merge)
    tokenizer = load_pretrained(AutoTokenizer.from_pretrained, model_dir, "tokenizer", local_files_only=True)
    notes = []
    if not runner.can_generate:
        notes.append(f"{model_dir.name} cannot generate (no causal language-model head): answer and distribution "
                     "metrics are left out; size, bits per weight and quantize time are given")
    embedder_path = Path(embedder) if embedder else None
    if runner.can_generate and embedder_path is None:
        embedder_path = minilm_dir()
    run = Run(runner, tokenizer, prompt_ids(tokenizer, prompt_texts) if runner.can_generate else [],
              text_chunks(tokenizer, text_content, settings.text_tokens, settings.chunk_tokens) if runner.can_generate else [],
              _load_embedder(embedder_path) if runner.can_generate else None, settings, out / "cache")
    key = digest(runner.files.model_digest, backend, prompt_texts, text_content, asdict(settings),
                 str(embedder_path), runner.files.imatrix_digest, quantkit_version(), merge and merge.tag())
    cache = out / "cache"
    cached = {name: cache / f"{backend}.{name}.{key}.json" for name in [BASELINE, *names]}
    started = time.perf_counter()
    rows = {}
    if all(path.exists() for path in cached.values()):
        rows = {name: json.loads(path.read_text()) for name, path in cached.items()}
    else:
        for name in tqdm([BASELINE, *names], desc=f"scorecard ({backend})", disable=not progress, unit="type"):
            if name != BASELINE and cached[name].exists():
                rows[name] = json.loads(cached[name].read_text())
                continue
            if name.startswith(AUTO_PREFIX):  # the mix's file, where the backend looks for it
                make_auto_variant(model_dir, name, runner.files.path(name), imatrix=imatrix, device=device,
                                  threads=threads, progress=progress)
            rows[name] = run.baseline() if name == BASELINE else run.measure(name)
            cache.mkdir(parents=True, exist_ok=True)
            write_atomic(cached[name], json.dumps(rows[name]))
    baseline = rows.pop(BASELINE)
    runner.close()
    ordered = sorted(rows.values(), key=lambda r: -r["size_bytes"])
    _mark_noise(ordered, settings.seed)
    result = {
        "model": str(model_dir),
        "backend": backend,
        "baseline": baseline,
        "types": ordered,
        "settings": {**asdict(settings), "prompts": str(prompts_path), "n_prompts": len(prompt_texts),
                     "text": str(text_path), "text_chunks": [len(c) for c in run.chunks],
                     "embedder": str(embedder_path), "imatrix": None if imatrix is None else str(imatrix),
                     "threads": threads, "lora": [str(p) for p in lora], "lora_scale": lora_scale},
        "versions": _versions(),
        "notes": notes,
        "seconds": round(time.perf_counter() - started, 1),
    }
    write_report(result, out)
    return result


def _parse_types(types) -> list[str]:
    names = [t.strip().upper() for t in (types.split(",") if isinstance(types, str) else types) if t.strip()]
    if not names:
        raise QuantkitError("no types given (e.g. --types Q8_0,Q4_K_M)")
    return list(dict.fromkeys(names))


def _check_types(model_dir: Path, names: list[str], imatrix, lora=None) -> None:
    """Plan every type before any work, so an unknown type, a missing imatrix or an adapter that does not
    fit fails at once."""
    for name in names:
        if name.startswith(AUTO_PREFIX):
            parse_target(name[len(AUTO_PREFIX):])
        check_variant(model_dir, name, imatrix, lora)


def _mark_noise(rows: list[dict], seed: int) -> None:
    """rows[i]["within_noise_of_previous"]: per metric, whether row i is within noise of row i-1."""
    pairs = {"similarity": ("answers", "per_prompt_similarity"), "teacher_forced_kld": ("teacher_forced", "per_prompt_kld"),
             "kld": ("text", "per_position_kld")}
    for previous, row in zip([None, *rows], rows):
        row["within_noise_of_previous"] = {}
        if previous is None:
            continue
        for metric, (group, values) in pairs.items():
            a, b = previous.get(group, {}).get(values), row.get(group, {}).get(values)
            if a is not None and b is not None and len(a) == len(b):
                row["within_noise_of_previous"][metric] = metrics.within_noise(a, b, seed)


# --- writing ----------------------------------------------------------------------------------------


def _ci(ci: dict | None, digits: int) -> str:
    if not ci or ci.get("mean") is None:
        return "-"
    return f"{ci['mean']:.{digits}f} [{ci['lo']:.{digits}f}, {ci['hi']:.{digits}f}]"


def _cell(row: dict, metric: str, text: str) -> str:
    return f"{NOISE_MARK} {text}" if row.get("within_noise_of_previous", {}).get(metric) else text


def markdown(result: dict) -> str:
    """scorecard.md: the table sorted by size, then settings and notes."""
    base = result["baseline"]
    lines = [f"# Scorecard: {Path(result['model']).name} ({result['backend']} backend)", ""]
    header = ["type", "size MB", "bits/weight", "quantize s", "weight error", "answer similarity [95% CI]", "min", "identical",
              "teacher-forced KLD [95% CI]", "TF top-1", "KLD mean [95% CI]", "KLD p99", "top-1", "PPL", "PPL ratio"]
    lines += ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    measured = "text" in base
    quality = ["1", "1", "100%", "0", "100%", "0", "0", "100%", _ci(base["text"]["perplexity"], 2), "1"] if measured else ["-"] * 10
    lines.append("| " + " | ".join([f"baseline ({_16bit(base)})", f"{base['size_bytes'] / 1e6:.1f}",
                                    f"{base['bits_per_weight']:.2f}", "-", "0", *quality]) + " |")
    for row in result["types"]:
        answers, forced, text = row.get("answers", {}), row.get("teacher_forced", {}), row.get("text", {})
        seconds = "-" if row["quantize_seconds"] is None else f"{row['quantize_seconds']:.1f}"
        error = "-" if row.get("weight_error") is None else f"{row['weight_error']:.4f}"
        cells = [row["type"], f"{row['size_bytes'] / 1e6:.1f}", f"{row['bits_per_weight']:.2f}", seconds, error]
        if answers:
            cells += [_cell(row, "similarity", _ci(answers["similarity"], 3)), f"{answers['similarity_min']:.3f}",
                      f"{answers['identical_share']:.0%}", _cell(row, "teacher_forced_kld", _ci(forced["kld"], 4)),
                      f"{forced['top1']['mean']:.1%}", _cell(row, "kld", _ci(text["kld"], 4)), f"{text['kld_p99']:.3f}",
                      f"{text['top1']['mean']:.1%}", _ci(text["perplexity"], 2), f"{text['perplexity_ratio']:.3f}"]
        else:
            cells += ["-"] * 10
        lines.append("| " + " | ".join(cells) + " |")
    s = result["settings"]
    method = next((r["text"]["kld_method"] for r in result["types"] if "text" in r), "")
    lines += ["", f"- Baseline: the model's own 16-bit weights, run by the same backend. Sizes are GGUF file sizes"
              f"{' (exact, from the conversion plan)' if result['backend'] == 'torch' else ''}; bits/weight = 8 x tensor "
              "bytes / weights; weight error = RMS of the weight change / RMS of the weights (torch backend)."]
    if measured:
        lines += [
            f"- {NOISE_MARK}: within noise of the row above (the 95% bootstrap interval of the paired mean difference holds 0).",
            f"- Answers: {s['n_prompts']} prompts from {Path(s['prompts']).name}, greedy, at most {s['max_new_tokens']} new "
            f"tokens, embedded with {s['embedder']}; cosine to the baseline's answer to the same prompt.",
            f"- Teacher-forced: the variant reads the baseline's answer tokens; KLD over the top-{s['top_k']} tokens of both "
            "plus one lumped tail (a lower bound), top-1 = same most likely token.",
            f"- Text: {sum(s['text_chunks'])} tokens of {Path(s['text']).name} in chunks of {s['chunk_tokens']}; "
            f"KLD {method}.",
        ]
    lines.append(f"- Run took {result['seconds']:.0f} s; versions: "
                 + ", ".join(f"{k} {v}" for k, v in result["versions"].items() if v))
    if result["notes"]:
        lines += ["", "Notes:", ""] + [f"- {n}" for n in result["notes"]]
    lines += _recommendations(result)
    lines += ["", "Tensor types per variant:", ""]
    lines += [f"- {r['type']}: " + ", ".join(f"{k} {v}" for k, v in r["tensor_types"].items()) for r in result["types"]]
    return "\n".join(lines) + "\n"


def _kld(row: dict) -> float | None:
    return row.get("text", {}).get("kld", {}).get("mean")


def frontier(rows: list[dict]) -> list[dict]:
    """The variants no other beats in both size and mean KLD, smallest first."""
    measured = sorted((r for r in rows if _kld(r) is not None), key=lambda r: (r["size_bytes"], _kld(r)))
    out: list[dict] = []
    for r in measured:
        if not out or _kld(r) < _kld(out[-1]):
            out.append(r)
    return out


def recommend(result: dict, budget) -> dict | None:
    """The variant of least mean KLD whose file is at most ``budget`` (bytes, or a size such as 100MB)."""
    limit = parse_size(budget, "--budget") if isinstance(budget, str) else int(budget)
    fitting = [r for r in frontier(result["types"]) if r["size_bytes"] <= limit]
    return fitting[-1] if fitting else None


def _recommendations(result: dict) -> list[str]:
    """The "recommendation" section: per size budget (each frontier variant's size up to the next), the pick."""
    points = frontier(result["types"])
    if not points:
        return []
    lines = ["", "## Recommendation", "", "For a file of at most the budget, the variant with the least mean KLD "
             "(the quality-size frontier; others are beaten in both):", "",
             "| budget | use | size MB | bits/weight | KLD mean |", "|---|---|---|---|---|"]
    for i, r in enumerate(points):
        upper = f"< {points[i + 1]['size_bytes'] / 1e6:.1f} MB" if i + 1 < len(points) else "and more"
        lines.append(f"| {r['size_bytes'] / 1e6:.1f} MB {upper} | {r['type']} | {r['size_bytes'] / 1e6:.1f} | "
                     f"{r['bits_per_weight']:.2f} | {_kld(r):.4f} |")
    return lines


def _16bit(row: dict) -> str:
    return next((k for k in ("BF16", "F16") if k in row.get("tensor_types", {})), "16-bit")


def plot(result: dict) -> bytes:
    """scorecard.png: KLD and answer similarity against bits per weight, one point per type."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = [r for r in result["types"] if "text" in r]
    base = result["baseline"]
    fig, (left, right) = plt.subplots(1, 2, figsize=(11, 4.5))
    for ax, title in ((left, "mean KLD vs baseline (nats, log scale)"), (right, "answer similarity (cosine, 95% CI)")):
        ax.axvline(base["bits_per_weight"], color="grey", linestyle="--", linewidth=1)
        ax.set_xlabel("bits per weight")
        ax.set_title(title, fontsize=10)
        ax.grid(alpha=0.3)
    measurable = [r["text"]["kld"]["mean"] for r in rows if r["text"]["kld"]["mean"] > KLD_FLOOR]
    floor = min(measurable, default=KLD_FLOOR * 10) / 3
    for i, r in enumerate(rows):
        x, offset = r["bits_per_weight"], (4, 4 if i % 2 == 0 else -11)
        kld = r["text"]["kld"]["mean"]
        below = kld <= KLD_FLOOR  # e.g. F16: drawn at the bottom, labelled as zero
        left.scatter(x, max(kld, floor), color="tab:blue", marker="v" if below else "o")
        left.annotate(r["type"] + (" (KLD ~ 0)" if below else ""), (x, max(kld, floor)), textcoords="offset points",
                      xytext=offset, fontsize=8)
        sim = r["answers"]["similarity"]
        right.errorbar(x, sim["mean"], yerr=[[sim["mean"] - sim["lo"]], [sim["hi"] - sim["mean"]]], fmt="o",
                       color="tab:orange", capsize=3)
        right.annotate(r["type"], (x, sim["mean"]), textcoords="offset points", xytext=offset, fontsize=8)
    points = frontier(rows)
    if len(points) > 1:
        left.plot([r["bits_per_weight"] for r in points], [max(_kld(r), floor) for r in points], color="tab:green",
                  linewidth=1, zorder=0, label="frontier (least KLD for the size)")
        left.legend(fontsize=8, loc="upper right")
    if rows:
        left.set_yscale("log")
        left.set_ylim(bottom=floor / 2)
    right.scatter(base["bits_per_weight"], 1.0, marker="*", s=160, color="black", zorder=3, label=f"baseline ({_16bit(base)})")
    left.annotate(f"baseline ({_16bit(base)})", (base["bits_per_weight"], 0.05), xycoords=("data", "axes fraction"),
                  rotation=90, fontsize=8, ha="right")
    right.legend(fontsize=8, loc="lower right")
    fig.suptitle(f"{Path(result['model']).name}: quality vs size ({result['backend']} backend)")
    fig.tight_layout()
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=110)
    plt.close(fig)
    return buffer.getvalue()


def write_report(result: dict, out_dir) -> None:
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    write_atomic(out / "scorecard.json", json.dumps(result, indent=1, ensure_ascii=False))
    write_atomic(out / "scorecard.md", markdown(result))
    write_atomic(out / "scorecard.png", plot(result))
