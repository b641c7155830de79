"""A model folder's own Python code (``auto_map`` in config.json / tokenizer_config.json) never runs.

Must show: for convert (both tokenizer routes: transformers' AutoTokenizer and gguf-py's LlamaHfVocab
for a byte-fallback tokenizer.json), imatrix and scorecard, run through the CLI in a fresh process
with ``y`` answered to every "run the custom code?" prompt (and with stdin closed), the marker file
the folder's module writes when imported never appears, and the run either succeeds or exits 2 with
one ``quantkit: error:`` line.
"""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from test_convert_support import LLAMA_CONFIG, llama_weights, make_llama_folder

CUSTOM_MODULE = '''
from pathlib import Path
Path({marker!r}).write_text("the folder's code ran")
from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

class MarkerConfig(LlamaConfig):
    model_type = "quantkit_marker"

class MarkerModel(LlamaForCausalLM):
    config_class = MarkerConfig

class MarkerTokenizer(PreTrainedTokenizerFast):
    pass
'''
AUTO_MAP = {"AutoConfig": "marker_code.MarkerConfig", "AutoModelForCausalLM": "marker_code.MarkerModel",
            "AutoTokenizer": ["marker_code.MarkerTokenizer", "marker_code.MarkerTokenizer"]}


def byte_fallback_tokenizer(folder: Path) -> None:
    """A Llama-2-style tokenizer.json (BPE with byte fallback, tokens 0-258: specials and bytes) that
    gguf-py's LlamaHfVocab takes, replacing SmolLM2's."""
    from tokenizers import Tokenizer, decoders, models, normalizers

    vocab = {"<unk>": 0, "<s>": 1, "</s>": 2} | {f"<0x{b:02X}>": 3 + b for b in range(256)}
    vocab |= {"\u2581": 259, "a": 260, "\u2581a": 261}
    tokenizer = Tokenizer(models.BPE(vocab, [("\u2581", "a")], unk_token="<unk>", byte_fallback=True, fuse_unk=True))
    tokenizer.normalizer = normalizers.Sequence([normalizers.Prepend("\u2581"), normalizers.Replace(" ", "\u2581")])
    tokenizer.decoder = decoders.Sequence([decoders.Replace("\u2581", " "), decoders.ByteFallback(), decoders.Fuse(),
                                           decoders.Strip(" ", 1, 0)])
    tokenizer.save(str(folder / "tokenizer.json"))


def custom_code_folder(root: Path, smollm2_hf_dir: Path, marker: Path, model_type: str, tokenizer: str) -> Path:
    """A 1-layer Llama folder whose config.json and tokenizer_config.json point at marker_code.py."""
    vocab = 262 if tokenizer == "byte_fallback" else LLAMA_CONFIG["vocab_size"]
    config = {**LLAMA_CONFIG, "model_type": model_type, "vocab_size": vocab, "auto_map": AUTO_MAP}
    folder = make_llama_folder(root, smollm2_hf_dir, llama_weights(config), config)
    (folder / "marker_code.py").write_text(CUSTOM_MODULE.format(marker=str(marker)))
    if tokenizer == "byte_fallback":
        byte_fallback_tokenizer(folder)
    tokenizer_config = json.loads((folder / "tokenizer_config.json").read_text())
    tokenizer_config.pop("tokenizer_class")  # so transformers decides the class, from auto_map
    tokenizer_config["auto_map"] = {"AutoTokenizer": AUTO_MAP["AutoTokenizer"]}
    (folder / "tokenizer_config.json").write_text(json.dumps(tokenizer_config))
    return folder


def run_cli(args: list, tmp_path: Path, stdin) -> subprocess.CompletedProcess:
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_HOME": str(tmp_path / "hf-home")}  # module cache inside tmp
    options = {"input": "y\n" * 20} if stdin == "y" else {"stdin": subprocess.DEVNULL}
    return subprocess.run([sys.executable, "-m", "quantkit.cli", *args], capture_output=True, text=True, env=env,
                          **options)


def commands(folder: Path, tmp_path: Path) -> dict:
    text = tmp_path / "text.txt"
    text.write_text("The quick brown fox jumps over the lazy dog. " * 40)
    return {
        "convert": ["convert", str(folder), "-o", str(tmp_path / "out.gguf"), "--type", "Q8_0"],
        "imatrix": ["imatrix", str(folder), "-f", str(text), "-o", str(tmp_path / "imatrix.gguf"), "--ctx", "16",
                    "--chunks", "1"],
        "scorecard": ["scorecard", str(folder), "--types", "Q8_0", "--text", str(text), "--max-new-tokens", "2",
                      "--text-tokens", "32", "-o", str(tmp_path / "report")],
    }


CASES = [  # (command, config.json model_type, tokenizer, stdin)
    ("convert", "quantkit_marker", "smollm2", "y"),
    ("convert", "quantkit_marker", "smollm2", "closed"),
    ("convert", "quantkit_marker", "byte_fallback", "y"),
    ("convert", "llama", "byte_fallback", "y"),
    ("imatrix", "quantkit_marker", "smollm2", "y"),
    ("imatrix", "llama", "smollm2", "y"),
    ("scorecard", "quantkit_marker", "smollm2", "y"),
]


@pytest.mark.parametrize("command, model_type, tokenizer, stdin", CASES)
def test_folder_code_never_runs(tmp_path, smollm2_hf_dir, command, model_type, tokenizer, stdin):
    marker = tmp_path / "MARKER"
    folder = custom_code_folder(tmp_path / "in", smollm2_hf_dir, marker, model_type, tokenizer)
    result = run_cli(commands(folder, tmp_path)[command], tmp_path, stdin)
    assert not marker.exists(), f"{command} ran the folder's code"
    assert "Traceback" not in result.stderr, result.stderr[-3000:]
    assert result.returncode in (0, 2), result.stderr[-3000:]
    if result.returncode == 2:
        errors = [line for line in result.stderr.splitlines() if line.startswith("quantkit: error: ")]
        assert len(errors) == 1 and len(errors[0]) <= 200 + len("quantkit: error: "), result.stderr[-3000:]
        assert result.stderr.strip().splitlines()[-1] == errors[0]


def test_marker_module_runs_when_trusted(tmp_path, smollm2_hf_dir):
    """The test folder is real: transformers with trust_remote_code=True imports the module."""
    marker = tmp_path / "MARKER"
    folder = custom_code_folder(tmp_path / "in", smollm2_hf_dir, marker, "quantkit_marker", "smollm2")
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_HOME": str(tmp_path / "hf-home")}
    code = f"from transformers import AutoConfig; AutoConfig.from_pretrained({str(folder)!r}, trust_remote_code=True)"
    subprocess.run([sys.executable, "-c", code], env=env, check=True, capture_output=True)
    assert marker.exists()


def test_every_transformers_load_in_quantkit_refuses_folder_code():
    """Each ``from_pretrained(...)`` or ``SentenceTransformer(...)`` call in quantkit/ passes
    ``trust_remote_code=False`` (the others hand the method to source.load_pretrained, which does)."""
    import ast

    import quantkit

    calls = 0
    for path in sorted(Path(quantkit.__file__).parent.rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if not isinstance(node, ast.Call):
                continue
            name = getattr(node.func, "attr", getattr(node.func, "id", None))
            if name in ("from_pretrained", "SentenceTransformer", "loader"):
                calls += 1
                value = {k.arg: k.value for k in node.keywords}.get("trust_remote_code")
                assert isinstance(value, ast.Constant) and value.value is False, f"{path.name}:{node.lineno}"
    assert calls >= 3
