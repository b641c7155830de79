"""Requantizing the real SmolLM2 GGUF: llama.cpp's bytes, and llama.cpp runs the file we write."""

import subprocess
import sys

import numpy as np
import pytest

import llamacpp_ref as ref
from quantkit import read_gguf
from quantkit.plan.presets import tensor_sort_key
from quantkit.jobs.quantize import requantize


@pytest.fixture(scope="module")
def smollm2_q8_0(smollm2_path, tmp_path_factory):
    out = tmp_path_factory.mktemp("requant") / "smollm2.Q8_0.gguf"
    requantize(smollm2_path, out, "Q8_0", progress=False)
    return out


def test_requantized_tensors_equal_llamacpp(smollm2_path, smollm2_q8_0):
    with read_gguf(smollm2_path) as src, read_gguf(smollm2_q8_0) as out:
        # llama-quantize's order: tensors outside blocks, then block by block, each sorted by name
        assert [t.name for t in out.tensors] == sorted((t.name for t in src.tensors), key=tensor_sort_key)
        assert len(out.tensors) == 272
        requantized = 0
        for o in out.tensors:
            s = src.tensor(o.name)
            assert o.shape == s.shape
            if len(s.shape) == 1 or s.qtype == o.qtype:  # norms stay F32, the Q8_0 token_embd stays: untouched
                assert o.qtype == s.qtype and np.array_equal(o.data, s.data)
                continue
            assert o.qtype.name == "Q8_0"
            np.testing.assert_array_equal(o.data, ref.quantize(s.dequantize(), "Q8_0"), err_msg=s.name)
            requantized += 1
        assert requantized == 210
        assert out.metadata["general.file_type"] == 7  # LLAMA_FTYPE_MOSTLY_Q8_0
        for key, value in src.metadata.items():
            if key not in ("general.file_type", "general.quantization_version"):
                assert out.metadata[key] == value, key


GENERATE = r"""
import sys, xllamacpp as xl
p = xl.CommonParams()
p.model.path = sys.argv[1]
p.n_ctx = 256
p.cpuparams.n_threads = 2
server = xl.Server(p)
r = server.handle_chat_completions({"messages": [{"role": "user", "content": "What is the capital of France?"}],
                                    "max_tokens": 12, "temperature": 0})
print("ANSWER:" + r["choices"][0]["message"]["content"])
"""


def llamacpp_answer(path) -> str:
    """Greedy chat answer from llama.cpp (xllamacpp), in a child process so its logging stays out."""
    result = subprocess.run([sys.executable, "-c", GENERATE, str(path)], capture_output=True, text=True)
    lines = [line for line in result.stdout.splitlines() if line.startswith("ANSWER:")]
    assert result.returncode == 0 and lines, result.stderr[-2000:]
    return lines[0][len("ANSWER:"):]


def test_llamacpp_loads_and_generates_from_requantized_file(smollm2_path, smollm2_q8_0):
    ours = llamacpp_answer(smollm2_q8_0)
    source = llamacpp_answer(smollm2_path)
    assert len(ours.split()) >= 4, ours
    # Q8_0 of the Q4_1 weights is within 0.5% of them: the greedy answer starts the same way.
    assert ours.split()[:2] == source.split()[:2], (ours, source)


def test_cli_quantize_refuses_existing_output_and_bad_input(smollm2_q8_0, tmp_path):
    from click.testing import CliRunner

    from quantkit.cli import main

    runner = CliRunner()
    result = runner.invoke(main, ["quantize", str(smollm2_q8_0), str(smollm2_q8_0), "Q4_0"])
    assert result.exit_code == 2 and "Traceback" not in result.output
    bad = tmp_path / "bad.gguf"
    bad.write_bytes(b"GGUF" + b"\x03\x00\x00\x00" + b"\xff" * 8)
    result = runner.invoke(main, ["quantize", str(bad), str(tmp_path / "out.gguf"), "Q8_0"])
    assert result.exit_code == 2
    assert "bad.gguf" in result.output and "Traceback" not in result.output
    assert not (tmp_path / "out.gguf").exists()
    result = runner.invoke(main, ["quantize", str(smollm2_q8_0), str(tmp_path / "x.gguf"), "Q7_7"])
    assert result.exit_code == 2 and "unknown preset" in result.output
