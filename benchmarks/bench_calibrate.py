"""What --optimize --calibrate (error feedback) buys on a whole model: KLD to the float model.

SmolLM2-135M's Hugging Face folder is rebuilt from a Q4_1 GGUF, so its weights sit on a Q4_1 grid;
a copy with small seeded noise (every 2-D tensor + N(0, (noise * its std)^2), seed 0) is made first
so that the grid flatters no method. Each preset is converted by quantkit twice - the default
(llama.cpp's bytes) and ``--optimize --calibrate`` (calibration: the held-in second half of
quantkit's calibration.txt) - and each file's matrices, dequantized, are put into the float32
transformers model. Measured on the held-out first half of the text (``--eval-chunks`` chunks of
``--ctx`` tokens from its start, none of them seen by the calibration): mean KL(float || quantized)
of the next-token distributions and top-1 agreement with the float model.

    python benchmarks/bench_calibrate.py [--types Q4_K_M,Q3_K_M,IQ4_XS,Q2_K] [--noise 0.02]
                                         [--eval-chunks 8] [--ctx 512] [--calibration-chunks N]
"""

from __future__ import annotations

import argparse
import shutil
import time
from pathlib import Path

import numpy as np


def noised_copy(src: Path, dst: Path, noise: float, seed: int = 0) -> Path:
    """``src`` with every 2-D float tensor + N(0, (noise * std)^2), saved as float32 in ``dst``."""
    import torch
    from safetensors.torch import load_file, save_file

    if (dst / "model.safetensors").exists():
        return dst
    dst.mkdir(parents=True, exist_ok=True)
    for f in src.iterdir():
        if f.is_file() and f.suffix != ".safetensors":
            shutil.copy(f, dst / f.name)
    generator = torch.Generator().manual_seed(seed)
    state = {}
    for name, t in sorted(load_file(str(src / "model.safetensors")).items()):
        t = t.float()
        if t.ndim == 2:
            t = t + torch.randn(t.shape, generator=generator) * (noise * t.std())
        state[name] = t.contiguous()
    save_file(state, str(dst / "model.safetensors"), metadata={"format": "pt"})
    return dst


def logprobs(model, chunks) -> np.ndarray:
    """float64 log-softmax at every position of every chunk, (positions, vocab)."""
    import torch

    from quantkit.eval.metrics import log_softmax

    with torch.inference_mode():
        return np.concatenate([log_softmax(model(input_ids=torch.tensor([c])).logits[0].numpy()) for c in chunks])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--types", default="Q4_K_M,Q3_K_M,IQ4_XS,Q2_K")
    parser.add_argument("--noise", type=float, default=0.02, help="noise std as a fraction of each tensor's std")
    parser.add_argument("--ctx", type=int, default=512)
    parser.add_argument("--eval-chunks", type=int, default=8)
    parser.add_argument("--calibration-chunks", type=int, default=None, help="default: all of the held-in half")
    parser.add_argument("--work", default="/tmp/bench_calibrate")
    args = parser.parse_args()

    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from quantkit import convert
    from quantkit.eval.backends import checkpoint_tensors
    from quantkit.eval.metrics import kld
    from quantkit.jobs.calibrate import DEFAULT_CALIBRATION, calibration_text
    from quantkit.jobs.imatrix import tokenize_chunks
    from quantkit.models import smollm2_hf_dir

    work = Path(args.work)
    model_dir = noised_copy(smollm2_hf_dir(), work / f"smollm2-noise{args.noise}", args.noise)
    full = DEFAULT_CALIBRATION.read_text(encoding="utf-8")
    held_in = calibration_text()
    held_out = full[: len(full) - len(held_in)]
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    eval_chunks = tokenize_chunks(tokenizer, held_out, args.ctx, args.eval_chunks)
    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32).eval()
    original = {k: v.detach().clone() for k, v in model.state_dict().items()}
    base = logprobs(model, eval_chunks)
    top1 = base.argmax(-1)
    calibration = None
    if args.calibration_chunks:
        ids = tokenizer(held_in)["input_ids"][: args.calibration_chunks * args.ctx]
        calibration = work / "calibration.txt"
        calibration.write_text(tokenizer.decode(ids), encoding="utf-8")

    print(f"model {model_dir}; KLD on {len(eval_chunks)} x {args.ctx} held-out tokens")
    print("| preset | default KLD | --calibrate KLD | ratio | top-1 default | top-1 --calibrate | "
          "convert s default | convert s --calibrate |")
    print("|---|---|---|---|---|---|---|---|")
    for preset in args.types.split(","):
        results = {}
        for variant, options in (("default", {}), ("cal", {"optimize": True, "calibrate": True,
                                                          "calibration": calibration})):
            path = work / f"{preset}.{variant}.gguf"
            start = time.perf_counter()
            convert(model_dir, path, preset, overwrite=True, progress=False, **options)
            seconds = time.perf_counter() - start
            model.load_state_dict(original)
            with torch.no_grad():
                for hf_name, values in checkpoint_tensors(model_dir, preset, path):
                    model.get_parameter(hf_name).data.copy_(torch.from_numpy(values))
            lp = logprobs(model, eval_chunks)
            results[variant] = (float(kld(base, lp).mean()), float((lp.argmax(-1) == top1).mean()), seconds)
        (k0, a0, s0), (k1, a1, s1) = results["default"], results["cal"]
        print(f"| {preset} | {k0:.5f} | {k1:.5f} | {k1 / k0:.3f} | {a0:.4f} | {a1:.4f} | {s0:.0f} | {s1:.0f} |",
              flush=True)


if __name__ == "__main__":
    main()
