"""``quantkit scorecard``: what each quantization of a model costs, against its 16-bit weights."""

import click

from ..eval import DEFAULT_TYPES, Settings
from ..eval import scorecard as run_scorecard
from ..eval.report import recommend
from ..extras import require_extra
from ..plan.targets import parse_size
from . import device_option, lora_options


@click.command()
@click.argument("model_dir", type=click.Path())
@click.option("--types", default=",".join(DEFAULT_TYPES), show_default=True,
              help="Comma-separated GGUF types or llama.cpp presets; TYPE+opt: with --optimize, TYPE+cal: with "
                   "--optimize --calibrate; auto@4.5bpw or auto@100MB: a size-targeted mix.")
@click.option("--imatrix", type=click.Path(), default=None, help="Importance matrix file (quantkit imatrix).")
@click.option("--prompts", type=click.Path(), default=None, help="Prompts, one per line [default: the shipped set].")
@click.option("--text", type=click.Path(), default=None, help="Text for the KLD and perplexity [default: calibration text].")
@click.option("--backend", type=click.Choice(["torch", "llama.cpp"]), default="torch", show_default=True)
@click.option("--embedder", type=click.Path(), default=None,
              help="sentence-transformers model folder [default: all-MiniLM-L6-v2].")
@click.option("--max-new-tokens", type=int, default=Settings.max_new_tokens, show_default=True)
@click.option("--text-tokens", type=int, default=Settings.text_tokens, show_default=True)
@click.option("--threads", type=int, default=None)
@click.option("-o", "--output", "out_dir", default="report", type=click.Path(file_okay=False), show_default=True)
@click.option("--budget", default=None, metavar="SIZE",
              help="Print the variant of least KLD whose file is at most SIZE (e.g. 100MB).")
@device_option
@lora_options
def scorecard(model_dir, types, imatrix, prompts, text, backend, embedder, max_new_tokens, text_tokens, threads, out_dir,
              budget, device, lora, lora_scale):
    """Quantize MODEL_DIR (a Hugging Face folder) to each type and measure answers, KLD and perplexity
    against its 16-bit weights; writes scorecard.md, scorecard.json and scorecard.png."""
    require_extra("eval", "quantkit scorecard")
    if budget is not None:
        parse_size(budget, "--budget")  # a bad size fails before any work
    settings = Settings(max_new_tokens=max_new_tokens, text_tokens=text_tokens)
    result = run_scorecard(model_dir, types, out_dir, backend=backend, imatrix=imatrix, prompts=prompts, text=text,
                           embedder=embedder, settings=settings, threads=threads, lora=lora, lora_scale=lora_scale,
                           device=device)
    click.echo(f"wrote {out_dir}/scorecard.md, scorecard.json, scorecard.png")
    if budget is not None:
        pick = recommend(result, budget)
        if pick is None:
            click.echo(f"budget {budget}: no variant fits")
        else:
            click.echo(f"budget {budget}: {pick['type']} ({pick['size_bytes'] / 1e6:.1f} MB, "
                       f"{pick['bits_per_weight']:.2f} bits per weight, KLD {pick['text']['kld']['mean']:.4f})")
