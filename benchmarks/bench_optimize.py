"""Weighted-error and time ratio of ``quantize(..., optimize=True)`` to the default, per type.

Subjects: all-MiniLM-L6-v2, SmolLM2-135M-Instruct (its HF folder sits on a Q4_1 grid) and SmolLM2
with seeded noise N(0, (0.02 * std)^2) added per tensor (seed 0), so the grid does not flatter a
method. Per type, every 2-D weight whose rows split into the type's blocks is quantized (at most
``--rows`` rows of each, evenly spaced) without an imatrix (a unit imatrix for the types llama.cpp
requires one for), both ways; the error is llama.cpp's weighted squared error for the type
(quantkit.quants.optimize.error_weights), summed over all blocks. Prints a markdown table.

    PYTHONPATH=. python benchmarks/bench_optimize.py [--rows 256] [--types Q4_K,IQ4_XS]
"""

from __future__ import annotations

import argparse
import time

import numpy as np

from quantkit.quants import OPTIMIZED_TYPES, dequantize, quantize
from quantkit.quants.optimize import block_errors, error_weights
from quantkit.types import quant_type

TYPES = ["Q4_0", "Q4_1", "Q5_0", "Q5_1", "Q8_0", "Q2_K", "Q3_K", "Q4_K", "Q5_K", "Q6_K", "IQ4_NL", "IQ4_XS",
         "IQ3_XXS", "IQ3_S", "IQ2_XXS", "IQ2_XS", "IQ2_S", "IQ1_S", "IQ1_M"]


def subjects(rows: int) -> dict[str, list[np.ndarray]]:
    """name -> the 2-D weights (float32, at most ``rows`` evenly spaced rows each)."""
    from safetensors.numpy import load_file  # deferred: only the benchmark reads the models

    from quantkit.models import minilm_dir, smollm2_hf_dir

    def take(tensors):
        out = []
        for name in sorted(tensors):
            w = np.asarray(tensors[name], dtype=np.float32)
            if w.ndim == 2 and "embed" not in name:
                step = max(1, w.shape[0] // rows)
                out.append(np.ascontiguousarray(w[::step][:rows]))
        return out

    minilm = take(load_file(str(minilm_dir() / "model.safetensors")))
    smol_dir = smollm2_hf_dir()
    smol_tensors = {}
    for path in sorted(smol_dir.glob("*.safetensors")):
        import torch  # deferred: SmolLM2's folder is bf16, which numpy cannot read

        from safetensors.torch import load_file as load_torch

        smol_tensors.update({k: v.to(torch.float32).numpy() for k, v in load_torch(str(path)).items()})
    smol = take(smol_tensors)
    rng = np.random.default_rng(0)
    noised = [(w + rng.standard_normal(w.shape).astype(np.float32) * np.float32(0.02 * w.std())).astype(np.float32)
              for w in smol]
    return {"MiniLM": minilm, "SmolLM2": smol, "SmolLM2+noise": noised}


def measure(qtype: str, weights: list[np.ndarray]) -> tuple[float, float, int]:
    """(error ratio, time ratio, tensors used) of optimize vs default over ``weights``."""
    qt = quant_type(qtype)
    e_def = e_opt = t_def = t_opt = 0.0
    used = 0
    for w in weights:
        if w.shape[1] % qt.block_size:
            continue
        im = np.ones(w.shape[1], np.float32) if qt.requires_imatrix else None
        t0 = time.perf_counter()
        a = quantize(w, qtype, imatrix=im)
        t1 = time.perf_counter()
        b = quantize(w, qtype, imatrix=im, optimize=True)
        t2 = time.perf_counter()
        assert a.data.size == b.data.size
        ew = error_weights(qtype, w, im)
        e_def += block_errors(w, dequantize(a), ew, qt.block_size).sum()
        e_opt += block_errors(w, dequantize(b), ew, qt.block_size).sum()
        t_def += t1 - t0
        t_opt += t2 - t1
        used += 1
    if not used:
        return float("nan"), float("nan"), 0
    return e_opt / e_def, t_opt / t_def, used


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rows", type=int, default=256, help="rows taken from each weight (evenly spaced)")
    ap.add_argument("--types", default=",".join(TYPES))
    args = ap.parse_args()
    types = [t.strip().upper() for t in args.types.split(",") if t.strip()]
    assert all(t in OPTIMIZED_TYPES for t in types), types
    data = subjects(args.rows)
    for w in (ws[0] for ws in data.values()):  # compile every kernel before timing
        for t in types:
            qt = quant_type(t)
            if w.shape[1] % qt.block_size == 0:
                im = np.ones(w.shape[1], np.float32) if qt.requires_imatrix else None
                quantize(w[:1], t, imatrix=im, optimize=True)
    names = list(data)
    print("| type | " + " | ".join(f"{n} error ratio" for n in names) + " | mean | time ratio |")
    print("|---|" + "---:|" * (len(names) + 2))
    means = []
    for t in types:
        cells, times = [], []
        ratios = []
        for n in names:
            r, tr, used = measure(t, data[n])
            cells.append("-" if used == 0 else f"{r:.3f}")
            if used:
                ratios.append(r)
                times.append(tr)
        mean = float(np.mean(ratios))
        means.append(mean)
        print(f"| {t} | " + " | ".join(cells) + f" | {mean:.3f} | {np.mean(times):.2f} |", flush=True)
    print(f"\nmean over types: {np.mean(means):.3f}; worst type: {max(means):.3f}")


if __name__ == "__main__":
    main()
