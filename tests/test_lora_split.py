"""LoRA adapters (quantkit lora, convert --lora) and split GGUF files, checked against llama.cpp's
convert_lora_to_gguf.py / convert_hf_to_gguf.py run from the sdist and against llama.cpp itself."""

import json

import numpy as np
import pytest
from click.testing import CliRunner
from safetensors.numpy import load_file, save_file
from test_convert_support import (
    LLAMA_CONFIG,
    LlamaServer,
    gguf_differences,
    llama_weights,
    make_llama_folder,
    make_lora_adapter,
    peer_lora,
    quantkit_convert,
    run_peer,
)

from quantkit import read_gguf
from quantkit.cli import main


def run_cli(*args):
    return CliRunner().invoke(main, [str(a) for a in args])


@pytest.fixture(scope="module")
def smollm2_adapter(tmp_path_factory, smollm2_hf_dir):
    return make_lora_adapter(tmp_path_factory.mktemp("lora") / "adapter", smollm2_hf_dir)


# --- quantkit lora -------------------------------------------------------------------------------

@pytest.mark.parametrize("type_name", ["F16", "Q8_0", "BF16", "F32"])
def test_lora_adapter_equals_peer(tmp_path, smollm2_hf_dir, smollm2_adapter, type_name):
    out = tmp_path / "adapter.gguf"
    result = run_cli("lora", smollm2_adapter, "--base", smollm2_hf_dir, "-o", out, "--type", type_name)
    assert result.exit_code == 0, result.output
    peer = peer_lora(smollm2_adapter, smollm2_hf_dir, type_name.lower())
    assert gguf_differences(out, peer) == []
    with read_gguf(out) as f:
        assert f.metadata["general.type"] == "adapter" and f.metadata["adapter.type"] == "lora"
        assert f.metadata["adapter.lora.alpha"] == 16.0
        assert len(f.tensors) == 2 * 7 * 30
        q_b = f.tensor("blk.0.attn_q.weight.lora_b")
        assert q_b.shape == (576, 8)  # rank 8 rows cannot be Q8_0: F16 as the peer
        assert q_b.qtype.name == ("F16" if type_name == "Q8_0" else type_name)
        assert f.tensor("blk.0.attn_q.weight.lora_a").qtype.name == type_name


