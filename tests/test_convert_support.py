"""Helpers shared by the convert tests (no tests here): the peer converter, GGUF comparison, llama.cpp.

- ``peer_dir()``: llama.cpp's convert_hf_to_gguf.py with its gguf-py, from the llama-cpp-python
  0.3.36 sdist (``pip download`` into quantkit's cache once, then only the converter is extracted).
- ``run_peer(script, *args)``: one of the peer's converters, run as it is.
- ``peer_convert(model_dir, outtype)`` / ``quantkit_convert(model_dir, preset)``: output paths,
  made once per session.
- ``make_lora_adapter(folder, base_dir)``: a hand-made PEFT LoRA adapter; ``peer_lora(adapter, base, outtype)``:
  convert_lora_to_gguf.py's GGUF of it.
- ``llama_quantize(src, dst, preset)``: llama.cpp's own llama_model_quantize (llama-cpp-python).
- ``gguf_differences(a, b)``: every difference in metadata (keys, types, values) and tensors
  (names, order, types, shapes, bytes), as readable lines.
- ``make_llama_folder(root, tokenizer_dir)``: a hand-made 1-layer Llama folder (float16 weights).
- ``run_measured(cmd, env)``: wall time and the peak RSS of a command's own process.
- ``LlamaServer``: a GGUF loaded by llama.cpp (xllamacpp) for greedy tokens, tokenization and
  embeddings; its HTTP endpoint serves ``/tokenize`` and ``/completion`` (which returns token ids).
"""

from __future__ import annotations

import atexit
import functools
import json
import os
import shutil
import subprocess
import sys
import tarfile
import tempfile
import urllib.request
from pathlib import Path

import numpy as np

PEER_SDIST = "llama-cpp-python==0.3.36"
PEER_MEMBERS = ("convert_hf_to_gguf.py", "convert_lora_to_gguf.py", "conversion/", "gguf-py/")

_WORK = Path(tempfile.mkdtemp(prefix="quantkit-convert-tests-"))
atexit.register(shutil.rmtree, _WORK, ignore_errors=True)


@functools.cache
def peer_dir() -> Path:
    """Folder holding llama.cpp's converters (PEER_MEMBERS: convert_hf_to_gguf.py, convert_lora_to_gguf.py,
    conversion/, gguf-py/) of 0.3.36; members missing from an older extraction are added."""
    from quantkit.models import cache_dir

    target = cache_dir() / "peer" / "llama.cpp-0.3.36"
    missing = [m for m in PEER_MEMBERS if not (target / m.rstrip("/")).exists()]
    if not missing:
        return target
    download = cache_dir() / "peer"
    download.mkdir(parents=True, exist_ok=True)
    sdists = sorted(download.glob("llama_cpp_python-0.3.36.tar.gz"))
    if not sdists:
        subprocess.run(
            [sys.executable, "-m", "pip", "download", "--no-binary", ":all:", "--no-deps", "--quiet",
             PEER_SDIST, "-d", str(download)],
            check=True,
        )
        sdists = sorted(download.glob("llama_cpp_python-0.3.36.tar.gz"))
    prefix = "llama_cpp_python-0.3.36/vendor/llama.cpp/"
    partial = Path(tempfile.mkdtemp(dir=download))
    with tarfile.open(sdists[0]) as tar:
        members = [m for m in tar.getmembers()
                   if m.name.startswith(prefix) and m.name[len(prefix):].startswith(tuple(missing))]
        for m in members:
            m.name = m.name[len(prefix):]
        tar.extractall(partial, members=members, filter="data")
    target.mkdir(exist_ok=True)
    for member in missing:  # each member appears whole or not at all (another process may race us)
        try:
            os.replace(partial / member.rstrip("/"), target / member.rstrip("/"))
        except OSError:
            if not (target / member.rstrip("/")).exists():
                raise
    shutil.rmtree(partial, ignore_errors=True)
    return target


def _env() -> dict:
    return {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}


