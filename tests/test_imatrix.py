"""Importance matrices: collection (SmolLM2, tiny dense and MoE models), llama.cpp's GGUF and legacy
files, their effect on quantized bytes (equal to llama.cpp's quantizer) and on reconstruction error."""

import ctypes
import shutil
import struct
import warnings

import numpy as np
import pytest
import torch
from click.testing import CliRunner

import llamacpp_ref as ref
from quantkit import quantize
from quantkit.cli import main
from quantkit.commands.imatrix import DEFAULT_CALIBRATION
from quantkit.errors import GGUFFormatError, ImatrixError, QuantkitError
from quantkit.jobs.imatrix import collect_imatrix
from quantkit.plan.imatrix_file import Imatrix, ImatrixEntry, check_coverage, read_imatrix, write_imatrix

CALIBRATION = DEFAULT_CALIBRATION.read_text(encoding="utf-8")
CTX = 128
CHUNKS = 4
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json")


@pytest.fixture(autouse=True)
def offline(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")


@pytest.fixture(scope="session")
def smollm2_imatrix(smollm2_hf_dir) -> Imatrix:
    """SmolLM2's imatrix over the first 4 chunks of 128 tokens of the default calibration text."""
    return collect_imatrix(smollm2_hf_dir, CALIBRATION, ctx=CTX, chunks=CHUNKS, progress=False, dataset="calibration.txt")


@pytest.fixture(scope="session")
def smollm2_heldout_imatrix(smollm2_hf_dir) -> Imatrix:
    """SmolLM2's imatrix over 4 chunks of 128 tokens from the second half of the text (none in common)."""
    return collect_imatrix(smollm2_hf_dir, CALIBRATION[len(CALIBRATION) // 2 :], ctx=CTX, chunks=CHUNKS, progress=False)


def _tiny_model(folder, smollm2_hf_dir, config):
    """Save a randomly initialised model of ``config`` with SmolLM2's tokenizer into ``folder``."""
    from transformers import AutoModelForCausalLM

    torch.manual_seed(0)
    AutoModelForCausalLM.from_config(config).save_pretrained(folder)
    for name in TOKENIZER_FILES:
        shutil.copy(smollm2_hf_dir / name, folder / name)
    return folder


@pytest.fixture(scope="session")
def tiny_llama_dir(tmp_path_factory, smollm2_hf_dir):
    """A 2-layer random Llama (hidden 64, untied lm_head) with SmolLM2's tokenizer."""
    from transformers import LlamaConfig

    config = LlamaConfig(vocab_size=49152, hidden_size=64, intermediate_size=96, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=2, tie_word_embeddings=False)
    return _tiny_model(tmp_path_factory.mktemp("tiny-llama"), smollm2_hf_dir, config)


@pytest.fixture(scope="session")
def tiny_moe_dir(tmp_path_factory, smollm2_hf_dir):
    """A 2-layer random Qwen3-MoE (4 experts, 2 per token) with SmolLM2's tokenizer."""
    from transformers import Qwen3MoeConfig

    config = Qwen3MoeConfig(vocab_size=49152, hidden_size=32, intermediate_size=64, moe_intermediate_size=48,
                            num_experts=4, num_experts_per_tok=2, num_hidden_layers=2, num_attention_heads=4,
                            num_key_value_heads=2, head_dim=8)
    return _tiny_model(tmp_path_factory.mktemp("tiny-moe"), smollm2_hf_dir, config)


def _token_chunks(model_dir, ctx, chunks):
    from transformers import AutoTokenizer

    ids = AutoTokenizer.from_pretrained(model_dir)(CALIBRATION, verbose=False)["input_ids"]
    return [ids[i * ctx : (i + 1) * ctx] for i in range(chunks)]


# --- collection -------------------------------------------------------------------------------


def test_smollm2_entries_names_and_counts(smollm2_imatrix):
    """Every decoder matrix of SmolLM2's 30 blocks, by its GGUF name, with 4 x 128 tokens each; no output."""
    kinds = ["attn_q", "attn_k", "attn_v", "attn_output", "ffn_gate", "ffn_up", "ffn_down"]
    assert sorted(smollm2_imatrix) == sorted(f"blk.{b}.{k}.weight" for b in range(30) for k in kinds)
    assert smollm2_imatrix["blk.0.attn_q.weight"].shape == (576,)
    assert smollm2_imatrix["blk.29.ffn_down.weight"].shape == (1536,)
    assert {smollm2_imatrix.token_count(n) for n in smollm2_imatrix} == {CHUNKS * CTX}
    assert (smollm2_imatrix.datasets, smollm2_imatrix.chunk_count, smollm2_imatrix.chunk_size) == (
        ["calibration.txt"], CHUNKS, CTX)
    # q, k and v read the same normed input; gate and up too
    np.testing.assert_array_equal(smollm2_imatrix["blk.7.attn_q.weight"], smollm2_imatrix["blk.7.attn_v.weight"])
    np.testing.assert_array_equal(smollm2_imatrix["blk.7.ffn_gate.weight"], smollm2_imatrix["blk.7.ffn_up.weight"])
    assert not np.array_equal(smollm2_imatrix["blk.7.attn_q.weight"], smollm2_imatrix["blk.7.ffn_up.weight"])


def test_sums_equal_the_inputs_of_each_linear(tiny_llama_dir):
    """Sums of x^2 per column equal those of the inputs a forward pre-hook sees, for every Linear."""
    from transformers import AutoModelForCausalLM

    im = collect_imatrix(tiny_llama_dir, CALIBRATION, ctx=64, chunks=3, progress=False)
    model = AutoModelForCausalLM.from_pretrained(tiny_llama_dir, dtype=torch.float32).eval()
    seen = {}
    layer = model.model.layers[1]
    modules = {"blk.1.attn_q.weight": layer.self_attn.q_proj, "blk.1.attn_output.weight": layer.self_attn.o_proj,
               "blk.1.ffn_up.weight": layer.mlp.up_proj, "blk.1.ffn_down.weight": layer.mlp.down_proj}

    def hook(name):
        def record(module, args):
            x = args[0].reshape(-1, args[0].shape[-1]).double()
            seen[name] = seen.get(name, 0) + (x * x).sum(0)
        return record

    for name, module in modules.items():
        module.register_forward_pre_hook(hook(name))
    with torch.no_grad():
        for chunk in _token_chunks(tiny_llama_dir, 64, 3):
            model(input_ids=torch.tensor([chunk]))
    for name in modules:
        np.testing.assert_allclose(im.entries[name].sums[0], seen[name].numpy(), rtol=1e-5)
        assert im.token_count(name) == 3 * 64
    assert "output.weight" not in im
    with_output = collect_imatrix(tiny_llama_dir, CALIBRATION, ctx=64, chunks=1, progress=False, process_output=True)
    assert with_output["output.weight"].shape == (64,) and with_output.token_count("output.weight") == 64


BATCH_RTOL = 1e-5  # float32 sums of the same squares in another order; measured worst 3.3e-7 on SmolLM2


def _assert_same_imatrix(a: Imatrix, b: Imatrix):
    assert sorted(a) == sorted(b)
    for name in a:
        np.testing.assert_array_equal(a.entries[name].counts, b.entries[name].counts)
        np.testing.assert_allclose(a.entries[name].sums, b.entries[name].sums, rtol=BATCH_RTOL)


def test_smollm2_batched_equals_one_chunk_at_a_time(smollm2_imatrix, smollm2_hf_dir):
    """The fixture's 4 chunks went through the model as one batch; one chunk per pass gives the same sums."""
    alone = collect_imatrix(smollm2_hf_dir, CALIBRATION, ctx=CTX, chunks=CHUNKS, progress=False,
                            dataset="calibration.txt", batch_tokens=CTX)
    _assert_same_imatrix(smollm2_imatrix, alone)


@pytest.mark.parametrize("model", ["tiny_llama_dir", "tiny_moe_dir"])
def test_tiny_batched_equals_one_chunk_at_a_time(model, request):
    """3 chunks: batches of 2 and 1 against 3 single passes; MoE expert rows and counts included."""
    folder = request.getfixturevalue(model)
    batched = collect_imatrix(folder, CALIBRATION, ctx=64, chunks=3, progress=False, batch_tokens=128)
    alone = collect_imatrix(folder, CALIBRATION, ctx=64, chunks=3, progress=False, batch_tokens=64)
    _assert_same_imatrix(batched, alone)


def test_moe_experts_get_their_own_rows(tiny_moe_dir):
    """Expert stacks: (n_expert, n_cols) sums, per-expert token counts adding up to tokens x top-k."""
    from transformers import AutoModelForCausalLM

    im = collect_imatrix(tiny_moe_dir, CALIBRATION, ctx=64, chunks=2, progress=False)
    tokens = 2 * 64
    kinds = ["attn_q", "attn_k", "attn_v", "attn_output", "ffn_gate_inp", "ffn_gate_exps", "ffn_up_exps", "ffn_down_exps"]
    assert sorted(im) == sorted(f"blk.{b}.{k}.weight" for b in range(2) for k in kinds)
    for b in range(2):
        gate, up, down = (im.entries[f"blk.{b}.ffn_{k}_exps.weight"] for k in ("gate", "up", "down"))
        assert gate.sums.shape == (4, 32) and down.sums.shape == (4, 48)
        assert gate.counts.sum() == tokens * 2 and np.array_equal(gate.counts, down.counts)
        np.testing.assert_array_equal(gate.sums, up.sums)
        assert im[f"blk.{b}.ffn_down_exps.weight"].shape == (4, 48)
        for k in ("ffn_gate_inp", "attn_q", "attn_output"):
            assert im.token_count(f"blk.{b}.{k}.weight") == tokens

    # the experts' input is the routed hidden states: recompute gate sums from the router's choice
    model = AutoModelForCausalLM.from_pretrained(tiny_moe_dir, dtype=torch.float32).eval()
    experts = model.model.layers[0].mlp.experts
    expected = torch.zeros(4, 32, dtype=torch.float64)

    def record(module, args, kwargs):
        hidden, top_k_index = args[0], args[1]
        for e in range(4):
            x = hidden[(top_k_index == e).any(dim=-1)].double()
            expected[e] += (x * x).sum(0)

    experts.register_forward_pre_hook(record, with_kwargs=True)
    with torch.no_grad():
        for chunk in _token_chunks(tiny_moe_dir, 64, 2):
            model(input_ids=torch.tensor([chunk]))
    np.testing.assert_allclose(im.entries["blk.0.ffn_gate_exps.weight"].sums, expected.numpy(), rtol=1e-5)


def test_collection_restores_transformers_logging(tiny_llama_dir):
    from transformers.utils import logging as hf_logging

    hf_logging.set_verbosity_info()
    hf_logging.enable_progress_bar()
    try:
        collect_imatrix(tiny_llama_dir, CALIBRATION[:5000], ctx=32, chunks=1, device="cpu", progress=False)
        assert (hf_logging.get_verbosity(), hf_logging.is_progress_bar_enabled()) == (hf_logging.INFO, True)
    finally:
        hf_logging.set_verbosity_warning()


def test_text_shorter_than_one_chunk(tiny_llama_dir):
    with pytest.raises(ImatrixError, match=r"the calibration text has 8 tokens, fewer than one chunk of 64"):
        collect_imatrix(tiny_llama_dir, "A short sentence of eight tokens here.", ctx=64, progress=False)


# --- files ------------------------------------------------------------------------------------


def test_gguf_round_trip(tmp_path, smollm2_imatrix):
    path = write_imatrix(tmp_path / "imatrix.gguf", smollm2_imatrix)
    back = read_imatrix(path)
    assert list(back) == sorted(smollm2_imatrix)
    for name, entry in smollm2_imatrix.entries.items():
        np.testing.assert_array_equal(back.entries[name].sums, entry.sums)
        np.testing.assert_array_equal(back.entries[name].counts, entry.counts)
        np.testing.assert_array_equal(back[name], smollm2_imatrix[name])
    assert (back.datasets, back.chunk_count, back.chunk_size) == (["calibration.txt"], CHUNKS, CTX)
    with pytest.raises(QuantkitError, match="exists"):
        write_imatrix(path, smollm2_imatrix)


def test_gguf_layout_as_llamacpp_reads_it(tmp_path, smollm2_imatrix):
    """gguf-py sees what common_imatrix_load needs: the keys and, per matrix, F32 in_sum2 and counts."""
    from gguf import GGMLQuantizationType, GGUFReader, GGUFValueType

    reader = GGUFReader(str(write_imatrix(tmp_path / "imatrix.gguf", smollm2_imatrix)))
    fields = reader.fields
    assert fields["general.type"].contents() == "imatrix"
    assert fields["imatrix.datasets"].contents() == ["calibration.txt"]
    assert fields["imatrix.chunk_count"].types == [GGUFValueType.UINT32]
    assert (fields["imatrix.chunk_count"].contents(), fields["imatrix.chunk_size"].contents()) == (CHUNKS, CTX)
    names = [t.name for t in reader.tensors]
    assert names == [f"{n}{s}" for n in sorted(smollm2_imatrix) for s in (".in_sum2", ".counts")]
    tensors = {t.name: t for t in reader.tensors}
    sums, counts = tensors["blk.3.ffn_down.weight.in_sum2"], tensors["blk.3.ffn_down.weight.counts"]
    assert sums.tensor_type == counts.tensor_type == GGMLQuantizationType.F32
    assert sums.shape.tolist() == [1536, 1] and counts.shape.tolist() == [1, 1]
    assert counts.data.reshape(-1).tolist() == [CHUNKS * CTX]
    np.testing.assert_array_equal(sums.data.reshape(-1), smollm2_imatrix.entries["blk.3.ffn_down.weight"].sums[0])


def write_legacy_dat(path, imatrix: Imatrix, chunk_size: int, n_experts=None):
    """llama-imatrix --output-format dat (save_imatrix_legacy): values (sum / count) * ncall with
    ncall = ceil(count / chunk_size), then the chunk count and the dataset name."""
    n_experts = n_experts or {}
    out = [struct.pack("<i", len(imatrix))]
    for name in sorted(imatrix):
        entry = imatrix.entries[name]
        ncall = -(-int(entry.counts.max()) // chunk_size)
        values = (entry.sums / entry.counts.astype(np.float32)[:, None]) * np.float32(ncall)
        out.append(struct.pack("<i", len(name)) + name.encode() + struct.pack("<ii", ncall, values.size))
        out.append(values.astype("<f4").tobytes())
    dataset = imatrix.datasets[-1].encode()
    out.append(struct.pack("<ii", imatrix.chunk_count, len(dataset)) + dataset)
    path.write_bytes(b"".join(out))
    return path


def test_legacy_dat_gives_the_same_means(tmp_path, smollm2_imatrix):
    legacy = read_imatrix(write_legacy_dat(tmp_path / "imatrix.dat", smollm2_imatrix, CTX))
    assert sorted(legacy) == sorted(smollm2_imatrix)
    assert (legacy.datasets, legacy.chunk_count) == (["calibration.txt"], CHUNKS)
    for name in smollm2_imatrix:
        assert legacy.entries[name].counts.tolist() == [CHUNKS]
        np.testing.assert_allclose(legacy[name], smollm2_imatrix[name], rtol=2e-7)


def test_legacy_moe_entry_takes_the_tensor_shape(tmp_path):
    sums = np.arange(1, 13, dtype=np.float32).reshape(3, 4)
    im = Imatrix({"blk.0.ffn_up_exps.weight": ImatrixEntry(sums, np.array([2, 4, 8]))}, ["d.txt"], 1, 8)
    legacy = read_imatrix(write_legacy_dat(tmp_path / "moe.dat", im, 8))
    assert legacy["blk.0.ffn_up_exps.weight"].shape == (12,)
    weights = legacy.weights_for("blk.0.ffn_up_exps.weight", (3, 5, 4))
    np.testing.assert_allclose(weights, sums / np.array([[2], [4], [8]], dtype=np.float32), rtol=1e-6)


def test_unreached_expert_weighs_one(tmp_path):
    entry = ImatrixEntry(np.array([[4, 8], [0, 0]], dtype=np.float32), np.array([2, 0]))
    im = read_imatrix(write_imatrix(tmp_path / "i.gguf", Imatrix({"blk.0.ffn_up_exps.weight": entry}, [], 1, 2)))
    np.testing.assert_array_equal(im["blk.0.ffn_up_exps.weight"], [[2, 4], [1, 1]])


def test_bad_files(tmp_path, smollm2_imatrix, smollm2_path):
    good = write_imatrix(tmp_path / "good.gguf", smollm2_imatrix).read_bytes()
    (tmp_path / "cut.gguf").write_bytes(good[: len(good) // 2])
    with pytest.raises(GGUFFormatError, match=r"cut\.gguf"):
        read_imatrix(tmp_path / "cut.gguf")
    legacy = write_legacy_dat(tmp_path / "l.dat", smollm2_imatrix, CTX).read_bytes()
    (tmp_path / "cut.dat").write_bytes(legacy[:5000])
    with pytest.raises(ImatrixError, match=r"cut\.dat: truncated or not an imatrix: .* needs \d+ bytes at offset \d+, the file has 5000"):
        read_imatrix(tmp_path / "cut.dat")
    (tmp_path / "text.dat").write_bytes(b"\x00\x00\x00\x00hello")
    with pytest.raises(ImatrixError, match=r"text\.dat: not an imatrix"):
        read_imatrix(tmp_path / "text.dat")
    with pytest.raises(ImatrixError, match=r"not an imatrix: no \.in_sum2/\.counts tensors \(general\.type is 'model'\)"):
        read_imatrix(smollm2_path)
    with pytest.raises(QuantkitError, match="no such file"):
        read_imatrix(tmp_path / "missing.gguf")


def _gguf_file(path, tensors: dict, keys=True):
    """A GGUF written by gguf-py holding ``tensors`` (name -> array) and, with ``keys``, the imatrix keys."""
    from gguf import GGUFWriter

    writer = GGUFWriter(str(path), "llama")
    writer.add_string("general.type", "imatrix")
    if keys:
        writer.add_array("imatrix.datasets", ["d.txt"])
        writer.add_uint32("imatrix.chunk_count", 1)
        writer.add_uint32("imatrix.chunk_size", 4)
    for name, values in tensors.items():
        writer.add_tensor(name, values)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return path


def test_bad_gguf_imatrices(tmp_path):
    sums, counts = np.ones((1, 8), dtype=np.float32), np.full((1, 1), 4, dtype=np.float32)
    ok = read_imatrix(_gguf_file(tmp_path / "ok.gguf", {"a.weight.in_sum2": sums, "a.weight.counts": counts}))
    np.testing.assert_array_equal(ok["a.weight"], np.full(8, 0.25, dtype=np.float32))
    with pytest.raises(ImatrixError, match=r"half\.gguf: a\.weight has a\.weight\.in_sum2 but no a\.weight\.counts"):
        read_imatrix(_gguf_file(tmp_path / "half.gguf", {"a.weight.in_sum2": sums}))
    with pytest.raises(ImatrixError, match=r"f16\.gguf: tensor a\.weight\.in_sum2 is F16, an imatrix holds F32"):
        read_imatrix(_gguf_file(tmp_path / "f16.gguf", {"a.weight.in_sum2": sums.astype(np.float16), "a.weight.counts": counts}))
    with pytest.raises(ImatrixError, match=r"keys\.gguf: imatrix metadata missing: imatrix\.datasets, imatrix\.chunk_count"):
        read_imatrix(_gguf_file(tmp_path / "keys.gguf", {"a.weight.in_sum2": sums, "a.weight.counts": counts}, keys=False))
    with pytest.raises(ImatrixError, match=r"rows\.gguf: a\.weight has 2 matrices of sums but 1 counts"):
        read_imatrix(_gguf_file(tmp_path / "rows.gguf", {"a.weight.in_sum2": np.ones((2, 8), np.float32), "a.weight.counts": counts}))


def _imatrix_gguf(path, metadata: dict, sums, counts):
    """An imatrix GGUF holding one matrix ``a.weight`` and exactly ``metadata``."""
    from quantkit.ggufio import write_gguf
    from quantkit.plan.imatrix_file import _F32

    tensors = [_F32("a.weight.counts", np.asarray(counts, np.float32)), _F32("a.weight.in_sum2", np.asarray(sums, np.float32))]
    return write_gguf(path, {"general.type": "imatrix", **metadata}, tensors)


GOOD_KEYS = {"imatrix.datasets": ["d.txt"], "imatrix.chunk_count": 1, "imatrix.chunk_size": 4}


@pytest.mark.parametrize("key, value, shown", [
    ("imatrix.datasets", 7, "an integer"), ("imatrix.datasets", "d.txt", "a string"), ("imatrix.datasets", [1, 2], "an array"),
    ("imatrix.chunk_count", "many", "a string"), ("imatrix.chunk_count", 1.5, "a float"), ("imatrix.chunk_size", True, "a bool"),
    ("imatrix.chunk_size", ["4"], "an array"), ("imatrix.chunk_count", -3, "-3"),
])
def test_mistyped_imatrix_metadata_is_one_line(tmp_path, key, value, shown):
    path = _imatrix_gguf(tmp_path / "typed.gguf", {**GOOD_KEYS, key: value}, np.ones((1, 8)), [[4]])
    with pytest.raises(ImatrixError) as info:
        read_imatrix(path)
    message = str(info.value)
    assert message.startswith(f"{path}: {key} is {shown}, expected ") and "\n" not in message and len(message) <= 200


@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf, -1.0])
@pytest.mark.parametrize("where", ["sums", "counts"])
def test_nonfinite_imatrix_values_are_an_error(tmp_path, bad, where):
    sums, counts = np.ones((1, 8), np.float32), np.full((1, 1), 4, np.float32)
    (sums if where == "sums" else counts).reshape(-1)[-1] = bad
    path = _imatrix_gguf(tmp_path / "bad.gguf", GOOD_KEYS, sums, counts)
    suffix = ".in_sum2" if where == "sums" else ".counts"
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # an error, not a warning
        with pytest.raises(ImatrixError, match=rf"bad\.gguf: a\.weight\{suffix} holds {bad} at index"):
            read_imatrix(path)


@pytest.mark.parametrize("bad", [np.nan, np.inf])
def test_nonfinite_legacy_imatrix_values_are_an_error(tmp_path, bad):
    values = np.array([1, 2, bad, 4], dtype="<f4")
    path = tmp_path / "bad.dat"
    path.write_bytes(struct.pack("<ii", 1, 8) + b"a.weight" + struct.pack("<ii", 1, 4) + values.tobytes())
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        with pytest.raises(ImatrixError, match=rf"bad\.dat: a\.weight holds {bad} at index 2"):
            read_imatrix(path)


def test_bad_imatrix_on_the_command_line_is_one_line(tmp_path, smollm2_path):
    path = _imatrix_gguf(tmp_path / "typed.gguf", {**GOOD_KEYS, "imatrix.chunk_count": "x"}, np.ones((1, 8)), [[4]])
    result = CliRunner().invoke(main, ["quantize", str(smollm2_path), str(tmp_path / "o.gguf"), "Q4_K_M", "--imatrix", str(path)])
    assert result.exit_code == 2
    assert result.output == f"quantkit: error: {path}: imatrix.chunk_count is a string, expected a non-negative integer\n"
    assert not (tmp_path / "o.gguf").exists()


# --- use by the quantizers --------------------------------------------------------------------


def test_coverage_and_shape_checks(smollm2_imatrix):
    names = ["blk.0.attn_q.weight", "token_embd.weight", "output.weight"]
    with pytest.warns(UserWarning, match=r"no entry for 2 tensor\(s\).*: token_embd\.weight, output\.weight"):
        assert check_coverage(smollm2_imatrix, names, set()) == ["token_embd.weight", "output.weight"]
    with pytest.raises(ImatrixError, match=r"no entry for 1 tensor\(s\) whose type needs an importance matrix: output\.weight"):
        check_coverage(smollm2_imatrix, names, {"output.weight", "blk.0.attn_q.weight"})
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert check_coverage(smollm2_imatrix, ["blk.0.attn_q.weight"], {"blk.0.attn_q.weight"}) == []
    assert smollm2_imatrix.weights_for("blk.2.ffn_down.weight", (576, 1536)).shape == (1536,)
    with pytest.raises(ImatrixError, match=r"blk\.2\.ffn_down\.weight: the model's tensor has 2048 columns, the imatrix 1536 \(an imatrix made for another model\?\)"):
        smollm2_imatrix.weights_for("blk.2.ffn_down.weight", (576, 2048))


def test_quantize_metadata_as_llama_quantize_writes_it(tmp_path, smollm2_imatrix):
    from gguf import GGUFValueType

    path = write_imatrix(tmp_path / "imatrix.gguf", smollm2_imatrix)
    keys = read_imatrix(path).quantize_metadata(str(path))
    assert list(keys) == ["quantize.imatrix.file", "quantize.imatrix.dataset", "quantize.imatrix.entries_count",
                          "quantize.imatrix.chunks_count"]
    assert keys["quantize.imatrix.file"] == str(path)[:127]
    assert keys["quantize.imatrix.dataset"] == "calibration.txt"
    counts = keys["quantize.imatrix.entries_count"], keys["quantize.imatrix.chunks_count"]
    assert [(c.value, c.vtype) for c in counts] == [(210, GGUFValueType.UINT32), (CHUNKS, GGUFValueType.UINT32)]
    assert Imatrix({}, ["é" * 100]).quantize_metadata("x")["quantize.imatrix.dataset"] == "é" * 63


QUANT_CASES = [  # tensor, type, rows used
    ("blk.0.attn_q.weight", "Q4_0", 96),
    ("blk.4.ffn_down.weight", "Q4_K", 64),
    ("blk.9.ffn_down.weight", "IQ3_XXS", 64),
    ("blk.12.ffn_down.weight", "IQ2_XS", 32),
]


@pytest.mark.parametrize("name,qtype,rows", QUANT_CASES)
def test_imatrix_bytes_equal_llamacpp(smollm2_imatrix, smollm2_weights, name, qtype, rows):
    w = np.ascontiguousarray(smollm2_weights[name][:rows])
    weights = smollm2_imatrix.weights_for(name, smollm2_weights[name].shape)
    got = quantize(w, qtype, imatrix=weights).data
    np.testing.assert_array_equal(got, ref.quantize(w, qtype, weights))
    plain = ref.quantize(w, qtype, np.ones_like(weights) if ref.requires_imatrix(qtype) else None)
    assert not np.array_equal(got, plain)


def weighted_error(w, qtype, imatrix, heldout):
    """Sum over rows and columns of heldout[col] * (w - dequantize(quantize(w)))^2."""
    from quantkit import dequantize

    q = dequantize(quantize(w, qtype, imatrix=imatrix)).reshape(w.shape)
    return float((heldout[None, :].astype(np.float64) * (w.astype(np.float64) - q) ** 2).sum())


@pytest.mark.parametrize("qtype", ["Q2_K", "IQ3_XXS", "IQ2_XS"])
def test_imatrix_lowers_heldout_weighted_error(smollm2_imatrix, smollm2_heldout_imatrix, smollm2_weights, qtype):
    """On activations of other text, the imatrix-weighted quantization is closer (IQ2_XS: than all-ones)."""
    for name in ("blk.3.ffn_down.weight", "blk.15.ffn_down.weight", "blk.27.ffn_down.weight"):
        w = np.ascontiguousarray(smollm2_weights[name][:64])
        heldout = smollm2_heldout_imatrix[name]
        imatrix = smollm2_imatrix[name]
        baseline = np.ones_like(imatrix) if qtype == "IQ2_XS" else None
        assert weighted_error(w, qtype, imatrix, heldout) < weighted_error(w, qtype, baseline, heldout), name


def test_imatrix_lowers_heldout_kld(smollm2_imatrix, smollm2_hf_dir):
    """SmolLM2 with its 30 ffn_down in Q2_K: next-token KL divergence from the bf16 model on a
    held-out chunk is lower when the quantization used the imatrix."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from quantkit import dequantize
    from quantkit.eval.metrics import kld, log_softmax
    from quantkit.jobs.imatrix import tokenize_chunks

    model = AutoModelForCausalLM.from_pretrained(smollm2_hf_dir, dtype=torch.float32).eval()
    tokens = torch.tensor(tokenize_chunks(AutoTokenizer.from_pretrained(smollm2_hf_dir),
                                          CALIBRATION[len(CALIBRATION) // 2 :], CTX, 1))

    def logprobs():
        with torch.inference_mode():
            return log_softmax(model(input_ids=tokens).logits[0].numpy())

    base = logprobs()
    originals = {b: model.model.layers[b].mlp.down_proj.weight.detach().clone() for b in range(30)}
    divergence = {}
    for variant in ("without", "with"):
        for b, w in originals.items():
            imatrix = smollm2_imatrix[f"blk.{b}.ffn_down.weight"] if variant == "with" else None
            q = dequantize(quantize(w.numpy(), "Q2_K", imatrix=imatrix)).reshape(w.shape)
            model.model.layers[b].mlp.down_proj.weight.data.copy_(torch.from_numpy(q))
        divergence[variant] = float(kld(base, logprobs()).mean())
    print(f"SmolLM2, ffn_down in Q2_K, KLD on {CTX} held-out tokens: {divergence}")
    assert divergence["with"] < 0.5 * divergence["without"]


# --- command line -----------------------------------------------------------------------------


def test_cli(tmp_path, tiny_llama_dir):
    out = tmp_path / "im.gguf"
    text = tmp_path / "text.txt"
    text.write_text(CALIBRATION[:20000], encoding="utf-8")
    runner = CliRunner()
    result = runner.invoke(main, ["imatrix", str(tiny_llama_dir), "-f", str(text), "-o", str(out), "--ctx", "64", "--chunks", "2"])
    assert result.exit_code == 0, result.output
    assert f"{out}: 14 tensors, 2 chunks of 64 tokens from {text}" in result.output
    im = read_imatrix(out)
    assert (im.datasets, im.chunk_count, im.chunk_size, im.token_count("blk.1.ffn_down.weight")) == ([str(text)], 2, 64, 128)

    again = runner.invoke(main, ["imatrix", str(tiny_llama_dir), "-f", str(text), "-o", str(out)])
    assert again.exit_code == 2 and again.output.strip() == f"quantkit: error: {out}: exists (use --force to overwrite)"
    text.write_text("Too short.", encoding="utf-8")
    short = runner.invoke(main, ["imatrix", str(tiny_llama_dir), "-f", str(text), "-o", str(out), "--force"])
    assert short.exit_code == 2
    assert short.output.strip() == ("quantkit: error: the calibration text has 3 tokens, fewer than one chunk of 512 "
                                    "(use a longer text or a smaller --ctx)")


# --- against llama.cpp's activations ----------------------------------------------------------


class _GGMLTensor(ctypes.Structure):
    """struct ggml_tensor of ggml.h (llama.cpp as vendored by llama-cpp-python 0.3.36)."""

    _fields_ = [("type", ctypes.c_int), ("buffer", ctypes.c_void_p), ("ne", ctypes.c_int64 * 4),
                ("nb", ctypes.c_size_t * 4), ("op", ctypes.c_int), ("op_params", ctypes.c_int32 * 16),
                ("flags", ctypes.c_int32), ("src", ctypes.c_void_p * 10), ("view_src", ctypes.c_void_p),
                ("view_offs", ctypes.c_size_t), ("data", ctypes.c_void_p), ("name", ctypes.c_char * 64),
                ("extra", ctypes.c_void_p), ("padding", ctypes.c_char * 8)]


def llamacpp_imatrix(gguf_path, token_chunks):
    """Sums of x^2 and token counts of every ``blk.*`` MUL_MAT input while llama.cpp runs the GGUF
    over ``token_chunks`` (all logits, cache cleared per chunk): IMatrixCollector::collect_imatrix's
    dense path, through the eval callback of llama-cpp-python's llama.cpp (CPU)."""
    import os

    import llama_cpp

    ggml = ctypes.CDLL(os.path.join(os.path.dirname(llama_cpp.__file__), "lib", "libggml-base.so"))
    ggml.ggml_op_name.restype = ctypes.c_char_p
    ggml.ggml_op_name.argtypes = [ctypes.c_int]
    mul_mat = next(op for op in range(200) if ggml.ggml_op_name(op) == b"MUL_MAT")
    sums, counts = {}, {}

    def collect(address, ask, _user_data):
        t = _GGMLTensor.from_address(address)
        if t.op != mul_mat:
            return False
        weight, x = _GGMLTensor.from_address(t.src[0]), _GGMLTensor.from_address(t.src[1])
        name = weight.name.decode()
        if ask:
            return name.startswith("blk.") and x.ne[1] >= 16 and x.type == 0  # F32 input
        assert x.nb[0] == 4 and x.nb[1] == 4 * x.ne[0] and x.nb[2] == x.nb[1] * x.ne[1]
        n = x.ne[0] * x.ne[1] * x.ne[2] * x.ne[3]
        rows = np.ctypeslib.as_array((ctypes.c_float * n).from_address(x.data)).reshape(-1, x.ne[0]).astype(np.float64)
        sums[name] = sums.get(name, 0) + (rows * rows).sum(0)
        counts[name] = counts.get(name, 0) + rows.shape[0]
        return True

    callback = llama_cpp.ggml_backend_sched_eval_callback(collect)
    llama_cpp.llama_backend_init()
    model_params = llama_cpp.llama_model_default_params()
    model_params.use_extra_bufts = False  # ggml's AMX buffers crash this build's Q4_1 products on AMX CPUs
    model = llama_cpp.llama_model_load_from_file(str(gguf_path).encode(), model_params)
    params = llama_cpp.llama_context_default_params()
    n = len(token_chunks[0])
    params.n_ctx = params.n_batch = params.n_ubatch = n
    params.cb_eval = callback
    ctx = llama_cpp.llama_init_from_model(model, params)
    batch = llama_cpp.llama_batch_init(n, 0, 1)
    try:
        for chunk in token_chunks:
            llama_cpp.llama_memory_clear(llama_cpp.llama_get_memory(ctx), True)
            for i, token in enumerate(chunk):
                batch.token[i], batch.pos[i], batch.n_seq_id[i], batch.logits[i] = token, i, 1, 1
                batch.seq_id[i][0] = 0
            batch.n_tokens = n
            assert llama_cpp.llama_decode(ctx, batch) == 0
    finally:
        llama_cpp.llama_batch_free(batch)
        llama_cpp.llama_free(ctx)
        llama_cpp.llama_model_free(model)
    return sums, counts


def test_smollm2_imatrix_matches_llamacpp_activations(smollm2_imatrix, smollm2_hf_dir, smollm2_path):
    """llama.cpp running the same tokens through the GGUF multiplies the same tensors, as often,
    with inputs whose x^2 means agree with the Hugging Face model's (Q4_1 and bf16 weights differ
    slightly, and llama.cpp's dot products quantize activations to 8 bits)."""
    from transformers import AutoTokenizer

    from quantkit.jobs.imatrix import tokenize_chunks

    chunks = tokenize_chunks(AutoTokenizer.from_pretrained(smollm2_hf_dir), CALIBRATION, CTX, CHUNKS)
    sums, counts = llamacpp_imatrix(smollm2_path, chunks)
    assert sorted(sums) == sorted(smollm2_imatrix)
    worst = 0.0
    for name, total in sums.items():
        assert counts[name] == smollm2_imatrix.token_count(name) == CHUNKS * CTX
        theirs = total / counts[name]
        worst = max(worst, np.linalg.norm(smollm2_imatrix[name] - theirs) / np.linalg.norm(theirs))
    print(f"largest relative difference of a tensor's imatrix from llama.cpp's: {worst:.4f}")
    assert worst < 0.05


def test_lora_imatrix_is_the_merged_models(tmp_path, tiny_llama_dir):
    """imatrix --lora equals the imatrix of a folder holding the numpy-merged weights W + (alpha/r) B @ A."""
    from safetensors.numpy import load_file, save_file
    from test_convert_support import make_lora_adapter

    adapter = make_lora_adapter(tmp_path / "adapter", tiny_llama_dir, rank=4, alpha=8, scale=0.2)
    weights = load_file(str(tiny_llama_dir / "model.safetensors"))
    lora = load_file(str(adapter / "adapter_model.safetensors"))
    for name in [n for n in lora if n.endswith(".lora_A.weight")]:
        target = name.removeprefix("base_model.model.").replace(".lora_A.weight", ".weight")
        weights[target] = weights[target] + np.float32(8 / 4) * (lora[name.replace("lora_A", "lora_B")] @ lora[name])
    merged = tmp_path / "merged"
    shutil.copytree(tiny_llama_dir, merged)
    save_file(weights, str(merged / "model.safetensors"), metadata={"format": "pt"})
    runner = CliRunner()
    result = runner.invoke(main, ["imatrix", str(tiny_llama_dir), "--lora", str(adapter), "-o", str(tmp_path / "a.gguf"),
                                  "--ctx", "64", "--chunks", "2", "--device", "cpu"])
    assert result.exit_code == 0, result.output
    with_lora = read_imatrix(tmp_path / "a.gguf")
    expected = collect_imatrix(merged, CALIBRATION, ctx=64, chunks=2, progress=False, device="cpu")
    plain = collect_imatrix(tiny_llama_dir, CALIBRATION, ctx=64, chunks=2, progress=False, device="cpu")
    assert sorted(with_lora) == sorted(expected)
    for name in expected:
        np.testing.assert_allclose(with_lora[name], expected[name], rtol=1e-6)
    assert not np.allclose(with_lora["blk.1.attn_q.weight"], plain["blk.1.attn_q.weight"], rtol=1e-3)
