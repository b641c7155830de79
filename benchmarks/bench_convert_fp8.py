"""FP8 checkpoints: ``quantkit convert`` vs llama.cpp's convert_hf_to_gguf.py, wall time and peak memory.

A synthetic sharded Llama (bench_convert.py's geometry) whose linear weights are float8 e4m3 with
float32 128 x 128 block scales (``weight_scale_inv``, ``quantization_config.weight_block_size``, as
DeepSeek-V3 ships them); embeddings, norms and ``lm_head`` stay bf16. Each run is a fresh process;
peak RSS is its VmHWM (``run_measured``).

    python benchmarks/bench_convert_fp8.py [--fp8-gb 0.5] [--threads N]

Prints a markdown table (ratios quantkit / peer; below 1 is better for quantkit).
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from bench_convert import (  # noqa: E402
    FF,
    HEADS,
    HIDDEN,
    KV_HEADS,
    VOCAB,
    Table,
    peer_cmd,
    quantkit_cmd,
    synthetic_config,
    write_folder_files,
)
from test_convert_fp8 import BLOCK, fp8_blocks  # noqa: E402  (bench_convert put tests/ on the path)
from test_convert_support import peer_dir, run_measured  # noqa: E402

from quantkit.models import smollm2_hf_dir  # noqa: E402


def make_fp8_llama(folder: Path, fp8_gb: float, tokenizer_dir: Path) -> tuple[int, int]:
    """A sharded FP8 Llama with about ``fp8_gb`` GB of float8 weights; returns (layers, shards)."""
    import ml_dtypes
    import numpy as np
    from safetensors.numpy import save_file

    head_dim = HIDDEN // HEADS
    linear = {"self_attn.q_proj": (HIDDEN, HIDDEN), "self_attn.k_proj": (KV_HEADS * head_dim, HIDDEN),
              "self_attn.v_proj": (KV_HEADS * head_dim, HIDDEN), "self_attn.o_proj": (HIDDEN, HIDDEN),
              "mlp.gate_proj": (FF, HIDDEN), "mlp.up_proj": (FF, HIDDEN), "mlp.down_proj": (HIDDEN, FF)}
    per_layer = sum(r * c for r, c in linear.values())
    layers = max(1, round(fp8_gb * 1e9 / per_layer))
    rng = np.random.default_rng(0)
    folder.mkdir(parents=True)
    weight_map, shard_names = {}, []

    def bf16(shape):
        return (rng.standard_normal(shape, dtype=np.float32) * np.float32(0.02)).astype(ml_dtypes.bfloat16)

    def save(shard):
        name = f"model-{len(shard_names) + 1:05d}.safetensors"
        save_file(shard, str(folder / name), metadata={"format": "pt"})
        weight_map.update({k: name for k in shard})
        shard_names.append(name)

    save({"model.embed_tokens.weight": bf16((VOCAB, HIDDEN)), "lm_head.weight": bf16((VOCAB, HIDDEN)),
          "model.norm.weight": bf16((HIDDEN,))})
    for i in range(layers):
        p = f"model.layers.{i}."
        shard = {p + "input_layernorm.weight": bf16((HIDDEN,)), p + "post_attention_layernorm.weight": bf16((HIDDEN,))}
        for name, shape in linear.items():
            values = rng.standard_normal(shape, dtype=np.float32) * np.float32(0.02)
            shard[p + name + ".weight"], shard[p + name + ".weight_scale_inv"] = fp8_blocks(values, (BLOCK, BLOCK))
        save(shard)
    config = dict(synthetic_config(layers), quantization_config={
        "quant_method": "fp8", "fmt": "e4m3", "activation_scheme": "dynamic", "weight_block_size": [BLOCK, BLOCK]})
    write_folder_files(folder, weight_map, config, tokenizer_dir)
    return layers, len(shard_names)


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--fp8-gb", type=float, default=0.5, help="GB of float8 weights in the synthetic model")
    parser.add_argument("--threads", type=int, default=None, help="quantkit --threads")
    args = parser.parse_args()
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONPATH": str(peer_dir() / "gguf-py")}
    qk_env = {k: v for k, v in env.items() if k != "PYTHONPATH"}
    print(f"{os.cpu_count()} CPUs, load average {os.getloadavg()[0]:.1f}; quantkit threads: {args.threads or 'idle cores'}\n")
    with tempfile.TemporaryDirectory(prefix="bench-fp8-") as tmp:
        tmp = Path(tmp)
        layers, shards = make_fp8_llama(tmp / "fp8", args.fp8_gb, smollm2_hf_dir())
        rows = Table()
        for preset, outtype in (("F16", "f16"), ("Q8_0", "q8_0")):
            ours = run_measured(quantkit_cmd(tmp / "fp8", tmp / "qk.gguf", preset, args.threads), qk_env)
            (tmp / "qk.gguf").unlink()
            theirs = run_measured(peer_cmd(tmp / "fp8", tmp / "peer.gguf", outtype), env)
            (tmp / "peer.gguf").unlink()
            rows.add((f"synthetic FP8 Llama, {args.fp8_gb:g} GB e4m3 ({layers} layers, {shards} shards) -> {preset}",
                      f"convert_hf_to_gguf --outtype {outtype}", ours, theirs))


if __name__ == "__main__":
    main()
