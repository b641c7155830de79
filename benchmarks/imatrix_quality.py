"""What SmolLM2-135M's importance matrix buys: quantization error with and without it.

The imatrix is collected on the first half of quantkit's calibration text, the error measured on
activations of its second half (held out). For every weight matrix whose rows the type can take
(SmolLM2: the 30 ffn_down, 1536 wide; the others are 576 wide, not a multiple of 256), each
type quantizes it without an imatrix (types that need one: with an all-ones imatrix) and with it.
Reported, summed over those tensors:

- weighted error: sum over rows and columns of heldout_imatrix[col] * (w - dequant(quant(w)))^2,
  the diagonal estimate of the output error E||(W - W_q) x||^2 on held-out activations;
- with --kld: mean KL(base || quantized) of next-token distributions on held-out chunks, the model
  running in torch with those tensors replaced by their dequantized quantizations (the others
  untouched), via quantkit.eval.metrics.

    python benchmarks/imatrix_quality.py [--types Q2_K,IQ3_XXS,IQ2_XS] [--ctx 512] [--chunks 8]
                                         [--heldout-chunks 4] [--kld] [--kld-chunks 2]
"""

from __future__ import annotations

import argparse
import time

import numpy as np


def heldout_logprobs(model, chunks):
    """float64 log-softmax of the logits at every position of every chunk, (positions, vocab)."""
    import torch

    from quantkit.eval.metrics import log_softmax

    with torch.inference_mode():
        return np.concatenate([log_softmax(model(input_ids=torch.tensor([c])).logits[0].numpy()) for c in chunks])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--types", default="Q2_K,IQ3_XXS,IQ2_XS")
    parser.add_argument("--ctx", type=int, default=512)
    parser.add_argument("--chunks", type=int, default=8, help="calibration chunks")
    parser.add_argument("--heldout-chunks", type=int, default=4)
    parser.add_argument("--kld", action="store_true", help="also the KL divergence of the model's outputs")
    parser.add_argument("--kld-chunks", type=int, default=2)
    args = parser.parse_args()

    import torch
    from safetensors.torch import load_file
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from quantkit import dequantize, quantize
    from quantkit.commands.imatrix import DEFAULT_CALIBRATION
    from quantkit.sources.archs import arch_for
    from quantkit.jobs.imatrix import collect_imatrix, tokenize_chunks
    from quantkit.models import smollm2_hf_dir
    from quantkit.sources.hf import HFSource
    from quantkit.types import quant_type

    model_dir = smollm2_hf_dir()
    text = DEFAULT_CALIBRATION.read_text(encoding="utf-8")
    calibration, heldout = text[: len(text) // 2], text[len(text) // 2 :]
    start = time.perf_counter()
    im = collect_imatrix(model_dir, calibration, ctx=args.ctx, chunks=args.chunks)
    print(f"calibration imatrix: {args.chunks} x {args.ctx} tokens in {time.perf_counter() - start:.0f} s")
    held = collect_imatrix(model_dir, heldout, ctx=args.ctx, chunks=args.heldout_chunks)

    name_map = arch_for(HFSource(model_dir)).name_map
    state = {k: v.float() for k, v in load_file(str(model_dir / "model.safetensors")).items()}
    gguf_name = {hf: name_map.get_name(hf, try_suffixes=(".weight",)) for hf in state}
    model = kld_chunks = base = None
    if args.kld:
        model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32).eval()
        tokenizer = AutoTokenizer.from_pretrained(model_dir)
        kld_chunks = tokenize_chunks(tokenizer, heldout, args.ctx, args.heldout_chunks + args.kld_chunks)[-args.kld_chunks :]
        base = heldout_logprobs(model, kld_chunks)

    rows = []
    for qtype in args.types.split(","):
        block = quant_type(qtype).block_size
        tensors = [hf for hf, name in gguf_name.items() if name in im and state[hf].shape[-1] % block == 0]
        results = {}
        for variant in ("without", "with"):
            error = 0.0
            for hf in tensors:
                w = state[hf].numpy()
                name = gguf_name[hf]
                weights = im[name] if variant == "with" else (np.ones_like(im[name]) if quant_type(qtype).requires_imatrix else None)
                q = dequantize(quantize(w, qtype, imatrix=weights)).reshape(w.shape)
                error += float((held[name][None, :].astype(np.float64) * (w.astype(np.float64) - q) ** 2).sum())
                if model is not None:
                    model.get_parameter(hf).data.copy_(torch.from_numpy(q))
            kld = None
            if model is not None:
                from quantkit.eval.metrics import kld as kl_divergence

                kld = float(kl_divergence(base, heldout_logprobs(model, kld_chunks)).mean())
                for hf in tensors:
                    model.get_parameter(hf).data.copy_(state[hf])
            results[variant] = (error, kld)
        baseline = "ones" if quant_type(qtype).requires_imatrix else "none"
        rows.append((qtype, len(tensors), baseline, results))

    print(f"\nimatrix: {args.chunks} x {args.ctx} tokens of the first half of calibration.txt; "
          f"error weighted by {args.heldout_chunks} x {args.ctx} tokens of the second half")
    header = "| type | tensors | baseline imatrix | weighted error, baseline | weighted error, imatrix | ratio |"
    if args.kld:
        header += " KLD, baseline | KLD, imatrix |"
    print(header)
    print("|" + "---|" * (header.count("|") - 1))
    for qtype, n, baseline, results in rows:
        (e0, k0), (e1, k1) = results["without"], results["with"]
        line = f"| {qtype} | {n} | {baseline} | {e0:.4f} | {e1:.4f} | {e1 / e0:.3f} |"
        if args.kld:
            line += f" {k0:.4f} | {k1:.4f} |"
        print(line)


if __name__ == "__main__":
    main()
