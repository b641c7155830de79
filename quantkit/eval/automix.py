"""Size-targeted mixes: measure each tensor group's sensitivity, allocate types to a target, convert.

Sensitivity (:func:`measure`): the Hugging Face model runs in float32 (torch, on ``device``) over
``chunks`` chunks of ``ctx`` tokens of calibration text; its next-token log-probabilities are the
baseline. A *group* is one tensor kind (``attn_v.weight``, ``ffn_down.weight``, ...) over a range of
``layers_per_group`` consecutive layers, or one tensor outside the blocks (``token_embd.weight``,
``output.weight``). For each group and each candidate type whose block divides the group's rows,
the group alone is quantized and dequantized with quantkit's kernels (with the importance matrix if
given; rows in the GGUF order, mapped back through the converter's row permutation), the model is
re-run and the mean KLD against the baseline over every position is the group's cost of that type.
The hidden states entering every layer are cached in the baseline pass, so a probe of a group that
starts at layer L runs layers L.. only. Measurements are cached per model content (like the
scorecard's files) in ``<quantkit cache>/automix``.

Mix (:func:`plan_mix`): options per group are (type, exact bytes in the file, measured KLD); the
allocation of :mod:`quantkit.plan.targets` picks one per group under the target; the result is a
per-tensor type map, written as a recipe (:mod:`quantkit.plan.recipes`) that reproduces the file.
"""

from __future__ import annotations

import hashlib
import json
import re
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from ..errors import QuantkitError
from ..extras import require_extra
from ..files import write_atomic
from ..jobs.convert import ConversionPlan, convert, plan_conversion
from ..jobs.imatrix import _quiet_transformers, tokenize_chunks
from ..models import cache_dir
from ..plan.imatrix_file import read_imatrix
from ..plan.overrides import override_type, parse_overrides
from ..plan.presets import allows_quantization
from ..plan.recipes import recipe_items, write_recipe
from ..plan.targets import Option, Target, allocate, parse_target
from ..quants import dequantize, quantize
from ..sources.hf import load_pretrained
from ..types import quant_type
from . import metrics
from .backends import _source_rows, digest, model_digest, quantkit_version, stored_16bit

# candidate types, cheapest first; a group gets those whose block divides its rows (and that need
# no importance matrix unless one is given), plus the model's stored 16-bit type
CANDIDATES = ("Q2_K", "Q3_K", "IQ4_NL", "Q4_0", "IQ4_XS", "Q4_K", "Q4_1", "Q5_0", "Q5_1", "Q5_K", "Q6_K", "Q8_0")
DEFAULT_CTX, DEFAULT_CHUNKS, DEFAULT_GROUPS_PER_KIND = 128, 8, 6
CALIBRATION_TEXT = Path(__file__).parent / "data" / "calibration.txt"  # the built-in text (the scorecard's too)
ALIGNMENT = 32  # GGUF's default data alignment (quantkit's writer)
_LAYER = re.compile(r"blk\.(\d+)\.(.+)")
# label (general.file_type) of a mix: the preset of the type holding most of its bytes
_LABEL = {"Q2_K": "Q2_K", "Q3_K": "Q3_K_M", "Q4_K": "Q4_K_M", "Q5_K": "Q5_K_M", "Q6_K": "Q6_K", "Q4_0": "Q4_0",
          "Q4_1": "Q4_1", "Q5_0": "Q5_0", "Q5_1": "Q5_1", "IQ4_NL": "IQ4_NL", "IQ4_XS": "IQ4_XS"}


