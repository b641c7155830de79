"""Auto mixes against llama.cpp's presets at the same file size, on SmolLM2-135M with seeded noise.

The model: SmolLM2-135M-Instruct's Hugging Face folder (quantkit.models) with N(0, (0.02 std)^2)
noise added to every tensor (torch generator seed 0, tensors in name order, std per tensor), saved in
bf16 (the folder itself sits on a Q4_1 grid, which would flatter Q4_1). Probes: the first CHUNKS x CTX
tokens of the first half of quantkit's calibration text. Evaluation: KLD against the bf16 model on
HELDOUT chunks of HELDOUT_CTX tokens of the second half (no token in common), the model in torch
float32 with each GGUF's tensors dequantized into it (as the scorecard's torch backend does).

For each preset P of --presets: the preset's file, then an auto mix with --target-size = that file's
size; also predicted (sum of single-group KLDs) vs measured KLD of the mix on the calibration chunks.
Writes a JSON and the quality-size frontier (png) of every preset and auto mix.

    python benchmarks/bench_automix.py [--out /tmp/automix] [--layers-per-group 10] [--ctx 128] [--chunks 2]
"""

from __future__ import annotations

import argparse
import json
import shutil
import time
from pathlib import Path

FRONTIER_PRESETS = ("Q2_K", "Q3_K_S", "Q3_K_M", "Q3_K_L", "Q4_0", "IQ4_NL", "IQ4_XS", "Q4_K_S", "Q4_K_M", "Q5_K_M",
                    "Q6_K", "Q8_0")


def make_noisy(dst: Path) -> Path:
    import torch
    from safetensors.torch import load_file, save_file

    from quantkit.models import smollm2_hf_dir

    if (dst / "model.safetensors").exists():
        return dst
    src = smollm2_hf_dir()
    dst.mkdir(parents=True, exist_ok=True)
    for f in src.iterdir():
        if f.name != "model.safetensors":
            shutil.copy(f, dst / f.name)
    state = load_file(str(src / "model.safetensors"))
    generator = torch.Generator().manual_seed(0)
    noisy = {}
    for name in sorted(state):
        w = state[name].float()
        noisy[name] = (w + torch.randn(w.shape, generator=generator) * (0.02 * w.std())).to(torch.bfloat16).contiguous()
    save_file(noisy, str(dst / "model.safetensors"), metadata={"format": "pt"})
    return dst


