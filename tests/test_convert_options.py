"""``quantkit convert`` options on a hand-made 1-layer Llama: --imatrix, --tensor-type, --dry-run.

Must show: with --imatrix every quantized tensor equals llama.cpp's C quantizer (ggml_quantize_chunk)
given that tensor's importance weights and the converted float32 values; --tensor-type overrides
the preset's type for matching tensors; --dry-run prints the plan and writes nothing.
"""

import os

import numpy as np
import pytest
from click.testing import CliRunner

import llamacpp_ref
from quantkit import read_gguf
from quantkit.cli import main
from test_convert_support import make_llama_folder

os.environ.setdefault("HF_HUB_OFFLINE", "1")


@pytest.fixture(scope="module")
def folder(tmp_path_factory, smollm2_hf_dir):
    return make_llama_folder(tmp_path_factory.mktemp("options"), smollm2_hf_dir)


def convert(folder, out, *options):
    result = CliRunner().invoke(main, ["convert", str(folder), "-o", str(out), *options])
    assert result.exit_code == 0, result.output
    return out


def test_imatrix_weights_each_tensor_as_llama_cpp(folder, tmp_path):
    from quantkit.imatrix import Imatrix, ImatrixEntry, write_imatrix

    reference = convert(folder, tmp_path / "f32.gguf", "--type", "F32")
    rng = np.random.default_rng(1)
    with read_gguf(reference) as f:
        matrices = {t.name: t.dequantize() for t in f.tensors if len(t.shape) == 2}
    entries = {name: ImatrixEntry(rng.uniform(0.1, 5, (1, w.shape[1])).astype(np.float32) * 10, np.array([10]))
               for name, w in matrices.items()}
    write_imatrix(tmp_path / "im.gguf", Imatrix(entries, ["synthetic"], 1, 16))
    out = convert(folder, tmp_path / "q4_0.gguf", "--type", "Q4_0", "--imatrix", str(tmp_path / "im.gguf"))
    plain = convert(folder, tmp_path / "q4_0-plain.gguf", "--type", "Q4_0")
    with read_gguf(out) as f, read_gguf(plain) as g:
        checked = differs = 0
        for t in f.tensors:
            if t.qtype.name != "Q4_0":
                continue
            weights = entries[t.name].mean()
            assert np.array_equal(t.data, llamacpp_ref.quantize(matrices[t.name], "Q4_0", weights)), t.name
            checked += 1
            differs += not np.array_equal(t.data, g.tensor(t.name).data)
    assert checked >= 7 and differs == checked


def test_tensor_type_override(folder, tmp_path):
    out = convert(folder, tmp_path / "mixed.gguf", "--type", "F16", "--tensor-type", r"attn_(k|v)\.=Q8_0")
    with read_gguf(out) as f:
        types = {t.name: t.qtype.name for t in f.tensors}
    assert types["blk.0.attn_k.weight"] == types["blk.0.attn_v.weight"] == "Q8_0"
    assert types["blk.0.attn_q.weight"] == types["token_embd.weight"] == "F16"
    assert types["blk.0.attn_norm.weight"] == "F32"


def test_dry_run_writes_nothing(folder, tmp_path):
    result = CliRunner().invoke(main, ["convert", str(folder), "-o", str(tmp_path / "x.gguf"), "--type", "Q8_0",
                                       "--dry-run"])
    assert result.exit_code == 0, result.output
    lines = result.stdout.splitlines()
    assert lines[0].split() == ["tensor", "shape", "type", "MB"]
    assert any(line.split()[:3] == ["blk.0.attn_q.weight", "64", "x"] and line.split()[4] == "Q8_0" for line in lines)
    assert "expected file size" in lines[-1]
    assert list(tmp_path.iterdir()) == []
