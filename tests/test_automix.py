"""Size-targeted mixes: targets and sizes, recipes (llama-quantize's --tensor-type-file), the allocation,
and the whole path on a tiny random Llama: the file fits, its recipe reproduces it byte for byte,
llama.cpp runs it, the measurements are cached, and CPU probes give the numbers the cache holds."""

import itertools
import shutil

import numpy as np
import pytest
from click.testing import CliRunner

from quantkit.cli import main
from quantkit.errors import QuantkitError
from quantkit.plan.recipes import read_recipe, recipe_items, write_recipe
from quantkit.plan.targets import Option, Target, allocate, parse_size, parse_target

TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json")


@pytest.fixture(autouse=True)
def offline(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")


# --- sizes and targets ----------------------------------------------------------------------------


@pytest.mark.parametrize("text, size", [("123456", 123456), ("100MB", 100_000_000), ("100M", 100_000_000),
                                        ("1.5G", 1_500_000_000), ("98MiB", 98 * 1024**2), ("64k", 64_000),
                                        ("2 GiB", 2 * 1024**3)])
def test_sizes_as_llama_cpp_writes_them(text, size):
    assert parse_size(text) == size


@pytest.mark.parametrize("text", ["", "MB", "-5M", "0", "12 apples", "1e9"])
def test_bad_sizes_are_one_line_errors(text):
    with pytest.raises(QuantkitError, match="--target-size"):
        parse_size(text)


def test_auto_targets():
    assert parse_target("4.5bpw") == Target(bpw=4.5)
    assert parse_target("100MB") == Target(size=100_000_000)
    with pytest.raises(QuantkitError):
        parse_target("fastbpw")
    with pytest.raises(QuantkitError):
        Target(bpw=40)


# --- recipes --------------------------------------------------------------------------------------


def test_recipe_items_name_each_tensor_exactly(tmp_path):
    types = {"token_embd.weight": "Q8_0", "blk.0.attn_v.weight": "Q6_K", "blk.1.attn_v.weight": "Q4_K",
             "blk.10.attn_v.weight": "Q6_K", "blk.1.attn_q.weight": "Q4_K"}
    items = recipe_items(types)
    assert items == [r"^token_embd\.weight$=Q8_0", r"^blk\.(0|10)\.attn_v\.weight$=Q6_K",
                     r"^blk\.(1)\.attn_q\.weight$=Q4_K", r"^blk\.(1)\.attn_v\.weight$=Q4_K"]
    path = write_recipe(tmp_path / "r.txt", types)
    assert read_recipe(path) == items
    # llama-quantize's format: items separated by any white space
    (tmp_path / "spaces.txt").write_text("attn_v=q6_k   ffn_down=Q5_K\n\n  token_embd=Q8_0")
    assert read_recipe(tmp_path / "spaces.txt") == ["attn_v=q6_k", "ffn_down=Q5_K", "token_embd=Q8_0"]


def test_bad_recipe_names_file_and_item(tmp_path):
    (tmp_path / "bad.txt").write_text("attn_v=Q6_K\nffn_down:Q5_K\n")
    with pytest.raises(QuantkitError, match="bad.txt.*ffn_down:Q5_K"):
        read_recipe(tmp_path / "bad.txt")
    (tmp_path / "badtype.txt").write_text("attn_v=Q7_K\n")
    with pytest.raises(QuantkitError, match="badtype.txt"):
        read_recipe(tmp_path / "badtype.txt")


# --- allocation -----------------------------------------------------------------------------------


def _brute_force(groups, fixed, budget):
    best = None
    for combo in itertools.product(*[range(len(g)) for g in groups]):
        size = fixed + sum(g[c].file_bytes for g, c in zip(groups, combo))
        if size <= budget:
            kld = sum(g[c].kld for g, c in zip(groups, combo))
            best = kld if best is None or kld < best else best
    return best


def test_allocation_fits_and_matches_brute_force_on_convex_curves():
    rng = np.random.default_rng(0)
    sizes = [2, 3, 4, 5, 6, 8]
    for trial in range(20):
        groups = []
        for g in range(5):
            scale, n = rng.uniform(100, 1000), int(rng.integers(100, 1000))
            # KLD ~ scale * 2^-2b: convex and falling in bytes, as quantization error is
            groups.append([Option(f"T{b}", n * b, n * b, float(scale * 4.0 ** -b)) for b in sizes])
        low = 100 + sum(g[0].file_bytes for g in groups)
        high = 100 + sum(g[-1].file_bytes for g in groups)
        budget = int(rng.integers(low, high))
        choice = allocate(groups, 100, 100, 10**6, Target(size=budget))
        used = 100 + sum(g[c].file_bytes for g, c in zip(groups, choice))
        assert used <= budget
        got = sum(g[c].kld for g, c in zip(groups, choice))
        best = _brute_force(groups, 100, budget)
        assert got <= best * 1.05 + 1e-12, (trial, got, best)


def test_allocation_bpw_and_too_small_targets():
    groups = [[Option("A", 100, 96, 1.0), Option("B", 200, 192, 0.1)] for _ in range(3)]
    # 3 groups, tensor bytes 96 or 192 over 1000 elements: 4.5 bpw allows 562 bytes -> one upgrade
    choice = allocate(groups, 0, 0, 1000, Target(bpw=3 * 96 * 8 / 1000 + 96 * 8 / 1000 + 0.01))
    assert sorted(choice) == [0, 0, 1]
    with pytest.raises(QuantkitError, match="smallest mix"):
        allocate(groups, 0, 0, 1000, Target(size=299))


# --- the whole path on a tiny random Llama -----------------------------------------------------------


@pytest.fixture(scope="module")
def tiny_dir(tmp_path_factory, smollm2_hf_dir):
    """A 4-layer random Llama, 256 wide (K-quant rows) with tied embeddings, SmolLM2's tokenizer."""
    import torch
    from transformers import AutoModelForCausalLM, LlamaConfig

    config = LlamaConfig(vocab_size=49152, hidden_size=256, intermediate_size=512, num_hidden_layers=4,
                         num_attention_heads=4, num_key_value_heads=2, tie_word_embeddings=True,
                         torch_dtype="bfloat16")
    torch.manual_seed(0)
    folder = tmp_path_factory.mktemp("tiny-automix")
    AutoModelForCausalLM.from_config(config).to(torch.bfloat16).save_pretrained(folder)
    for name in TOKENIZER_FILES:
        shutil.copy(smollm2_hf_dir / name, folder / name)
    return folder


@pytest.fixture(scope="module")
def cache(tmp_path_factory):
    return tmp_path_factory.mktemp("quantkit-cache")


@pytest.fixture
def quantkit_cache(cache, monkeypatch):
    monkeypatch.setenv("QUANTKIT_CACHE", str(cache))
    return cache


MEASURE = dict(ctx=64, chunks=2, layers_per_group=2, candidates=("Q2_K", "Q4_K", "Q5_0", "Q8_0"))


@pytest.fixture(scope="module")
def sensitivity(tiny_dir, cache):
    from quantkit.eval.automix import measure

    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("QUANTKIT_CACHE", str(cache))
        return measure(tiny_dir, device="cpu", progress=False, **MEASURE)


def test_probe_groups_and_curves(sensitivity):
    names = [g.name for g in sensitivity.groups]
    kinds = ["attn_k", "attn_output", "attn_q", "attn_v", "ffn_down", "ffn_gate", "ffn_up"]
    assert sorted(names) == sorted(["token_embd.weight"] + [f"{k}.weight@{a}-{a + 1}" for k in kinds for a in (0, 2)])
    for g in sensitivity.groups:
        assert g.kld["BF16"] == 0.0
        assert set(g.kld) == {"Q2_K", "Q4_K", "Q5_0", "Q8_0", "BF16"}
        # fewer bits cost more: Q2_K loses more than Q4_K, which loses more than Q8_0
        assert g.kld["Q2_K"] > g.kld["Q4_K"] > g.kld["Q8_0"] >= 0, g


def test_cached_layer_inputs_give_the_full_run(tiny_dir):
    """A probe that starts at layer 2 from the cached hidden states gives the KLD of a full run."""
    from quantkit.eval.automix import Prober, calibration_chunks, quantized_weights
    from quantkit.jobs.convert import plan_conversion

    plan = plan_conversion(tiny_dir, "F16")
    prober = Prober(tiny_dir, "cpu")
    prober.baseline(calibration_chunks(tiny_dir, "Paris is the capital of France. " * 30, 32, 2))
    names = ["blk.2.attn_v.weight", "blk.3.ffn_down.weight"]
    for hf_name, values in quantized_weights(plan, names, dict.fromkeys(names, "Q2_K"), prober).items():
        prober.set_weight(hf_name, values)
    from_layer_2, full = prober.kld(2), prober.kld(None)
    assert full > 1e-4
    assert from_layer_2 == pytest.approx(full, rel=1e-5)
    assert prober.kld(3) != pytest.approx(full, rel=1e-3)  # skipping the changed layer 2 does change it


def test_second_target_reads_the_cache(tiny_dir, sensitivity, quantkit_cache, monkeypatch):
    from quantkit.eval import automix

    def no_model(*args, **kwargs):
        raise AssertionError("the model was loaded again")

    monkeypatch.setattr(automix, "Prober", no_model)
    again = automix.measure(tiny_dir, device="cpu", progress=False, **MEASURE)
    assert [g.kld for g in again.groups] == [g.kld for g in sensitivity.groups]


def test_cpu_probe_repeats_the_cached_numbers(tiny_dir, sensitivity, quantkit_cache):
    """--device cpu explicitly, measured afresh (no cache): the same curves."""
    from quantkit.eval.automix import measure

    fresh = measure(tiny_dir, device="cpu", progress=False, use_cache=False, **dict(MEASURE, candidates=("Q4_K",)))
    for a, b in zip(fresh.groups, sensitivity.groups):
        assert a.name == b.name
        assert a.kld["Q4_K"] == pytest.approx(b.kld["Q4_K"], rel=1e-6)


@pytest.mark.parametrize("preset", ["Q2_K", "Q4_K_M"])
def test_auto_file_fits_the_preset_size_and_recipe_reproduces_it(tiny_dir, sensitivity, quantkit_cache, tmp_path,
                                                                  preset):
    runner = CliRunner()
    reference = tmp_path / f"{preset}.gguf"
    assert runner.invoke(main, ["convert", str(tiny_dir), "-o", str(reference), "-t", preset]).exit_code == 0
    size = reference.stat().st_size
    from quantkit.eval.automix import auto_convert

    auto = tmp_path / "auto.gguf"
    result, mix, _ = auto_convert(tiny_dir, auto, Target(size=size), device="cpu", progress=False, **MEASURE)
    assert auto.stat().st_size <= size
    assert auto.stat().st_size == mix.plan.expected_file_size() == result.file_bytes
    recipe = tmp_path / "auto.recipe.txt"
    items = read_recipe(recipe)
    assert len(items) >= 7
    from quantkit.ggufio import read_gguf

    with read_gguf(auto) as f:
        file_type = int(f.metadata["general.file_type"])
        types = {t.name: t.qtype.name for t in f.tensors}
    from quantkit.plan.presets import PRESETS

    label = next(name for name, (ftype, _) in PRESETS.items() if int(ftype) == file_type)
    again = tmp_path / "again.gguf"
    result = runner.invoke(main, ["convert", str(tiny_dir), "-o", str(again), "-t", label,
                                  "--tensor-type-file", str(recipe)])
    assert result.exit_code == 0, result.output
    assert again.read_bytes() == auto.read_bytes()
    assert len(set(types.values()) - {"F32"}) >= 2  # a mix, not one type


def test_bpw_target_fits(tiny_dir, sensitivity, quantkit_cache, tmp_path):
    from quantkit.eval.automix import auto_convert

    result, mix, _ = auto_convert(tiny_dir, tmp_path / "b.gguf", Target(bpw=5.0), device="cpu", progress=False,
                                  **MEASURE)
    assert result.bits_per_weight <= 5.0
    assert mix.plan.expected_file_size() == result.file_bytes
    assert result.bits_per_weight > 4.5  # the budget is used, not wasted


def test_optimize_writes_the_same_mix_in_the_same_size(tiny_dir, sensitivity, quantkit_cache, tmp_path):
    from quantkit import read_gguf
    from quantkit.eval.automix import auto_convert

    plain, plain_mix, _ = auto_convert(tiny_dir, tmp_path / "p.gguf", Target(bpw=4.5), device="cpu", progress=False,
                                       **MEASURE)
    opt, opt_mix, _ = auto_convert(tiny_dir, tmp_path / "o.gguf", Target(bpw=4.5), device="cpu", progress=False,
                                   optimize=True, **MEASURE)
    assert opt_mix.types == plain_mix.types and opt.file_bytes == plain.file_bytes
    with read_gguf(tmp_path / "p.gguf") as a, read_gguf(tmp_path / "o.gguf") as b:
        changed = [t.name for t, u in zip(a.tensors, b.tensors) if bytes(t.data) != bytes(u.data)]
    assert any(name.startswith("blk.") for name in changed)


def test_fixed_tensor_types_are_respected(tiny_dir, sensitivity, quantkit_cache, tmp_path):
    from quantkit.eval.automix import auto_convert

    result, mix, _ = auto_convert(tiny_dir, tmp_path / "f.gguf", Target(bpw=4.5), tensor_types=["attn_v=Q8_0"],
                                  device="cpu", progress=False, **MEASURE)
    assert {mix.types[f"blk.{i}.attn_v.weight"] for i in range(4)} == {"Q8_0"}
    assert result.bits_per_weight <= 4.5


def test_llama_cpp_runs_an_auto_mix(tiny_dir, sensitivity, quantkit_cache, tmp_path):
    import xllamacpp

    from quantkit.eval.automix import auto_convert

    result, _, _ = auto_convert(tiny_dir, tmp_path / "run.gguf", Target(bpw=4.0), device="cpu", progress=False,
                                **MEASURE)
    params = xllamacpp.CommonParams()
    params.model.path = str(result.path)
    params.n_ctx = 256
    params.warmup = False
    params.verbosity = -1
    server = xllamacpp.Server(params)
    out = server.handle_completions({"prompt": "The capital of France is", "max_tokens": 8, "temperature": 0})
    assert out["usage"]["completion_tokens"] == 8
    assert isinstance(out["choices"][0]["text"], str)


def test_too_small_target_is_one_line_error(tiny_dir, sensitivity, quantkit_cache, tmp_path):
    from quantkit.eval.automix import auto_convert

    with pytest.raises(QuantkitError, match="smallest mix"):
        auto_convert(tiny_dir, tmp_path / "x.gguf", Target(size=1_000_000), device="cpu", progress=False, **MEASURE)
    result = CliRunner().invoke(main, ["convert", str(tiny_dir), "-o", str(tmp_path / "x.gguf"), "--target-size",
                                       "12 apples"])
    assert result.exit_code == 2
    assert "--target-size '12 apples'" in result.output


# --- the scorecard: auto@ variants, the frontier, the recommendation ------------------------------


def _row(name, size, kld):
    return {"type": name, "size_bytes": size, "bits_per_weight": size / 1e6, "text": {"kld": {"mean": kld}}}


def test_frontier_and_recommendation():
    from quantkit.eval.report import _recommendations, frontier, recommend

    rows = [_row("Q8_0", 140e6, 0.001), _row("Q4_K_M", 100e6, 0.05), _row("auto@100MB", 99e6, 0.03),
            _row("Q4_0", 90e6, 0.30), _row("Q2_K", 88e6, 0.40), _row("auto@88MB", 88e6, 0.20)]
    assert [r["type"] for r in frontier(rows)] == ["auto@88MB", "auto@100MB", "Q8_0"]
    result = {"types": rows}
    assert recommend(result, "100MB")["type"] == "auto@100MB"
    assert recommend(result, "98.9MB")["type"] == "auto@88MB"
    assert recommend(result, 150_000_000)["type"] == "Q8_0"
    assert recommend(result, "80MB") is None
    table = "\n".join(_recommendations(result))
    assert "| 88.0 MB < 99.0 MB | auto@88MB |" in table


def test_scorecard_auto_variant_and_budget(tiny_dir, sensitivity, quantkit_cache, tmp_path, monkeypatch):
    import functools

    from quantkit.eval import automix

    monkeypatch.setattr(automix, "auto_convert", functools.partial(automix.auto_convert, **MEASURE))
    prompts = tmp_path / "prompts.txt"
    prompts.write_text("What is the capital of France?\nName a colour.\n")
    text = tmp_path / "text.txt"
    text.write_text("The quick brown fox jumps over the lazy dog. " * 40)
    out = tmp_path / "report"
    result = CliRunner().invoke(main, ["scorecard", str(tiny_dir), "--types", "Q4_K_M,auto@5bpw", "--prompts",
                                       str(prompts), "--text", str(text), "--max-new-tokens", "4", "--text-tokens",
                                       "64", "-o", str(out), "--budget", "1G", "--device", "cpu", "--threads", "1"])
    assert result.exit_code == 0, result.output
    import json

    report = json.loads((out / "scorecard.json").read_text())
    rows = {r["type"]: r for r in report["types"]}
    assert rows["AUTO@5BPW"]["bits_per_weight"] <= 5.0
    assert rows["AUTO@5BPW"]["text"]["kld"]["mean"] > 0
    from quantkit.eval.report import recommend

    pick = recommend(report, "1G")
    assert f"budget 1G: {pick['type']} (" in result.output
    assert "## Recommendation" in (out / "scorecard.md").read_text()


# --- Ray ------------------------------------------------------------------------------------------


def test_ray_probes_equal_in_process(tiny_dir, quantkit_cache):
    """The probes as Ray tasks on a local Ray instance give the in-process numbers exactly (one torch
    thread on both sides, so every float sum runs in the same order)."""
    import ray

    from quantkit.eval.automix import measure

    options = dict(MEASURE, candidates=("Q3_K", "Q5_0"))
    local = measure(tiny_dir, device="cpu", threads=1, use_cache=False, progress=False, **options)
    try:
        remote = measure(tiny_dir, device="cpu", threads=1, use_cache=False, progress=False, ray_address="local",
                         **options)
    finally:
        ray.shutdown()
    assert [g.name for g in remote.groups] == [g.name for g in local.groups]
    assert [g.kld for g in remote.groups] == [g.kld for g in local.groups]
    assert all(g.kld["Q3_K"] > g.kld["Q5_0"] > 0 for g in local.groups)


LLAMA_QUANTIZE_RECIPE = """
import ctypes, sys, gguf, llama_cpp
items = open(sys.argv[3]).read().split()
overrides = (llama_cpp.llama_model_tensor_override * (len(items) + 1))()
patterns = [item.partition("=")[0].encode() for item in items]  # llama-quantize splits at the first '='
for i, item in enumerate(items):
    overrides[i].pattern = patterns[i]
    overrides[i].type = int(gguf.GGMLQuantizationType[item.partition("=")[2].upper()])
overrides[len(items)].pattern = None
params = llama_cpp.llama_model_quantize_default_params()
params.ftype = getattr(llama_cpp, "LLAMA_FTYPE_MOSTLY_" + sys.argv[4])
params.nthread = 1
params.tt_overrides = ctypes.cast(overrides, ctypes.POINTER(llama_cpp.llama_model_tensor_override))
sys.exit(llama_cpp.llama_model_quantize(sys.argv[1].encode(), sys.argv[2].encode(), params))
"""


def test_llama_quantize_reproduces_the_recipe(tiny_dir, sensitivity, quantkit_cache, tmp_path):
    """llama.cpp's llama_model_quantize with the recipe as its tensor type overrides (what llama-quantize
    --tensor-type-file passes), on the lossless BF16 file, writes the auto mix's tensors and metadata (the
    one-pass convert orders the keys as llama.cpp's converter, llama-quantize moves the file type last),
    and ``quantkit quantize --tensor-type-file`` on that BF16 file writes llama-quantize's bytes."""
    import subprocess
    import sys

    import quantkit
    from quantkit.eval.automix import auto_convert, recipe_path
    from test_convert_support import gguf_differences

    auto = tmp_path / "auto.gguf"
    _, mix, _ = auto_convert(tiny_dir, auto, Target(bpw=4.8), device="cpu", progress=False, **MEASURE)
    source = tmp_path / "bf16.gguf"
    quantkit.convert(tiny_dir, source, "BF16", progress=False)
    out = tmp_path / "llama-quantize.gguf"
    subprocess.run([sys.executable, "-c", LLAMA_QUANTIZE_RECIPE, str(source), str(out), str(recipe_path(auto)),
                    mix.preset], check=True, capture_output=True)
    assert gguf_differences(auto, out) == []
    again = tmp_path / "quantkit-quantize.gguf"
    result = CliRunner().invoke(main, ["quantize", str(source), str(again), mix.preset, "--tensor-type-file",
                                       str(recipe_path(auto))])
    assert result.exit_code == 0, result.output
    assert again.read_bytes() == out.read_bytes()
