"""bench_automix.py's auto mixes again without the types that match the folder's Q4_1 grid.

SmolLM2's Hugging Face folder is dequantized Q4_1; the seeded noise (0.02 std) is far smaller than a
Q4_1 step, so Q4_1 (and Q4_K, also asymmetric 4-bit with per-32 minimums) stay nearly lossless on it
and the auto mixes lean on them. Here the same cached probe curves are allocated with those types
removed (no new probes), converted, and evaluated on the same held-out chunks; preset KLDs are read
from bench_automix.json (same chunks, same baseline).

    python benchmarks/bench_automix_nogrid.py [--out /tmp/automix] [--exclude Q4_1,Q4_K]  (same probe options as the bench)
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", default="/tmp/automix")
    parser.add_argument("--exclude", default="Q4_1,Q4_K")
    parser.add_argument("--presets", default="Q2_K,Q3_K_M,Q4_K_M")
    parser.add_argument("--ctx", type=int, default=64)
    parser.add_argument("--chunks", type=int, default=1)
    parser.add_argument("--layers-per-group", type=int, default=15)
    parser.add_argument("--candidates", default="Q2_K,Q3_K,IQ4_NL,Q4_0,IQ4_XS,Q4_K,Q4_1,Q5_0,Q5_K,Q6_K,Q8_0")
    parser.add_argument("--heldout-ctx", type=int, default=128)
    parser.add_argument("--heldout-chunks", type=int, default=2)
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()

    from bench_automix import gguf_kld

    from quantkit.eval.automix import Prober, calibration_chunks, measure, mix_kld, plan_mix
    from quantkit.eval.report import DEFAULT_TEXT
    from quantkit.jobs.convert import convert
    from quantkit.plan.targets import Target

    out = Path(args.out)
    model_dir = out / "smollm2-noisy"
    text = DEFAULT_TEXT.read_text(encoding="utf-8")
    calibration, heldout = text[: len(text) // 2], text[len(text) // 2:]
    sensitivity = measure(model_dir, text=calibration, ctx=args.ctx, chunks=args.chunks,
                          layers_per_group=args.layers_per_group, candidates=tuple(args.candidates.split(",")),
                          use_cache=True, progress=False)
    excluded = set(args.exclude.split(","))
    for g in sensitivity.groups:
        g.kld = {t: v for t, v in g.kld.items() if t not in excluded}
    bench = json.loads((out / "bench_automix.json").read_text())
    prober = Prober(model_dir, None, args.threads)
    prober.baseline(calibration_chunks(model_dir, calibration, args.ctx, args.chunks))
    made = {}
    for preset in args.presets.split(","):
        size = (out / f"{preset}.gguf").stat().st_size
        mix = plan_mix(model_dir, Target(size=size), sensitivity)
        path = out / f"auto-nogrid-{preset}.gguf"
        convert(model_dir, path, mix.preset, tensor_types=mix.recipe, overwrite=True, progress=False)
        made[preset] = (path, mix, mix_kld(mix.plan, prober, mix.types))
    prober.baseline(calibration_chunks(model_dir, heldout, args.heldout_ctx, args.heldout_chunks))
    result = {}
    for preset, (path, mix, measured) in made.items():
        kld = gguf_kld(prober, model_dir, path)
        ratio = kld / bench["presets"][preset]["heldout_kld"]
        result[preset] = {"size": path.stat().st_size, "predicted_kld_calibration": mix.predicted_kld,
                          "measured_kld_calibration": measured, "heldout_kld": kld, "ratio_to_preset": ratio,
                          "preset_label": mix.preset}
        print(f"auto@{preset} without {args.exclude}: {path.stat().st_size:,} bytes, calibration KLD predicted "
              f"{mix.predicted_kld:.4f} measured {measured:.4f}; held-out KLD {kld:.4f} = {ratio:.2f} x {preset}'s",
              flush=True)
    (out / "bench_automix_nogrid.json").write_text(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
