"""Packaging: the light core works without the heavy extras, the public API type-checks, one version.

The core test runs in a subprocess in which torch, transformers, sentence-transformers, matplotlib,
accelerate and sentencepiece cannot be imported (``sys.modules[name] = None``), as in a fresh
``pip install quantkit``: quantize() and ``quantkit convert`` of SmolLM2's folder must work, and a
command needing the ``[eval]`` extra must say so in one line.
"""

import os
import subprocess
import sys
from importlib.metadata import version
from pathlib import Path

import numpy as np

import llamacpp_ref
import quantkit

HEAVY = ("torch", "transformers", "sentence_transformers", "matplotlib", "accelerate", "sentencepiece")
BLOCK = f"import sys\nfor name in {HEAVY!r}:\n    sys.modules[name] = None\n"
ROOT = Path(__file__).resolve().parent.parent


def run_core(code: str, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", BLOCK + code, *args], capture_output=True, text=True,
                          cwd=ROOT)


def test_core_quantizes_without_the_extras(tmp_path):
    x = np.random.default_rng(3).standard_normal((8, 256)).astype(np.float32)
    np.save(tmp_path / "x.npy", x)
    code = ("import numpy as np, quantkit\n"
            "q = quantkit.quantize(np.load(sys.argv[1]), 'Q4_K')\n"
            "open(sys.argv[2], 'wb').write(q.data.tobytes())\n"
            f"assert not any(sys.modules.get(n) for n in {HEAVY!r})\n")
    result = run_core(code, str(tmp_path / "x.npy"), str(tmp_path / "q.bin"))
    assert result.returncode == 0, result.stderr
    assert (tmp_path / "q.bin").read_bytes() == llamacpp_ref.quantize(x, "Q4_K").tobytes()


def test_core_converts_smollm2_without_the_extras(tmp_path, smollm2_hf_dir):
    out = tmp_path / "smollm2-q8_0.gguf"
    code = ("from quantkit.cli import main\n"
            "sys.argv = ['quantkit'] + sys.argv[1:]\n"
            "try:\n    main()\nexcept SystemExit as e:\n"
            f"    assert not any(sys.modules.get(n) for n in {HEAVY!r})\n    raise\n")
    result = run_core(code, "convert", str(smollm2_hf_dir), "-o", str(out), "--type", "Q8_0")
    assert result.returncode == 0, result.stderr
    with quantkit.read_gguf(out) as f:
        assert len(f.tensors) == 272 and f.metadata["tokenizer.ggml.pre"] == "smollm"


def test_a_command_needing_an_extra_names_it(tmp_path, smollm2_hf_dir):
    code = "from quantkit.cli import main\nsys.argv = ['quantkit'] + sys.argv[1:]\nmain()\n"
    result = run_core(code, "scorecard", str(smollm2_hf_dir), "-o", str(tmp_path / "report"))
    assert result.returncode == 2
    assert result.stderr.strip().splitlines() == [
        "quantkit: error: quantkit scorecard needs torch, transformers, accelerate, sentence_transformers, "
        "matplotlib: pip install 'quantkit[eval]'"]


def test_public_api_type_checks(tmp_path):
    """mypy checks a user program against the annotations (py.typed), and finds a wrong argument type."""
    example = (Path(__file__).parent / "typing_example.py").read_text()
    wrong = tmp_path / "wrong_example.py"
    wrong.write_text(example.replace("threads=1)", 'threads="one")'))
    env = {**os.environ, "MYPYPATH": str(ROOT)}
    ok = subprocess.run([sys.executable, "-m", "mypy", "--follow-imports=silent", "--no-incremental",
                         str(Path(__file__).parent / "typing_example.py")], capture_output=True, text=True, env=env, cwd=ROOT)
    assert ok.returncode == 0, ok.stdout
    bad = subprocess.run([sys.executable, "-m", "mypy", "--follow-imports=silent", "--no-incremental", str(wrong)],
                         capture_output=True, text=True, env=env, cwd=ROOT)
    assert bad.returncode == 1 and 'Argument "threads" to "quantize" has incompatible type "str"' in bad.stdout


def test_one_version():
    assert version("quantkit") == quantkit.__version__
    assert (ROOT / "quantkit" / "py.typed").is_file() and (ROOT / "LICENSE").is_file()


def test_cli_start_up_loads_neither_numba_nor_torch():
    code = "import quantkit.cli\nprint(sorted(m for m in ('numba', 'torch', 'transformers') if m in sys.modules))"
    result = subprocess.run([sys.executable, "-c", "import sys\n" + code], capture_output=True, text=True, cwd=ROOT)
    assert result.stdout.strip() == "[]", result.stderr
