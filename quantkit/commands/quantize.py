"""``quantkit quantize SOURCE OUTPUT QTYPE``: requantize a GGUF file."""

import click


@click.command()
@click.argument("source", type=click.Path(dir_okay=False))
@click.argument("output", type=click.Path(dir_okay=False))
@click.argument("qtype")
@click.option("--threads", type=int, default=None, help="Threads for the kernels (default: all cores).")
@click.option("--force", is_flag=True, help="Overwrite OUTPUT if it exists.")
def quantize(source, output, qtype, threads, force):
    """Requantize SOURCE.gguf's weight matrices to QTYPE (e.g. Q8_0) into OUTPUT.gguf."""
    from ..requantize import requantize

    requantize(source, output, qtype, threads=threads, overwrite=force)
