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
    from quantkit.plan.imatrix_file import Imatrix, ImatrixEntry, write_imatrix

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


TENSOR_TYPE_SPECS = [  # (spec, type blk.0.attn_v.weight gets, or None when the spec is refused)
    ("attn_v=Q8_0", "Q8_0"),
    ("ATTN_V=q4_0", "Q4_0"),  # regex lower-cased as llama-quantize does, type name in any case
    (r"blk\.0\.attn_(k|v)=Q5_1", "Q5_1"),
    ("attn_v=Q6_K", "Q8_0"),  # 64-wide rows do not take Q6_K: llama.cpp's fallback
    ("(?=attn_v)=IQ4_NL", "IQ4_NL"),  # '=' inside the regex: the type follows the last '='
    ("ffn_down=Q8_0", "Q4_0"),  # matches no attn_v: the preset's type
    ("attn_v", None),  # no '='
    ("=Q8_0", None),  # no regex
    ("attn_v=", None),  # no type
    ("attn_v=Q9_9", None),  # unknown type
    ("attn_v=I8", None),  # a GGUF type quantkit does not write
    ("attn_v([=Q8_0", None),  # bad regex
]


@pytest.mark.parametrize("spec,expected", TENSOR_TYPE_SPECS)
def test_convert_and_quantize_take_the_same_tensor_type_specs(folder, tmp_path, spec, expected):
    """One --tensor-type grammar: convert and quantize (both with preset Q4_0) accept, refuse and apply
    each spec alike."""
    source = tmp_path / "f16.gguf"
    convert(folder, source, "--type", "F16")
    results = {
        "convert": CliRunner().invoke(main, ["convert", str(folder), "-o", str(tmp_path / "c.gguf"), "--type", "Q4_0",
                                             "--tensor-type", spec]),
        "quantize": CliRunner().invoke(main, ["quantize", str(source), str(tmp_path / "q.gguf"), "Q4_0",
                                              "--tensor-type", spec]),
    }
    for command, result in results.items():
        if expected is None:
            assert result.exit_code == 2 and result.output.startswith("quantkit: error: "), (command, result.output)
            assert len(result.output.strip().splitlines()) == 1
            continue
        assert result.exit_code == 0, (command, result.output)
        with read_gguf(tmp_path / f"{command[0]}.gguf") as f:
            assert f.tensor("blk.0.attn_v.weight").qtype.name == expected, command
