"""Convert wall time and peak memory: ``quantkit convert`` vs llama.cpp's convert_hf_to_gguf.py.

Each run is a fresh process (imports included, as a user runs it); peak RSS is its VmHWM, polled
(``run_measured`` in tests/test_convert_support.py). Cases, all measured in the same run on the same machine:

- SmolLM2-135M (bf16 folder) to F16 and to Q8_0: quantkit vs the peer's ``--outtype f16/q8_0``;
- SmolLM2-135M to Q4_K_M: quantkit in one pass vs the peer's f16 conversion followed by
  llama.cpp's ``llama_model_quantize`` (llama-cpp-python 0.3.36), the two-step way;
- synthetic sharded Llama models (bf16, random, 49152 x 2048 embeddings = 400 MB of float32 per
  tensor) of the sizes given: quantkit F16 on each (peak RSS should not grow with model size) and
  the peer on the largest.

    python benchmarks/bench_convert.py [--synthetic-gb 0.5,2] [--skip-synthetic] [--threads N]

Prints a markdown table (ratios quantkit / peer; below 1 is better for quantkit).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))

from test_convert_support import llama_quantize_command, peer_dir, run_measured  # noqa: E402

from quantkit.models import smollm2_hf_dir  # noqa: E402

# synthetic Llama geometry (Llama-3.2-1B-like width, SmolLM2's 49152-token vocabulary)
HIDDEN, FF, HEADS, KV_HEADS, VOCAB = 2048, 5632, 16, 4, 49152


def quantkit_cmd(model: Path, out: Path, preset: str, threads: int | None) -> list[str]:
    cmd = [sys.executable, "-m", "quantkit.cli", "convert", str(model), "-o", str(out), "--type", preset, "--force"]
    return cmd + (["--threads", str(threads)] if threads else [])


def peer_cmd(model: Path, out: Path, outtype: str) -> list[str]:
    return [sys.executable, str(peer_dir() / "convert_hf_to_gguf.py"), str(model), "--outtype", outtype,
            "--outfile", str(out)]


def make_synthetic_llama(folder: Path, target_gb: float, tokenizer_dir: Path) -> tuple[int, int]:
    """A sharded bf16 Llama of about ``target_gb`` GB in ``folder``; returns (layers, shards)."""
    import numpy as np
    import torch
    from safetensors.torch import save_file

    head_dim = HIDDEN // HEADS
    per_layer = 2 * (2 * HIDDEN * HIDDEN + 2 * KV_HEADS * head_dim * HIDDEN + 3 * HIDDEN * FF + 2 * HIDDEN)
    layers = max(1, round((target_gb * 1e9 - 2 * 2 * VOCAB * HIDDEN) / per_layer))
    shapes = {"model.embed_tokens.weight": (VOCAB, HIDDEN), "lm_head.weight": (VOCAB, HIDDEN), "model.norm.weight": (HIDDEN,)}
    for i in range(layers):
        p = f"model.layers.{i}."
        shapes.update({
            p + "input_layernorm.weight": (HIDDEN,), p + "post_attention_layernorm.weight": (HIDDEN,),
            p + "self_attn.q_proj.weight": (HIDDEN, HIDDEN), p + "self_attn.o_proj.weight": (HIDDEN, HIDDEN),
            p + "self_attn.k_proj.weight": (KV_HEADS * head_dim, HIDDEN),
            p + "self_attn.v_proj.weight": (KV_HEADS * head_dim, HIDDEN),
            p + "mlp.gate_proj.weight": (FF, HIDDEN), p + "mlp.up_proj.weight": (FF, HIDDEN),
            p + "mlp.down_proj.weight": (HIDDEN, FF),
        })
    rng = np.random.default_rng(0)
    folder.mkdir(parents=True)
    weight_map, shard, shard_bytes, shard_names = {}, {}, 0, []

    def flush():
        name = f"model-{len(shard_names) + 1:05d}.safetensors"
        save_file(shard, str(folder / name), metadata={"format": "pt"})
        weight_map.update({k: name for k in shard})
        shard_names.append(name)
        shard.clear()

    for name, shape in shapes.items():
        values = rng.standard_normal(shape, dtype=np.float32) * np.float32(0.02)
        shard[name] = torch.from_numpy(values).to(torch.bfloat16)
        shard_bytes += values.size * 2
        if shard_bytes >= 500e6:
            flush()
            shard_bytes = 0
    if shard:
        flush()
    write_folder_files(folder, weight_map, synthetic_config(layers), tokenizer_dir)
    return layers, len(shard_names)


def synthetic_config(layers: int) -> dict:
    """config.json of the synthetic Llama with ``layers`` layers."""
    return {
        "architectures": ["LlamaForCausalLM"], "model_type": "llama", "hidden_size": HIDDEN, "intermediate_size": FF,
        "num_hidden_layers": layers, "num_attention_heads": HEADS, "num_key_value_heads": KV_HEADS,
        "vocab_size": VOCAB, "max_position_embeddings": 4096, "rms_norm_eps": 1e-5, "rope_theta": 500000.0,
        "tie_word_embeddings": False, "torch_dtype": "bfloat16",
    }


def write_folder_files(folder: Path, weight_map: dict, config: dict, tokenizer_dir: Path) -> None:
    """The shard index, config.json and tokenizer files next to the shards."""
    (folder / "model.safetensors.index.json").write_text(json.dumps({"metadata": {}, "weight_map": weight_map}))
    (folder / "config.json").write_text(json.dumps(config))
    for name in ("tokenizer.json", "tokenizer_config.json"):
        shutil.copy(tokenizer_dir / name, folder / name)


class Table:
    """The markdown table, each row printed as soon as it is measured."""

    def __init__(self):
        print("| case | peer | quantkit s | peer s | time ratio | quantkit peak RSS MB | peer peak RSS MB | RSS ratio |")
        print("|---|---|---:|---:|---:|---:|---:|---:|", flush=True)

    def add(self, row):
        label, peer_label, ours, theirs = row
        if theirs is None:
            print(f"| {label} | - | {ours[0]:.1f} | - | - | {ours[1]:.0f} | - | - |", flush=True)
        else:
            print(f"| {label} | {peer_label} | {ours[0]:.1f} | {theirs[0]:.1f} | {ours[0] / theirs[0]:.2f} | "
                  f"{ours[1]:.0f} | {theirs[1]:.0f} | {ours[1] / theirs[1]:.2f} |", flush=True)


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--synthetic-gb", default="0.5,2", help="sizes of the synthetic models (GB of bf16)")
    parser.add_argument("--skip-synthetic", action="store_true")
    parser.add_argument("--threads", type=int, default=None, help="quantkit --threads and llama-quantize nthread")
    parser.add_argument("--make-synthetic", nargs=2, metavar=("FOLDER", "GB"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.make_synthetic:  # in a child: this process stays small
        layers, shards = make_synthetic_llama(Path(args.make_synthetic[0]), float(args.make_synthetic[1]), smollm2_hf_dir())
        print(json.dumps([layers, shards]))
        return

    env = {**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONPATH": str(peer_dir() / "gguf-py")}
    qk_env = {k: v for k, v in env.items() if k != "PYTHONPATH"}
    smol = smollm2_hf_dir()
    threads = args.threads or os.cpu_count()
    print(f"{os.cpu_count()} CPUs; quantkit threads: {args.threads or 'all'}\n")
    rows = Table()
    with tempfile.TemporaryDirectory(prefix="bench-convert-") as tmp:
        tmp = Path(tmp)
        run_measured(quantkit_cmd(smol, tmp / "warm.gguf", "F16", args.threads), qk_env)  # Numba cache, page cache
        for preset, outtype in (("F16", "f16"), ("Q8_0", "q8_0")):
            ours = run_measured(quantkit_cmd(smol, tmp / "qk.gguf", preset, args.threads), qk_env)
            theirs = run_measured(peer_cmd(smol, tmp / "peer.gguf", outtype), env)
            rows.add((f"SmolLM2-135M -> {preset}", f"convert_hf_to_gguf --outtype {outtype}", ours, theirs))
        ours = run_measured(quantkit_cmd(smol, tmp / "qk.gguf", "Q4_K_M", args.threads), qk_env)
        step1 = run_measured(peer_cmd(smol, tmp / "peer-f16.gguf", "f16"), env)
        step2 = run_measured(llama_quantize_command(tmp / "peer-f16.gguf", tmp / "peer-q4km.gguf", "Q4_K_M", threads), env)
        rows.add(("SmolLM2-135M -> Q4_K_M (one pass)", "--outtype f16, then llama_model_quantize Q4_K_M",
                     ours, (step1[0] + step2[0], max(step1[1], step2[1]))))
        for f in tmp.glob("*.gguf"):
            f.unlink()
        if not args.skip_synthetic:
            sizes = [float(s) for s in args.synthetic_gb.split(",")]
            for gb in sizes:
                folder = tmp / f"synthetic-{gb}"
                made = subprocess.run([sys.executable, __file__, "--make-synthetic", str(folder), str(gb)],
                                      check=True, capture_output=True, text=True, env=qk_env)
                layers, shards = json.loads(made.stdout.splitlines()[-1])
                label = f"synthetic Llama {gb:g} GB bf16 ({layers} layers, {shards} shards) -> F16"
                ours = run_measured(quantkit_cmd(folder, tmp / "qk.gguf", "F16", args.threads), qk_env)
                theirs = None
                if gb == max(sizes):
                    (tmp / "qk.gguf").unlink()
                    theirs = run_measured(peer_cmd(folder, tmp / "peer.gguf", "f16"), env)
                rows.add((label, "convert_hf_to_gguf --outtype f16", ours, theirs))
                shutil.rmtree(folder)
                for f in tmp.glob("*.gguf"):
                    f.unlink()



if __name__ == "__main__":
    main()