def _padded(n: int) -> int:
    return -(-n // ALIGNMENT) * ALIGNMENT


@dataclass
class Group:
    """Tensors that always share a type, and the KLD each candidate type adds when only they have it."""

    name: str  # e.g. "attn_v.weight@0-4" or "token_embd.weight"
    tensors: list  # GGUF names
    first_layer: int | None  # the earliest layer it feeds (None: the token embeddings, the whole model)
    kld: dict = field(default_factory=dict)  # type name -> mean KLD


@dataclass
class Sensitivity:
    """What :func:`measure` found: the groups, their curves, and how it was measured."""

    groups: list
    settings: dict
    seconds: float
    probes: int

    def to_json(self) -> str:
        return json.dumps({"groups": [asdict(g) for g in self.groups], "settings": self.settings,
                           "seconds": self.seconds, "probes": self.probes}, indent=1)

    @classmethod
    def from_json(cls, text: str) -> Sensitivity:
        data = json.loads(text)
        return cls([Group(**g) for g in data["groups"]], data["settings"], data["seconds"], data["probes"])


def _candidates(shape, has_imatrix: bool, stored: str, candidates=CANDIDATES) -> list[str]:
    names = [t for t in candidates if shape[-1] % quant_type(t).block_size == 0
             and (has_imatrix or not quant_type(t).requires_imatrix)]
    return names + [stored]


def probe_groups(plan: ConversionPlan, layers_per_group: int | None = None, fixed=()) -> list[Group]:
    """The groups of ``plan``'s quantizable single-part tensors not matched by a ``fixed`` override."""
    n_layer = max([int(m.group(1)) + 1 for p in plan.tensors if (m := _LAYER.match(p.name))] or [1])
    step = layers_per_group or max(1, -(-n_layer // DEFAULT_GROUPS_PER_KIND))
    groups: dict[str, Group] = {}
    for p in plan.tensors:
        t = p.tensor
        if (not allows_quantization(p.name, p.shape, plan.arch_name) or len(t.parts) != 1 or t.values is not None
                or override_type(fixed, p.name) is not None):
            continue
        match = _LAYER.match(p.name)
        if match:
            layer, kind = int(match.group(1)), match.group(2)
            first = layer - layer % step
            key = f"{kind}@{first}-{min(first + step, n_layer) - 1}"
            groups.setdefault(key, Group(key, [], first)).tensors.append(p.name)
        else:
            first = None if p.name.startswith("token_embd") else n_layer
            groups[p.name] = Group(p.name, [p.name], first)
    return list(groups.values())


class Prober:
    """The model in float32 on a device, its baseline over some token chunks, and the cached hidden
    states entering each layer, so that a change to layers L.. re-runs only those."""

    def __init__(self, model_dir, device=None, threads=None):
        import torch  # deferred: optional and heavy (the [eval] extra)
        from transformers import AutoModelForCausalLM

        self.torch = torch
        self.device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
        if threads:
            torch.set_num_threads(threads)
        with _quiet_transformers():
            self.model = load_pretrained(AutoModelForCausalLM.from_pretrained, model_dir, "model",
                                         local_files_only=True, dtype=torch.float32).to(self.device).eval()
        decoder = self.model.get_decoder()
        self.decoder = decoder
        self.layers = getattr(decoder, "layers", None)
        if self.layers is None or not hasattr(decoder, "norm"):
            raise QuantkitError(f"{model_dir}: automix probes need a decoder with .layers and .norm (llama-like)")
        self.params = dict(self.model.named_parameters())
        self.originals = {}  # HF name -> float32 numpy copy of the weights as loaded

    def original(self, hf_name: str) -> np.ndarray:
        if hf_name not in self.originals:
            self.originals[hf_name] = self.params[hf_name].detach().float().cpu().numpy().copy()
        return self.originals[hf_name]

    def set_weight(self, hf_name: str, values: np.ndarray) -> None:
        with self.torch.no_grad():
            self.params[hf_name].data.copy_(self.torch.from_numpy(np.ascontiguousarray(values)))

    def restore(self, hf_names) -> None:
        for name in hf_names:
            self.set_weight(name, self.original(name))

    def baseline(self, chunks: list) -> None:
        """Run ``chunks`` (token id lists) once: keep the log-probabilities and each layer's inputs."""
        torch = self.torch
        self.chunks = chunks
        self.hidden = [[None] * (len(self.layers) + 1) for _ in chunks]
        current = [0]

        def recorder(index):
            def hook(module, args, kwargs):
                x = args[0] if args else kwargs["hidden_states"]
                self.hidden[current[0]][index] = x.detach().clone()
            return hook

        handles = [layer.register_forward_pre_hook(recorder(i), with_kwargs=True) for i, layer in enumerate(self.layers)]
        handles.append(self.decoder.norm.register_forward_pre_hook(recorder(len(self.layers)), with_kwargs=True))
        try:
            self.base = []
            for c, ids in enumerate(chunks):
                current[0] = c
                self.base.append(self._logprobs(torch.tensor([ids], device=self.device)))
        finally:
            for h in handles:
                h.remove()

    def _logprobs(self, ids) -> np.ndarray:
        with self.torch.inference_mode():
            logits = self.model(input_ids=ids, use_cache=False).logits[0]
            return self.torch.log_softmax(logits.float(), dim=-1).cpu().numpy()

    def kld(self, first_layer: int | None) -> float:
        """Mean KLD against the baseline with the current weights; layers before ``first_layer`` are
        taken from the cache (None: run everything)."""
        torch = self.torch
        values = []
        if first_layer is None or first_layer == 0:
            for c, ids in enumerate(self.chunks):
                values.append(metrics.kld(self.base[c], self._logprobs(torch.tensor([ids], device=self.device))))
            return float(np.concatenate(values).mean())
        entry = self.layers[first_layer] if first_layer < len(self.layers) else self.decoder.norm
        current = [0]

        def inject(module, args, kwargs):
            x = self.hidden[current[0]][first_layer]
            if args:
                return (x,) + tuple(args[1:]), kwargs
            return args, {**kwargs, "hidden_states": x}

        handle = entry.register_forward_pre_hook(inject, with_kwargs=True)
        self.decoder.layers = torch.nn.ModuleList(list(self.layers)[first_layer:])
        try:
            for c, ids in enumerate(self.chunks):
                current[0] = c
                values.append(metrics.kld(self.base[c], self._logprobs(torch.tensor([ids], device=self.device))))
        finally:
            self.decoder.layers = self.layers
            handle.remove()
        return float(np.concatenate(values).mean())


def quantized_weights(plan: ConversionPlan, names, types: dict, prober: Prober, imatrix=None) -> dict:
    """HF name -> float32 values of each GGUF tensor of ``names`` quantized to ``types[name]`` and back,
    in the checkpoint's layout (the converter's row order undone)."""
    made_of = {p.name: p.tensor for p in plan.tensors}
    out = {}
    for name in names:
        t = made_of[name]
        hf_name = t.parts[0]
        rows = prober.original(hf_name)
        if t.transform is not None:
            rows = t.transform(rows)
        weights = None if imatrix is None or name not in imatrix else np.asarray(imatrix[name], dtype=np.float32)
        if weights is not None and weights.size != rows.shape[-1]:
            weights = None  # token embeddings: llama.cpp ignores such an entry
        values = dequantize(quantize(np.ascontiguousarray(rows, dtype=np.float32), types[name], imatrix=weights))
        order = _source_rows(t, values.shape[0])
        if order is not None:
            restored = np.empty_like(values)
            restored[order] = values
            values = restored
        out[hf_name] = values
    return out


def probe_group(plan: ConversionPlan, prober: Prober, tensors: list, first_layer, types, imatrix=None) -> dict:
    """type name -> mean KLD of the model with only ``tensors`` quantized to that type."""
    klds = {}
    for qtype in types:
        weights = quantized_weights(plan, tensors, dict.fromkeys(tensors, qtype), prober, imatrix)
        for hf_name, values in weights.items():
            prober.set_weight(hf_name, values)
        klds[qtype] = prober.kld(first_layer)
        prober.restore(weights)
    return klds


class _ProbeWorker:
    """A Ray actor: the model and its baseline, loaded once, then probing group after group."""

    def __init__(self, model_dir, device, threads, token_chunks, imatrix):
        self.plan = plan_conversion(model_dir, "F16")
        self.prober = Prober(model_dir, device, threads)
        self.prober.baseline(token_chunks)
        self.imatrix = imatrix

    def probe(self, tensors, first_layer, types) -> dict:
        return probe_group(self.plan, self.prober, tensors, first_layer, types, self.imatrix)


def _ray_probes(address: str, model_dir, device, threads, token_chunks, imatrix, jobs) -> list:
    """Every job's probe results, computed by Ray actors (one per CPU the cluster offers, or per GPU with
    ``device="cuda"``, at most one per job), each holding the model; in job order.

    ``address``: ``"local"`` starts Ray on this machine; else an existing cluster's address (``ray://...``
    or ``HOST:PORT``). The model folder must be at the same path on every node."""
    require_extra("cluster", "--ray-address")
    import ray  # deferred: optional (the [cluster] extra)

    ray.init(address=None if address == "local" else address, ignore_reinit_error=True, log_to_driver=False,
             configure_logging=False)
    resources = ray.cluster_resources()
    gpu = device == "cuda"
    slots = int(resources.get("GPU" if gpu else "CPU", 1)) // (1 if gpu else max(1, threads or 1))
    actor = ray.remote(num_cpus=0 if gpu else max(1, threads or 1), num_gpus=1 if gpu else 0)(_ProbeWorker)
    workers = [actor.remote(str(Path(model_dir).resolve()), device, threads, token_chunks, imatrix)
               for _ in range(max(1, min(slots, len(jobs))))]
    futures = [workers[i % len(workers)].probe.remote(g.tensors, g.first_layer, types)
               for i, (g, types) in enumerate(jobs)]
    return ray.get(futures)


def mix_kld(plan: ConversionPlan, prober: Prober, types: dict, imatrix=None) -> float:
    """Measured mean KLD of the model with every tensor of ``types`` (GGUF name -> type name) quantized."""
    weights = quantized_weights(plan, list(types), types, prober, imatrix)
    for hf_name, values in weights.items():
        prober.set_weight(hf_name, values)
    try:
        return prober.kld(None)
    finally:
        prober.restore(weights)


def calibration_chunks(model_dir, text: str, ctx: int, chunks: int) -> list:
    from transformers import AutoTokenizer  # deferred: optional and heavy (the [eval] extra)

    tokenizer = load_pretrained(AutoTokenizer.from_pretrained, model_dir, "tokenizer", local_files_only=True)
    return tokenize_chunks(tokenizer, text, ctx, chunks)


def _cache_path(model_dir, key_parts) -> Path:
    return cache_dir() / "automix" / f"{Path(model_dir).name}.{digest(*key_parts)}.json"


def measure(model_dir, *, imatrix=None, text: str | None = None, device=None, ctx: int = DEFAULT_CTX,
            chunks: int = DEFAULT_CHUNKS, layers_per_group: int | None = None, fixed=(), threads=None,
            progress: bool = True, use_cache: bool = True, prober: Prober | None = None,
            candidates=CANDIDATES, ray_address: str | None = None) -> Sensitivity:
    """Each group's KLD curve over its ``candidates`` types that fit its rows, plus the stored 16-bit
    type (see the module docstring); cached per model and settings. ``ray_address``: run the probes
    as Ray tasks (``"local"``: a Ray instance started here), see :func:`_ray_probes`."""
    text = text if text is not None else CALIBRATION_TEXT.read_text(encoding="utf-8")
    imatrix_data = read_imatrix(imatrix) if isinstance(imatrix, (str, Path)) else imatrix
    plan = plan_conversion(model_dir, "F16")
    fixed = parse_overrides(fixed)
    groups = probe_groups(plan, layers_per_group, fixed)
    stored = stored_16bit(Path(model_dir))
    shapes = {p.name: p.shape for p in plan.tensors}
    imatrix_key = None if imatrix_data is None else hashlib.sha256(
        b"".join(np.asarray(imatrix_data[k], dtype=np.float32).tobytes() for k in sorted(imatrix_data))).hexdigest()
    settings = {"ctx": ctx, "chunks": chunks, "layers_per_group": layers_per_group, "candidates": list(candidates),
                "fixed": [o.spec for o in fixed], "text_sha256": hashlib.sha256(text.encode()).hexdigest(),
                "imatrix_sha256": imatrix_key}
    path = _cache_path(model_dir, (model_digest(model_dir), quantkit_version(), sorted(settings.items())))
    if use_cache and path.exists():
        return Sensitivity.from_json(path.read_text())
    start = time.perf_counter()
    token_chunks = calibration_chunks(model_dir, text, ctx, chunks)
    jobs = []  # (group, types to probe)
    for g in groups:
        has_imatrix = imatrix_data is not None and all(n in imatrix_data for n in g.tensors)
        types = _candidates(shapes[g.tensors[0]], has_imatrix, stored, candidates)
        if stored == "BF16":
            g.kld[stored] = 0.0  # the model runs the stored bf16 values: nothing changes
            types.remove(stored)
        jobs.append((g, types))
    if ray_address is None:
        prober = prober or Prober(model_dir, device, threads)
        prober.baseline(token_chunks)
        results = (probe_group(plan, prober, g.tensors, g.first_layer, types, imatrix_data) for g, types in jobs)
    else:
        results = iter(_ray_probes(ray_address, model_dir, device, threads, token_chunks, imatrix_data, jobs))
    for (g, types), klds in zip(jobs, results):
        g.kld.update(klds)
        if progress:
            print(f"automix: {g.name}: " + ", ".join(f"{k} {v:.4f}" for k, v in g.kld.items()), file=sys.stderr)
    result = Sensitivity(groups, settings, time.perf_counter() - start, sum(len(types) for _, types in jobs))
    path.parent.mkdir(parents=True, exist_ok=True)
    write_atomic(path, result.to_json())
    return result


@dataclass
class Mix:
    """An allocation: the type of every tensor, the preset label, the plan it gives, the predicted KLD."""

    types: dict  # GGUF name -> type name, every tensor llama-quantize would quantize
    preset: str
    plan: ConversionPlan
    predicted_kld: float  # sum of the chosen options' single-group KLDs
    recipe: list  # REGEX=TYPE items


def _label(plan: ConversionPlan, types: dict) -> str:
    by_type: dict[str, int] = {}
    sizes = {p.name: p for p in plan.tensors}
    for name, qtype in types.items():
        by_type[qtype] = by_type.get(qtype, 0) + quant_type(qtype).nbytes(sizes[name].shape)
    for qtype in sorted(by_type, key=by_type.get, reverse=True):
        if qtype in _LABEL:
            return _LABEL[qtype]
    return "Q6_K"


def plan_mix(model_dir, target: Target, sensitivity: Sensitivity, *, imatrix=None, fixed=()) -> Mix:
    """The allocation of ``sensitivity``'s groups within ``target``; ``fixed``: ``REGEX=TYPE`` items
    whose tensors keep the type they give (the groups exclude them)."""
    imatrix_data = read_imatrix(imatrix) if isinstance(imatrix, (str, Path)) else imatrix
    fixed_items = [o.spec for o in parse_overrides(fixed)]
    # the file without the groups (any type of theirs will do: their bytes are subtracted), and the
    # types of the quantizable tensors no group holds (fixed, or not probed), Q4_K_M's when not fixed
    stored = {n: stored_16bit(Path(model_dir)) for g in sensitivity.groups for n in g.tensors}
    base = plan_conversion(model_dir, "Q4_K_M", imatrix=imatrix_data, tensor_types=fixed_items + recipe_items(stored))
    shapes = {p.name: p.shape for p in base.tensors}
    grouped = {n for g in sensitivity.groups for n in g.tensors}
    fixed_file = base.expected_file_size() - sum(_padded(p.nbytes) for p in base.tensors if p.name in grouped)
    fixed_tensor = base.tensor_bytes - sum(p.nbytes for p in base.tensors if p.name in grouped)
    options = []
    for g in sensitivity.groups:
        row = []
        for qtype, kld in g.kld.items():
            sizes = [quant_type(qtype).nbytes(shapes[n]) for n in g.tensors]
            row.append(Option(qtype, sum(_padded(s) for s in sizes), sum(sizes), kld))
        options.append(row)
    choice = allocate(options, fixed_file, fixed_tensor, base.n_elements, target)
    chosen = {n: options[i][c].qtype for i, g in enumerate(sensitivity.groups) for n in g.tensors
              for c in [choice[i]]}
    types = {p.name: p.qtype.name for p in base.tensors
             if allows_quantization(p.name, p.shape, base.arch_name)}
    types.update(chosen)
    preset = _label(base, types)
    recipe = recipe_items(types)
    plan = plan_conversion(model_dir, preset, imatrix=imatrix_data, tensor_types=recipe)
    got = {p.name: p.qtype.name for p in plan.tensors if p.name in types}
    if got != types:  # the recipe alone must give exactly the chosen types
        wrong = next(n for n in types if got.get(n) != types[n])
        raise QuantkitError(f"automix: the recipe gives {wrong} {got.get(wrong)}, not {types[wrong]}")
    if target.size is not None and plan.expected_file_size() > target.size:
        raise QuantkitError(f"automix: planned {plan.expected_file_size():,} bytes exceed the target {target.size:,}")
    if target.bpw is not None and plan.bits_per_weight > target.bpw:
        raise QuantkitError(f"automix: planned {plan.bits_per_weight:.4f} bpw exceed the target {target.bpw}")
    predicted = sum(options[i][c].kld for i, c in enumerate(choice))
    return Mix(types, preset, plan, predicted, recipe)


def recipe_path(output) -> Path:
    """``OUT.recipe.txt`` beside ``OUT.gguf``."""
    output = Path(output)
    return output.with_name(output.name.removesuffix(".gguf") + ".recipe.txt")


def auto_convert(model_dir, output, target: Target, *, imatrix=None, tensor_types=(), text: str | None = None,
                 device=None, threads=None, overwrite: bool = False, progress: bool = True, optimize: bool = False,
                 **measure_options):
    """Measure (or reuse the cache), allocate within ``target``, write ``output`` and its recipe.

    ``optimize``: write the chosen types with ``quantize(..., optimize=True)`` (same sizes, so the target
    still holds; the probes measure the default quantization, an upper bound of the optimized one's loss).

    Returns (ConversionResult, Mix, Sensitivity)."""
    imatrix_data = read_imatrix(imatrix) if isinstance(imatrix, (str, Path)) else imatrix
    sensitivity = measure(model_dir, imatrix=imatrix_data, text=text, device=device, fixed=tensor_types,
                          threads=threads, progress=progress, **measure_options)
    mix = plan_mix(model_dir, target, sensitivity, imatrix=imatrix_data, fixed=tensor_types)
    result = convert(model_dir, output, mix.preset, imatrix=imatrix_data, tensor_types=mix.recipe, threads=threads,
                     overwrite=overwrite, progress=progress, optimize=optimize)
    recipe = write_recipe(recipe_path(output), mix.types)
    if progress:
        print(f"automix: {target.label}: predicted KLD {mix.predicted_kld:.4f} (sum of single-group KLDs), "
              f"recipe {recipe}; reproduce: quantkit convert {model_dir} -o OUT.gguf -t {mix.preset} "
              f"--tensor-type-file {recipe}", file=sys.stderr)
    return result, mix, sensitivity


def make_auto_variant(model_dir, name: str, path, *, imatrix=None, device=None, threads=None,
                      progress: bool = True) -> None:
    """The scorecard variant ``auto@TARGET`` (e.g. ``auto@4.5bpw``): its GGUF at ``path`` and the
    conversion's seconds beside it (``.seconds``, as the scorecard's files keep them), unless both exist."""
    path = Path(path)
    seconds_file = path.with_name(path.name + ".seconds")
    if path.exists() and seconds_file.exists():
        return
    target = parse_target(name.split("@", 1)[1])
    path.parent.mkdir(parents=True, exist_ok=True)
    result, _, _ = auto_convert(model_dir, path, target, imatrix=imatrix, device=device, threads=threads,
                                overwrite=True, progress=progress)
    write_atomic(seconds_file, f"{result.seconds:.3f}\n")