def _tag(folder: Path) -> str:
    """A file-name part unique to ``folder`` (tests make many folders called ``model``)."""
    import hashlib

    return f"{Path(folder).name}-{hashlib.sha256(str(Path(folder).resolve()).encode()).hexdigest()[:8]}"


def run_peer(script: str, *args) -> None:
    """Run one of llama.cpp's converters (``convert_hf_to_gguf.py``, ``convert_lora_to_gguf.py``) as it is."""
    root = peer_dir()
    subprocess.run([sys.executable, str(root / script), *map(str, args)], check=True, capture_output=True,
                   env={**_env(), "PYTHONPATH": str(root / "gguf-py")})


@functools.cache
def peer_convert(model_dir: Path, outtype: str) -> Path:
    """The peer's GGUF of ``model_dir`` with ``--outtype outtype`` (f16, q8_0, ...)."""
    out = _WORK / f"peer-{_tag(model_dir)}-{outtype}.gguf"
    run_peer("convert_hf_to_gguf.py", model_dir, "--outtype", outtype, "--outfile", out)
    return out


@functools.cache
def quantkit_convert(model_dir: Path, preset: str) -> Path:
    """quantkit's GGUF of ``model_dir`` with ``preset`` (through the public API)."""
    import quantkit

    out = _WORK / f"quantkit-{_tag(model_dir)}-{preset}.gguf"
    quantkit.convert(model_dir, out, preset, progress=False)
    return out


QUANTIZE_SCRIPT = """
import sys, llama_cpp
params = llama_cpp.llama_model_quantize_default_params()
params.ftype = getattr(llama_cpp, "LLAMA_FTYPE_MOSTLY_" + sys.argv[3])
params.nthread = int(sys.argv[4])
sys.exit(llama_cpp.llama_model_quantize(sys.argv[1].encode(), sys.argv[2].encode(), params))
"""


def llama_quantize_command(src: Path, dst: Path, preset: str, threads: int) -> list[str]:
    """The command running llama.cpp's llama_model_quantize(src -> dst, preset) in a fresh process."""
    return [sys.executable, "-c", QUANTIZE_SCRIPT, str(src), str(dst), preset, str(threads)]


@functools.cache
def llama_quantize(src: Path, preset: str) -> Path:
    """llama-quantize's ``preset`` file of the GGUF ``src``."""
    out = _WORK / f"llama-quantize-{Path(src).stem}-{preset}.gguf"
    subprocess.run(llama_quantize_command(src, out, preset, os.cpu_count() or 1), check=True, capture_output=True)
    return out


def gguf_differences(a: Path, b: Path, whole_set: bool = True) -> list[str]:
    """Every difference between two GGUF files' metadata and tensors (empty when equal); with
    ``whole_set=False`` two shards of split sets are compared as the single files they are."""
    from quantkit import read_gguf

    diffs = []
    with read_gguf(a, whole_set) as fa, read_gguf(b, whole_set) as fb:
        for key in sorted(set(fa.metadata) | set(fb.metadata)):
            if key not in fa.metadata or key not in fb.metadata:
                diffs.append(f"key {key} only in {'b' if key in fb.metadata else 'a'}")
                continue
            ta, tb = fa.metadata.value_type(key), fb.metadata.value_type(key)
            va, vb = fa.metadata[key], fb.metadata[key]
            if ta != tb or va != vb:
                diffs.append(f"key {key}: {ta} {str(va)[:80]!r} != {tb} {str(vb)[:80]!r}")
        names_a, names_b = [t.name for t in fa.tensors], [t.name for t in fb.tensors]
        if names_a != names_b:
            diffs.append(f"tensor names/order differ: {sorted(set(names_a) ^ set(names_b))[:5]}")
        for t in fa.tensors:
            if t.name not in names_b:
                continue
            u = fb.tensor(t.name)
            if (t.qtype, tuple(t.shape)) != (u.qtype, tuple(u.shape)):
                diffs.append(f"{t.name}: {t.qtype.name} {t.shape} != {u.qtype.name} {u.shape}")
            elif not np.array_equal(np.asarray(t.data), np.asarray(u.data)):
                diffs.append(f"{t.name}: bytes differ")
    return diffs


