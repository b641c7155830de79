"""Bad input to ``quantkit convert``: one line naming the file and the problem, exit status 2, no
partial output (not even the temporary file), inputs untouched; the API raises QuantkitError."""

import json
import os
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

from quantkit.cli import main
from test_convert_support import HIDDEN, LLAMA_CONFIG, llama_weights
from test_convert_support import make_llama_folder as make_folder

os.environ.setdefault("HF_HUB_OFFLINE", "1")

def run(folder, out, *extra):
    result = CliRunner().invoke(main, ["convert", str(folder), "-o", str(out), "--type", "Q8_0", *extra])
    return result


def assert_one_line_error(result, *fragments):
    """Exit 2 and one error line (after the progress bar, if the failure came while writing)."""
    assert result.exit_code == 2, result.output
    assert "Traceback" not in result.stderr
    lines = result.stderr.strip().splitlines()
    assert lines[-1].startswith("quantkit: error: "), result.stderr
    assert not any(line.startswith("quantkit: error: ") for line in lines[:-1])
    for fragment in fragments:
        assert fragment in lines[-1], lines[-1]


def no_output_left(folder: Path) -> bool:
    return not [p for p in folder.iterdir() if p.suffix == ".gguf" or ".tmp-" in p.name]


@pytest.fixture
def folder(tmp_path, smollm2_hf_dir):
    return make_folder(tmp_path, smollm2_hf_dir)


def test_valid_folder_converts(folder, tmp_path):
    result = run(folder, tmp_path / "out.gguf")
    assert result.exit_code == 0, result.output
    from quantkit import read_gguf

    with read_gguf(tmp_path / "out.gguf") as f:
        assert f.tensor("blk.0.attn_q.weight").qtype.name == "Q8_0"
        assert "bits per weight" in result.stderr


def test_missing_config(folder, tmp_path):
    (folder / "config.json").unlink()
    assert_one_line_error(run(folder, tmp_path / "out.gguf"), str(folder), "no config.json")
    assert no_output_left(tmp_path)


def test_missing_tokenizer(folder, tmp_path):
    (folder / "tokenizer.json").unlink()
    assert_one_line_error(run(folder, tmp_path / "out.gguf"), str(folder), "no tokenizer")
    assert no_output_left(tmp_path)


def test_missing_tensor(tmp_path, smollm2_hf_dir):
    weights = llama_weights()
    del weights["model.layers.0.self_attn.v_proj.weight"]
    folder = make_folder(tmp_path, smollm2_hf_dir, weights)
    assert_one_line_error(run(folder, tmp_path / "out.gguf"), str(folder), "blk.0.attn_v.weight")
    assert no_output_left(tmp_path)


def test_missing_shard(folder, tmp_path):
    index = {"weight_map": {"model.norm.weight": "model-00002-of-00002.safetensors"}}
    (folder / "model.safetensors.index.json").write_text(json.dumps(index))
    assert_one_line_error(run(folder, tmp_path / "out.gguf"), "model-00002-of-00002.safetensors", "missing")


@pytest.mark.parametrize("name, shape, fragment", [
    ("model.layers.0.self_attn.k_proj.weight", (48, HIDDEN), "attn_k"),
    ("model.embed_tokens.weight", (1000, HIDDEN), "model.embed_tokens.weight"),
])
def test_shape_mismatch(tmp_path, smollm2_hf_dir, name, shape, fragment):
    weights = llama_weights()
    weights[name] = np.zeros(shape, dtype=np.float16)
    folder = make_folder(tmp_path, smollm2_hf_dir, weights)
    assert_one_line_error(run(folder, tmp_path / "out.gguf"), fragment, "config.json")
    assert no_output_left(tmp_path)


def test_unsupported_architecture(tmp_path, smollm2_hf_dir):
    folder = make_folder(tmp_path, smollm2_hf_dir, config={**LLAMA_CONFIG, "architectures": ["GPTNeoXForCausalLM"]})
    assert_one_line_error(run(folder, tmp_path / "out.gguf"), "GPTNeoXForCausalLM", "not supported",
                          "Llama, ", "Qwen3Moe, ", "ForCausalLM", "BertModel")


def test_pickle_checkpoint_refused(folder, tmp_path):
    (folder / "model.safetensors").rename(folder / "pytorch_model.bin")
    assert_one_line_error(run(folder, tmp_path / "out.gguf"), "pytorch_model.bin", "safetensors")


def test_existing_output_needs_force(folder, tmp_path):
    out = tmp_path / "out.gguf"
    out.write_bytes(b"keep me")
    assert_one_line_error(run(folder, out), str(out), "exists", "--force")
    assert out.read_bytes() == b"keep me"
    assert run(folder, out, "--force").exit_code == 0
    assert out.read_bytes()[:4] == b"GGUF"


def test_output_equal_to_an_input(folder):
    before = (folder / "model.safetensors").read_bytes()
    assert_one_line_error(run(folder, folder / "model.safetensors", "--force"), "also an input")
    assert (folder / "model.safetensors").read_bytes() == before


def test_nan_weight_leaves_nothing(tmp_path, smollm2_hf_dir):
    weights = llama_weights()
    weights["model.layers.0.mlp.down_proj.weight"][5, 7] = np.nan
    folder = make_folder(tmp_path, smollm2_hf_dir, weights)
    assert_one_line_error(run(folder, tmp_path / "out.gguf"), "blk.0.ffn_down.weight", "row 5", "column 7")
    assert no_output_left(tmp_path)


def test_unknown_preset_and_bad_override(folder, tmp_path):
    assert_one_line_error(run(folder, tmp_path / "a.gguf", "--type", "Q9_9"), "Q9_9")
    assert_one_line_error(run(folder, tmp_path / "a.gguf", "--tensor-type", "attn_v"), "REGEX=TYPE")


def test_api_raises_quantkit_error(folder, tmp_path):
    import quantkit

    (folder / "config.json").unlink()
    with pytest.raises(quantkit.QuantkitError, match="no config.json"):
        quantkit.convert(folder, tmp_path / "out.gguf", "F16", progress=False)


@pytest.mark.parametrize("command", ["convert", "quantize"])
def test_output_file_too_large_for_the_disk(tmp_path, smollm2_hf_dir, smollm2_path, command):
    """A write that fails part-way (here: a 20 MB file-size limit, as a full disk would) is one line,
    exit 2, and leaves no output or temporary file (the writes run on the write-behind thread)."""
    import subprocess
    import sys

    out = tmp_path / "out"
    out.mkdir()
    args = {
        "convert": ["convert", str(smollm2_hf_dir), "-o", str(out / "x.gguf"), "--type", "F16"],
        "quantize": ["quantize", str(smollm2_path), str(out / "x.gguf"), "Q8_0"],
    }[command]
    limit = (
        "import resource, signal, sys; signal.signal(signal.SIGXFSZ, signal.SIG_IGN); "
        "resource.setrlimit(resource.RLIMIT_FSIZE, (20 << 20, 20 << 20)); "
        "from quantkit.cli import main; sys.argv = ['quantkit'] + sys.argv[1:]; main()"
    )
    result = subprocess.run([sys.executable, "-c", limit, *args], capture_output=True, text=True)
    assert result.returncode == 2, result.stderr
    last = result.stderr.strip().splitlines()[-1]
    assert last.startswith("quantkit: error: ") and "File too large" in last and "x.gguf" in last, result.stderr
    assert "Traceback" not in result.stderr
    assert list(out.iterdir()) == []