def gguf_kld(prober, model_dir, path) -> float:
    """Mean KLD vs the prober's baseline with every tensor of the GGUF ``path`` dequantized into the model."""
    from quantkit.eval.backends import checkpoint_tensors

    names = []
    for hf_name, values in checkpoint_tensors(Path(model_dir), "F16", Path(path)):
        prober.original(hf_name)
        prober.set_weight(hf_name, values)
        names.append(hf_name)
    try:
        return prober.kld(None)
    finally:
        prober.restore(names)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", default="/tmp/automix")
    parser.add_argument("--presets", default="Q2_K,Q3_K_M,Q4_K_M")
    parser.add_argument("--frontier", default=",".join(FRONTIER_PRESETS))
    parser.add_argument("--ctx", type=int, default=128)
    parser.add_argument("--chunks", type=int, default=2)
    parser.add_argument("--layers-per-group", type=int, default=10)
    parser.add_argument("--heldout-ctx", type=int, default=256)
    parser.add_argument("--heldout-chunks", type=int, default=4)
    parser.add_argument("--candidates", default=None, help="comma-separated candidate types [default: automix's]")
    parser.add_argument("--ray-workers", type=int, default=0,
                        help="run the probes on a local Ray instance with this many CPU slots (0: in-process)")
    parser.add_argument("--device", default=None)
    parser.add_argument("--threads", type=int, default=None)
    args = parser.parse_args()

    from quantkit.eval.automix import Prober, auto_convert, calibration_chunks, measure, mix_kld
    from quantkit.eval.report import DEFAULT_TEXT
    from quantkit.jobs.convert import convert
    from quantkit.plan.targets import Target

    out = Path(args.out)
    model_dir = make_noisy(out / "smollm2-noisy")
    text = DEFAULT_TEXT.read_text(encoding="utf-8")
    calibration, heldout = text[: len(text) // 2], text[len(text) // 2:]
    options = dict(ctx=args.ctx, chunks=args.chunks, layers_per_group=args.layers_per_group)
    if args.candidates:
        options["candidates"] = tuple(args.candidates.split(","))
    prober = Prober(model_dir, args.device, args.threads)
    start = time.perf_counter()
    if args.ray_workers:
        import ray

        ray.init(num_cpus=args.ray_workers, log_to_driver=False)
        sensitivity = measure(model_dir, text=calibration, ray_address="local", device=args.device,
                              threads=args.threads, **options)
        prober.baseline(calibration_chunks(model_dir, calibration, args.ctx, args.chunks))
    else:
        sensitivity = measure(model_dir, text=calibration, prober=prober, **options)
    measure_seconds = time.perf_counter() - start
    result = {"command": "python benchmarks/bench_automix.py " + " ".join(f"--{k.replace('_', '-')} {v}" for k, v in
                                                                         vars(args).items() if v is not None),
              "probes": sensitivity.probes, "probe_seconds": sensitivity.seconds, "groups": len(sensitivity.groups),
              "device": str(prober.device), "presets": {}, "autos": {}}
    print(f"sensitivity: {len(sensitivity.groups)} groups, {sensitivity.probes} probes, {sensitivity.seconds:.0f} s "
          f"(this run {measure_seconds:.0f} s)", flush=True)

    files = {}
    for preset in dict.fromkeys(args.presets.split(",") + args.frontier.split(",")):
        path = out / f"{preset}.gguf"
        if not path.exists():
            convert(model_dir, path, preset, progress=False)
        files[preset] = path
    autos = {}
    for preset in args.presets.split(","):
        size = files[preset].stat().st_size
        path = out / f"auto-{preset}.gguf"
        conv, mix, _ = auto_convert(model_dir, path, Target(size=size), text=calibration, progress=False, **options)
        measured = mix_kld(mix.plan, prober, mix.types)  # prober still holds the calibration baseline
        autos[preset] = (path, mix, measured)
        result["autos"][preset] = {"size": conv.file_bytes, "target": size, "bpw": conv.bits_per_weight,
                                   "predicted_kld_calibration": mix.predicted_kld,
                                   "measured_kld_calibration": measured, "preset_label": mix.preset}
        print(f"auto@{preset}: {conv.file_bytes:,} <= {size:,} bytes; calibration KLD predicted "
              f"{mix.predicted_kld:.4f}, measured {measured:.4f}", flush=True)

    tokenizer_chunks = calibration_chunks(model_dir, heldout, args.heldout_ctx, args.heldout_chunks)
    prober.baseline(tokenizer_chunks)
    for preset, path in files.items():
        kld = gguf_kld(prober, model_dir, path)
        result["presets"][preset] = {"size": path.stat().st_size, "heldout_kld": kld}
        print(f"{preset}: {path.stat().st_size:,} bytes, held-out KLD {kld:.4f}", flush=True)
    for preset, (path, mix, _) in autos.items():
        kld = gguf_kld(prober, model_dir, path)
        ratio = kld / result["presets"][preset]["heldout_kld"]
        result["autos"][preset].update(heldout_kld=kld, ratio_to_preset=ratio)
        print(f"auto@{preset}: held-out KLD {kld:.4f} = {ratio:.2f} x {preset}'s", flush=True)
    (out / "bench_automix.json").write_text(json.dumps(result, indent=1))
    plot(result, out / "automix-frontier.png")
    print(f"wrote {out / 'bench_automix.json'}, {out / 'automix-frontier.png'}")


def plot(result: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.5))
    presets = sorted(result["presets"].items(), key=lambda kv: kv[1]["size"])
    ax.plot([v["size"] / 1e6 for _, v in presets], [v["heldout_kld"] for _, v in presets], "o-", color="grey",
            label="llama.cpp presets")
    for name, v in presets:
        ax.annotate(name, (v["size"] / 1e6, v["heldout_kld"]), fontsize=7, xytext=(3, 3), textcoords="offset points")
    autos = sorted(result["autos"].items(), key=lambda kv: kv[1]["size"])
    ax.plot([v["size"] / 1e6 for _, v in autos], [v["heldout_kld"] for _, v in autos], "s-", color="C1",
            label="quantkit auto mixes")
    ax.set_yscale("log")
    ax.set_xlabel("file size (MB)")
    ax.set_ylabel("mean KLD vs bf16, held-out text")
    ax.set_title("SmolLM2-135M (+ seeded noise): quality-size frontier")
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)


if __name__ == "__main__":
    main()