def _hwm_mb(pid: int) -> float | None:
    try:
        with open(f"/proc/{pid}/status") as status:
            for line in status:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) / 1024
    except (FileNotFoundError, ProcessLookupError):
        return None
    return None


def run_measured(cmd: list[str], env: dict | None = None, poll_s: float = 0.02) -> tuple[float, float]:
    """(wall seconds, peak RSS in MB) of ``cmd``, which must succeed.

    The peak is the process's VmHWM, polled until it exits (it only grows): unlike ru_maxrss, which
    on Linux starts at the RSS of the parent that forked the child, it is the command's own.
    """
    import time

    with tempfile.TemporaryFile() as log:  # a file, not a pipe: a chatty child must never block
        start = time.perf_counter()
        proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=log)
        peak = 0.0
        while proc.poll() is None:
            peak = max(peak, _hwm_mb(proc.pid) or 0.0)
            time.sleep(poll_s)
        seconds = time.perf_counter() - start
        if proc.returncode != 0:
            log.seek(0)
            raise RuntimeError(f"{' '.join(map(str, cmd[:4]))}... failed:\n{log.read().decode(errors='replace')[-2000:]}")
    return seconds, peak


# a tiny Llama checkpoint written by hand (no transformers), for option and error tests
HIDDEN, VOCAB, LAYERS, HEADS, KV_HEADS, FF = 64, 49152, 1, 4, 2, 128
LLAMA_CONFIG = {
    "architectures": ["LlamaForCausalLM"], "model_type": "llama", "hidden_size": HIDDEN, "intermediate_size": FF,
    "num_hidden_layers": LAYERS, "num_attention_heads": HEADS, "num_key_value_heads": KV_HEADS,
    "vocab_size": VOCAB, "max_position_embeddings": 256, "rms_norm_eps": 1e-5, "rope_theta": 10000.0,
    "tie_word_embeddings": True,
}


def llama_weights(config: dict = LLAMA_CONFIG) -> dict:
    """Checkpoint tensors (float16, random) of the Llama ``config`` describes."""
    rng = np.random.default_rng(0)
    hidden, ff, heads, kv_heads = (config[k] for k in ("hidden_size", "intermediate_size", "num_attention_heads",
                                                       "num_key_value_heads"))
    head_dim = hidden // heads
    shapes = {"model.embed_tokens.weight": (config["vocab_size"], hidden), "model.norm.weight": (hidden,)}
    for i in range(config["num_hidden_layers"]):
        p = f"model.layers.{i}."
        shapes.update({
            p + "input_layernorm.weight": (hidden,), p + "post_attention_layernorm.weight": (hidden,),
            p + "self_attn.q_proj.weight": (heads * head_dim, hidden),
            p + "self_attn.k_proj.weight": (kv_heads * head_dim, hidden),
            p + "self_attn.v_proj.weight": (kv_heads * head_dim, hidden),
            p + "self_attn.o_proj.weight": (hidden, hidden),
            p + "mlp.gate_proj.weight": (ff, hidden), p + "mlp.up_proj.weight": (ff, hidden),
            p + "mlp.down_proj.weight": (hidden, ff),
        })
    return {name: (0.02 * rng.standard_normal(shape, dtype=np.float32)).astype(np.float16) for name, shape in shapes.items()}


def make_llama_folder(root: Path, smollm2_dir: Path, weights=None, config=None) -> Path:
    """``root/model``: LLAMA_CONFIG (or ``config``), model.safetensors, SmolLM2's tokenizer files."""
    from safetensors.numpy import save_file

    folder = root / "model"
    folder.mkdir(parents=True)
    (folder / "config.json").write_text(json.dumps(config or LLAMA_CONFIG))
    save_file(weights or llama_weights(), str(folder / "model.safetensors"))
    for name in ("tokenizer.json", "tokenizer_config.json"):
        shutil.copy(smollm2_dir / name, folder / name)
    return folder


