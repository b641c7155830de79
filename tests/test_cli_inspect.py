"""``quantkit inspect`` on the real SmolLM2 GGUF, its JSON form, and one-line errors with exit 2."""

import json
import subprocess
import sys

import click
import pytest
from click.testing import CliRunner

from quantkit.cli import main
from quantkit.errors import OutputError
from test_gguf_writer import write_small_gguf


@pytest.fixture(scope="module")
def inspect_text(smollm2_path):
    result = CliRunner().invoke(main, ["inspect", str(smollm2_path)])
    assert result.exit_code == 0, result.output
    return result.stdout


def test_inspect_shows_metadata_tensors_and_totals(inspect_text):
    lines = inspect_text.splitlines()
    assert "GGUF v3" in lines[0] and "98,362,432 bytes" in lines[0]
    assert "metadata (33 keys):" in lines
    assert '  general.architecture [STRING] = "llama"' in lines
    assert "  llama.block_count [UINT32] = 30" in lines
    assert "tensors (272):" in lines
    emb = next(line for line in lines if line.strip().startswith("token_embd.weight"))
    assert emb.split() == ["token_embd.weight", "49152", "x", "576", "Q8_0", "30,081,024", "8.50"]
    down = next(line for line in lines if line.strip().startswith("blk.0.ffn_down.weight"))
    assert down.split() == ["blk.0.ffn_down.weight", "576", "x", "1536", "Q4_1", "552,960", "5.00"]
    assert "totals: 272 tensors, 134,515,008 weights, 96,576,768 bytes, 5.74 bits per weight" in lines
    assert "types: Q4_1 210, F32 61, Q8_0 1" in lines


def test_inspect_summarises_long_values(inspect_text):
    tokens = next(line for line in inspect_text.splitlines() if "tokenizer.ggml.tokens" in line)
    assert tokens.startswith('  tokenizer.ggml.tokens [ARRAY[STRING]] = [49152 strings: "<|endoftext|>", "<|im_start|>",')
    assert tokens.endswith(", ... ]") and len(tokens) < 300
    template = next(line for line in inspect_text.splitlines() if "tokenizer.chat_template" in line)
    assert template.endswith('..." (368 chars)')
    assert len(inspect_text) < 40_000  # 272 tensor rows; no 49152-token dump


def test_inspect_json(smollm2_path):
    result = CliRunner().invoke(main, ["inspect", "--json", str(smollm2_path)])
    assert result.exit_code == 0
    info = json.loads(result.stdout)
    assert info["version"] == 3 and info["alignment"] == 32
    assert len(info["tensors"]) == 272
    assert info["totals"] == {
        "tensors": 272, "bytes": 96576768, "elements": 134515008, "bits_per_weight": 5.7437,
        "types": {"Q4_1": 210, "F32": 61, "Q8_0": 1},
    }
    assert info["tensors"][0] == {
        "name": "token_embd.weight", "shape": [49152, 576], "type": "Q8_0", "bytes": 30081024,
        "offset": 1785664, "bits_per_weight": 8.5,
    }
    tokens = info["metadata"]["tokenizer.ggml.tokens"]
    assert tokens["type"] == "ARRAY[STRING]" and tokens["length"] == 49152
    assert tokens["head"][:2] == ["<|endoftext|>", "<|im_start|>"] and "value" not in tokens
    assert info["metadata"]["general.languages"] == {"type": "ARRAY[STRING]", "length": 1, "value": ["en"]}
    assert info["metadata"]["llama.context_length"] == {"type": "UINT32", "value": 8192}


def test_inspect_small_file(tmp_path):
    path = write_small_gguf(tmp_path / "small.gguf")
    result = CliRunner().invoke(main, ["inspect", str(path)])
    assert result.exit_code == 0
    assert "  test.count [UINT32] = 7" in result.stdout
    assert "totals: 2 tensors, 96 weights, 290 bytes, 24.17 bits per weight" in result.stdout


def run_cli(*args):
    return subprocess.run([sys.executable, "-m", "quantkit.cli", *args], capture_output=True, text=True)


@pytest.mark.parametrize("make, fragment", [
    (lambda d: d / "missing.gguf", "missing.gguf: no such file"),
    (lambda d: d, "is a directory"),
    (lambda d: (d / "text.gguf", (d / "text.gguf").write_text("hello"))[0], "not a GGUF file"),
    (lambda d: (d / "cut.gguf", (d / "cut.gguf").write_bytes(b"GGUF\x03\x00\x00\x00\x01"))[0], "truncated"),
])
def test_errors_are_one_line_with_exit_2(tmp_path, make, fragment):
    result = run_cli("inspect", str(make(tmp_path)))
    assert result.returncode == 2
    assert result.stdout == ""
    assert result.stderr.startswith("quantkit: error: ") and result.stderr.count("\n") == 1
    assert fragment in result.stderr and "Traceback" not in result.stderr


def test_group_turns_errors_of_any_command_into_one_line():
    @main.command("test-fail")
    def fail_command():
        raise OutputError("out.gguf: exists\nsecond line")

    try:
        result = CliRunner().invoke(main, ["test-fail"])
    finally:
        main.commands.pop("test-fail")
    assert result.exit_code == 2
    assert result.stderr == "quantkit: error: out.gguf: exists\n"


def test_cli_start_up_imports_neither_numba_nor_torch():
    code = "import sys, quantkit.cli; print(sorted(m for m in ('numba', 'torch') if m in sys.modules))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"


def test_main_is_a_click_group():
    assert isinstance(main, click.Group) and "inspect" in main.list_commands(None)