@pytest.mark.parametrize("arch, targets", [
    ("qwen3", ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")),
    ("phi_3", ("qkv_proj", "o_proj", "gate_up_proj", "down_proj")),  # fused projections
    ("mixtral", ("q_proj", "k_proj", "v_proj", "o_proj")),  # llama's Q/K permutation of B
    ("gemma2", ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")),
])
def test_lora_adapter_equals_peer_on_other_architectures(tmp_path, smollm2_hf_dir, arch, targets):
    """Rank 32: lora_b rows are whole Q8_0 blocks, so both halves are Q8_0."""
    from test_convert_archs import tiny_model

    base = tiny_model(arch, smollm2_hf_dir)
    adapter = make_lora_adapter(tmp_path / "adapter", base, rank=32, alpha=64, targets=targets)
    out = tmp_path / "adapter.gguf"
    assert run_cli("lora", adapter, "--base", base, "-o", out, "--type", "Q8_0").exit_code == 0
    assert gguf_differences(out, peer_lora(adapter, base, "q8_0")) == []
    with read_gguf(out) as f:
        assert {t.qtype.name for t in f.tensors} == {"Q8_0"} and len(f.tensors) == 2 * 2 * len(targets)


def _adapter_logits(model, lora=None, prompt=b"The capital of France is"):
    import llama_cpp

    options = {"lora_path": str(lora)} if lora else {}
    llm = llama_cpp.Llama(str(model), logits_all=True, n_ctx=64, n_threads=2, verbose=False, **options)
    try:
        tokens = llm.tokenize(prompt, add_bos=False)
        llm.eval(tokens)
        return np.array(llm.scores[: len(tokens)])
    finally:
        llm.close()


def test_llama_cpp_applies_adapter_and_merge(tmp_path, smollm2_hf_dir, smollm2_adapter):
    """Base + quantkit's adapter = base + the peer's adapter in llama.cpp, and close to the merged model."""
    ours = tmp_path / "adapter.gguf"
    assert run_cli("lora", smollm2_adapter, "--base", smollm2_hf_dir, "-o", ours).exit_code == 0
    merged = tmp_path / "merged.gguf"
    result = run_cli("convert", smollm2_hf_dir, "--lora", smollm2_adapter, "-o", merged, "--type", "F16")
    assert result.exit_code == 0, result.output
    base = quantkit_convert(smollm2_hf_dir, "F16")
    plain = _adapter_logits(base)
    with_ours = _adapter_logits(base, ours)
    with_peer = _adapter_logits(base, peer_lora(smollm2_adapter, smollm2_hf_dir, "f16"))
    assert np.array_equal(with_ours, with_peer)
    assert np.abs(with_ours - plain).max() > 1.0  # the adapter changes the model
    # the merged weights are rounded to F16 once, the adapter's B and A each: logits agree closely
    assert np.abs(_adapter_logits(merged) - with_ours).max() < 0.2


@pytest.mark.parametrize("case, expected", [
    ("lm_head", "'base_model.model.lm_head.weight' is a whole weight, not a lora_A/lora_B pair; llama.cpp cannot apply it"),
    ("dora", "use_dora is set; llama.cpp cannot apply DoRA"),
    ("modules_to_save", "modules_to_save is set"),
    ("shape", "'model.layers.0.mlp.down_proj.weight' is (64, 128) in the base, the adapter's B @ A is (64, 64)"),
    ("partner", "has no lora_B partner"),
    ("missing", "adapts 'model.layers.7.mlp.up_proj.weight', which"),
    ("tied_lm_head", "the adapter targets lm_head, which base model ties to the embeddings; llama.cpp cannot apply it"),
])
def test_lora_refuses_what_llama_cpp_cannot_apply(tmp_path, smollm2_hf_dir, case, expected):
    base = make_llama_folder(tmp_path, smollm2_hf_dir)
    adapter = make_lora_adapter(tmp_path / "adapter", base, rank=4)
    tensors = load_file(str(adapter / "adapter_model.safetensors"))
    config = json.loads((adapter / "adapter_config.json").read_text())
    prefix = "base_model.model.model.layers.0.mlp."
    if case == "lm_head":
        tensors["base_model.model.lm_head.weight"] = np.zeros((8, 64), np.float32)
    elif case in ("dora", "modules_to_save"):
        config["use_dora" if case == "dora" else "modules_to_save"] = True if case == "dora" else ["lm_head"]
    elif case == "shape":
        tensors[prefix + "down_proj.lora_A.weight"] = np.zeros((4, 64), np.float32)
    elif case == "partner":
        del tensors[prefix + "up_proj.lora_B.weight"]
    elif case == "missing":
        for half in "AB":
            tensors[f"base_model.model.model.layers.7.mlp.up_proj.lora_{half}.weight"] = tensors.pop(
                f"{prefix}up_proj.lora_{half}.weight")
    elif case == "tied_lm_head":
        tensors["base_model.model.lm_head.lora_A.weight"] = np.zeros((4, 64), np.float32)
        tensors["base_model.model.lm_head.lora_B.weight"] = np.zeros((49152, 4), np.float32)
    save_file(tensors, str(adapter / "adapter_model.safetensors"))
    (adapter / "adapter_config.json").write_text(json.dumps(config))
    for args in (("lora", adapter, "--base", base, "-o", tmp_path / "a.gguf"),
                 ("convert", base, "--lora", adapter, "-o", tmp_path / "m.gguf")):
        result = run_cli(*args)
        assert result.exit_code == 2, result.output
        line = result.output.strip()
        assert line.startswith("quantkit: error: ") and expected in line and "\n" not in line and len(line) <= 217
    assert not (tmp_path / "a.gguf").exists() and not (tmp_path / "m.gguf").exists()


# --- convert --lora ------------------------------------------------------------------------------

def test_merged_weights_equal_numpy_merge(tmp_path, smollm2_hf_dir):
    """convert --lora A --lora B --lora-scale 0.5 --type F16 = the peer's F16 of the float32 numpy merge,
    W + 0.5 * (alpha / r) * (B1 @ A1 + B2 @ A2), to F16 rounding."""
    base = make_llama_folder(tmp_path / "base", smollm2_hf_dir)
    first = make_lora_adapter(tmp_path / "first", base, rank=4, alpha=8, seed=1)
    second = make_lora_adapter(tmp_path / "second", base, rank=8, alpha=32, seed=2, targets=("q_proj", "down_proj"))
    weights = {k: v.astype(np.float32) for k, v in load_file(str(base / "model.safetensors")).items()}
    for adapter, alpha, rank in ((first, 8, 4), (second, 32, 8)):
        lora = load_file(str(adapter / "adapter_model.safetensors"))
        for name in [n for n in lora if n.endswith(".lora_A.weight")]:
            target = name.removeprefix("base_model.model.").replace(".lora_A.weight", ".weight")
            b = lora[name.replace("lora_A", "lora_B")]
            weights[target] += np.float32(0.5 * alpha / rank) * (b @ lora[name])
    merged_dir = make_llama_folder(tmp_path / "numpy", smollm2_hf_dir, weights=weights)
    ours = tmp_path / "merged.gguf"
    result = run_cli("convert", base, "--lora", first, "--lora", second, "--lora-scale", "0.5", "-o", ours, "-t", "F16")
    assert result.exit_code == 0, result.output
    peer = tmp_path / "peer.gguf"
    run_peer("convert_hf_to_gguf.py", merged_dir, "--outtype", "f16", "--outfile", peer)
    plain = quantkit_convert(base, "F16")
    with read_gguf(ours) as a, read_gguf(peer) as b, read_gguf(plain) as p:
        assert [(t.name, t.qtype, t.shape) for t in a.tensors] == [(t.name, t.qtype, t.shape) for t in b.tensors]
        changed = 0
        for t in a.tensors:
            x, y = t.dequantize(), b.tensor(t.name).dequantize()
            ulp = np.spacing(np.abs(y).astype(np.float16)).astype(np.float32)
            assert np.all(np.abs(x - y) <= ulp), t.name  # equal, or one F16 step apart (float32 sums in another order)
            changed += not np.array_equal(x, p.tensor(t.name).dequantize())
        assert changed == 7  # q, k, v, o, gate, up, down of the one layer


# --- split files ---------------------------------------------------------------------------------

def _peer_split(model_dir, outtype, out, *options):
    run_peer("convert_hf_to_gguf.py", model_dir, "--outtype", outtype, "--outfile", out, *options)
    return sorted(out.parent.glob(out.stem + "-*-of-*.gguf"))


@pytest.fixture(scope="module")
def two_layer_model(tmp_path_factory, smollm2_hf_dir):
    config = {**LLAMA_CONFIG, "num_hidden_layers": 2, "head_dim": 16}  # head_dim: the peer writes key_length either way
    return make_llama_folder(tmp_path_factory.mktemp("split"), smollm2_hf_dir, llama_weights(config), config)


@pytest.mark.parametrize("preset, option, value", [("F16", "--split-max-size", "20K"), ("Q8_0", "--split-max-size", "9K"),
                                                   ("F16", "--split-max-tensors", "4")])
def test_split_equals_peer_shard_by_shard(tmp_path, two_layer_model, preset, option, value):
    (tmp_path / "peer").mkdir()
    peer = _peer_split(two_layer_model, preset.lower(), tmp_path / "peer" / "model.gguf", option, value)
    result = run_cli("convert", two_layer_model, "-o", tmp_path / "model.gguf", "-t", preset, option, value)
    assert result.exit_code == 0, result.output
    ours = sorted(tmp_path.glob("model-*-of-*.gguf"))
    assert len(peer) >= 3 and [p.name for p in ours] == [p.name for p in peer]
    for a, b in zip(ours, peer):
        assert gguf_differences(a, b, whole_set=False) == [], a.name
    dry = run_cli("convert", two_layer_model, "-o", tmp_path / "model.gguf", "-t", preset, option, value, "--dry-run")
    shard_lines = [line.split(":")[0:2] for line in dry.output.splitlines() if "-of-" in line]
    expected = []
    for b in peer:
        with read_gguf(b, whole_set=False) as f:
            expected.append([b.name, f" {len(f.tensors)} tensors, {sum(t.nbytes for t in f.tensors) / 1e6:.1f} MB"])
    assert shard_lines == expected  # --dry-run says how the tensors will be split
    with read_gguf(ours[0]) as whole, read_gguf(quantkit_convert(two_layer_model, preset)) as single:
        assert [t.name for t in whole.tensors] == [t.name for t in single.tensors]
        assert all(np.array_equal(t.data, single.tensor(t.name).data) for t in whole.tensors)


def test_quantize_reads_and_writes_split_sets(tmp_path, two_layer_model):
    source = tmp_path / "f16.gguf"
    assert run_cli("convert", two_layer_model, "-o", source, "--split-max-tensors", "5").exit_code == 0
    first = tmp_path / "f16-00001-of-00004.gguf"
    assert run_cli("quantize", first, tmp_path / "q.gguf", "Q4_K_M").exit_code == 0
    assert run_cli("quantize", first, tmp_path / "qs.gguf", "Q4_K_M", "--split-max-size", "1M").exit_code == 0
    shards = sorted(tmp_path.glob("qs-*-of-*.gguf"))
    assert len(shards) == 3
    with read_gguf(tmp_path / "q.gguf") as single, read_gguf(shards[0]) as split:
        assert not any(k.startswith("split.") for k in single.metadata)
        assert split.metadata["split.count"] == 3 and split.metadata["split.tensors.count"] == len(single.tensors)
        assert [(t.name, bytes(t.data)) for t in split.tensors] == [(t.name, bytes(t.data)) for t in single.tensors]
    result = run_cli("inspect", shards[1])
    assert result.exit_code == 2 and f"shard 2 of 3 of a split model; open {shards[0].name}" in result.output
    shards[1].unlink()
    result = run_cli("inspect", shards[0])
    assert result.output.strip() == f"quantkit: error: {shards[1]}: shard 2 of 3 of {shards[0].name} is missing"


def test_llama_cpp_runs_split_set(tmp_path, smollm2_hf_dir):
    """llama.cpp loads the first shard of a quantkit split set and generates the unsplit file's tokens."""
    result = run_cli("convert", smollm2_hf_dir, "-o", tmp_path / "model.gguf", "-t", "Q8_0", "--split-max-size", "50M")
    assert result.exit_code == 0, result.output
    shards = sorted(tmp_path.glob("model-*-of-*.gguf"))
    assert len(shards) == 3
    prompt = "The three primary colors are"
    with LlamaServer(quantkit_convert(smollm2_hf_dir, "Q8_0")) as server:
        expected = server.greedy(prompt, 12)
    with LlamaServer(shards[0]) as server:
        assert server.greedy(prompt, 12) == expected


# --- scorecard --lora ----------------------------------------------------------------------------

def test_scorecard_scores_the_merged_model(tmp_path, smollm2_hf_dir):
    """With --lora both the 16-bit baseline (torch) and the F16 variant (converted) are the merged model: F16
    then scores as the baseline (KLD ~ 0), and its file is the merged conversion."""
    from quantkit.eval import Settings, scorecard

    base = make_llama_folder(tmp_path, smollm2_hf_dir)
    adapter = make_lora_adapter(tmp_path / "adapter", base, rank=8, alpha=16)
    prompts = tmp_path / "prompts.txt"
    prompts.write_text("Name a colour.\nCount to three.\n")
    settings = Settings(max_new_tokens=8, text_tokens=64)
    result = scorecard(base, ["F16"], tmp_path / "report", prompts=prompts, settings=settings, progress=False,
                       threads=1, lora=[adapter])
    f16 = result["types"][0]
    assert f16["text"]["kld"]["mean"] < 1e-4 and f16["teacher_forced"]["top1"]["mean"] == 1.0
    assert result["settings"]["lora"] == [str(adapter)]
    variant = next((tmp_path / "report" / "files").glob("model.lora-*.F16.*.gguf"))
    merged = tmp_path / "merged.gguf"
    assert run_cli("convert", base, "--lora", adapter, "-o", merged).exit_code == 0
    assert gguf_differences(variant, merged) == []
    plain = scorecard(base, ["F16"], tmp_path / "plain", prompts=prompts, settings=settings, progress=False, threads=1)
    assert plain["baseline"] != result["baseline"]  # the adapter changes what the baseline answers and scores


def test_split_sizes_and_all_or_nothing(tmp_path, two_layer_model):
    from gguf import GGMLQuantizationType

    from quantkit.ggufio import TensorInfo, open_gguf_writer, parse_split_size

    assert [parse_split_size(s) for s in ("1500", "2K", "100M", "3G")] == [1500, 2000, 100_000_000, 3_000_000_000]
    result = run_cli("convert", two_layer_model, "-o", tmp_path / "m.gguf", "--split-max-size", "10X")
    assert result.exit_code == 2
    assert result.output == "quantkit: error: --split-max-size '10X': expected a positive number of bytes, optionally with K, M or G\n"
    infos = [TensorInfo(f"t{i}", GGMLQuantizationType.F32, (8,)) for i in range(3)]
    with pytest.raises(RuntimeError), open_gguf_writer(tmp_path / "x.gguf", {}, infos, split_max_tensors=1) as writer:
        writer.write("t0", np.zeros(8, np.float32))
        writer.write("t1", np.zeros(8, np.float32))
        raise RuntimeError("stop")
    assert list(tmp_path.iterdir()) == []  # no shard, no temporary file
    (tmp_path / "x-00002-of-00003.gguf").write_bytes(b"old")
    result = run_cli("convert", two_layer_model, "-o", tmp_path / "x.gguf", "--split-max-tensors", "9")
    assert result.exit_code == 2 and "x-00002-of-00003.gguf: exists" in result.output
    assert sorted(p.name for p in tmp_path.iterdir()) == ["x-00002-of-00003.gguf"]
    with open_gguf_writer(tmp_path / "one.gguf", {}, infos, split_max_size=10**6) as writer:  # one shard: a plain file
        for info in infos:
            writer.write(info.name, np.ones(8, np.float32))
    with read_gguf(tmp_path / "one.gguf") as f:
        assert "split.count" not in f.metadata and len(f.tensors) == 3


def test_rslora_alpha_gives_llama_cpp_the_trained_scale(tmp_path, smollm2_hf_dir):
    """rsLoRA scales by alpha / sqrt(r); llama.cpp by alpha / r: the file holds alpha * sqrt(r) (r 4, alpha 8 -> 16)."""
    base = make_llama_folder(tmp_path, smollm2_hf_dir)
    adapter = make_lora_adapter(tmp_path / "adapter", base, rank=4, alpha=8, config_extra={"use_rslora": True})
    out = tmp_path / "adapter.gguf"
    assert run_cli("lora", adapter, "--base", base, "-o", out).exit_code == 0
    with read_gguf(out) as f:
        assert f.metadata["adapter.lora.alpha"] == 16.0