class LlamaServer:
    """A GGUF served by llama.cpp (xllamacpp) in this process; use as a context manager."""

    def __init__(self, path: Path, *, embedding: bool = False, n_ctx: int = 512):
        import xllamacpp

        params = xllamacpp.CommonParams()
        params.model.path = str(path)
        params.n_ctx = n_ctx
        params.n_parallel = 1
        if embedding:
            params.embedding = True
            params.pooling_type = xllamacpp.llama_pooling_type.LLAMA_POOLING_TYPE_MEAN
        self.server = xllamacpp.Server(params)
        self.url = self.server.listening_address.rstrip("/")

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        del self.server

    def _post(self, route: str, body: dict) -> dict:
        request = urllib.request.Request(self.url + route, data=json.dumps(body).encode(),
                                         headers={"Content-Type": "application/json"})
        with urllib.request.urlopen(request) as response:
            return json.loads(response.read())

    def tokenize(self, text: str) -> list[int]:
        return self._post("/tokenize", {"content": text, "add_special": False})["tokens"]

    def greedy(self, prompt: str, n: int) -> list[int]:
        """Token ids of ``n`` greedy steps after ``prompt``."""
        reply = self._post("/completion", {"prompt": prompt, "n_predict": n, "temperature": 0, "top_k": 1,
                                           "return_tokens": True, "cache_prompt": False})
        return reply["tokens"]

    def embed(self, texts: list[str]) -> np.ndarray:
        reply = self.server.handle_embeddings({"input": texts})
        return np.array([item["embedding"] for item in reply["data"]], dtype=np.float64)


LORA_TARGETS = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")


def make_lora_adapter(folder: Path, base_dir: Path, rank: int = 8, alpha: float = 16, targets=LORA_TARGETS,
                      seed: int = 0, scale: float = 0.05, config_extra: dict | None = None) -> Path:
    """A PEFT LoRA adapter for the Llama-style model in ``base_dir``, written by hand: adapter_config.json
    and adapter_model.safetensors with seeded random float32 A (rank x in) and B (out x rank)."""
    from safetensors import safe_open
    from safetensors.numpy import save_file

    rng = np.random.default_rng(seed)
    tensors = {}
    with safe_open(str(Path(base_dir) / "model.safetensors"), framework="np") as f:
        for name in sorted(f.keys()):
            module = name.removesuffix(".weight")
            if not name.endswith(".weight") or module.rsplit(".", 1)[-1] not in targets:
                continue
            n_out, n_in = f.get_slice(name).get_shape()
            prefix = f"base_model.model.{module}"
            tensors[prefix + ".lora_A.weight"] = (scale * rng.standard_normal((rank, n_in))).astype(np.float32)
            tensors[prefix + ".lora_B.weight"] = (scale * rng.standard_normal((n_out, rank))).astype(np.float32)
    folder.mkdir(parents=True, exist_ok=True)
    config = {"peft_type": "LORA", "task_type": "CAUSAL_LM", "r": rank, "lora_alpha": alpha, "lora_dropout": 0.0,
              "target_modules": list(targets), "bias": "none", "fan_in_fan_out": False, "use_rslora": False,
              "use_dora": False, "modules_to_save": None, "base_model_name_or_path": str(base_dir),
              **(config_extra or {})}
    (folder / "adapter_config.json").write_text(json.dumps(config, indent=2))
    save_file(tensors, str(folder / "adapter_model.safetensors"))
    return folder


@functools.cache
def peer_lora(adapter_dir: Path, base_dir: Path, outtype: str) -> Path:
    """The peer's GGUF LoRA adapter (convert_lora_to_gguf.py --base base_dir --outtype outtype)."""
    out = _WORK / f"peer-lora-{_tag(adapter_dir)}-{outtype}.gguf"
    run_peer("convert_lora_to_gguf.py", adapter_dir, "--base", base_dir, "--outtype", outtype, "--outfile", out)
    return out
