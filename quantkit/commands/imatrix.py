"""``quantkit imatrix MODEL_DIR -o imatrix.gguf``: an importance matrix from calibration text."""

from pathlib import Path

import click

from ..errors import OutputError, QuantkitError
from ..extras import require_extra
from ..jobs.calibrate import collect_hessians, save_hessians
from ..jobs.imatrix import collect_imatrix
from ..plan.imatrix_file import write_imatrix
from . import lora_options

# The calibration text shipped with quantkit (sources and licences: CALIBRATION-SOURCES.md beside it).
DEFAULT_CALIBRATION = Path(__file__).resolve().parent.parent / "eval" / "data" / "calibration.txt"


@click.command()
@click.argument("model_dir", type=click.Path(file_okay=False))
@click.option("-f", "--file", "text_file", type=click.Path(dir_okay=False), default=None,
              help="Calibration text (UTF-8); default: quantkit's own calibration.txt.")
@click.option("-o", "--output", required=True, type=click.Path(dir_okay=False), help="The imatrix GGUF to write.")
@click.option("--ctx", type=int, default=512, show_default=True, help="Tokens per chunk.")
@click.option("--chunks", type=int, default=None, help="Chunks to process (default: all full chunks of the text).")
@click.option("--device", default=None, help="torch device (default: cuda if present, else cpu).")
@click.option("--process-output", is_flag=True, help="Record output.weight too, as llama-imatrix --process-output.")
@click.option("--force", is_flag=True, help="Overwrite OUTPUT if it exists.")
@click.option("--hessians", "hessians_path", type=click.Path(dir_okay=False), default=None,
              help="Also write each decoder weight's input second moments (safetensors) for "
                   "quantize --optimize --calibrate-from.")
@lora_options
def imatrix(model_dir, text_file, output, ctx, chunks, device, process_output, force, hessians_path, lora,
            lora_scale):
    """Compute MODEL_DIR's importance matrix over a text, in llama.cpp's imatrix GGUF format."""
    require_extra("eval", "quantkit imatrix")

    for path in (output, hessians_path):
        if path is not None and Path(path).exists() and not force:
            raise OutputError(f"{path}: exists (use --force to overwrite)")
    if hessians_path is not None and lora:
        raise QuantkitError("--hessians cannot be combined with --lora yet")
    source = Path(text_file) if text_file else DEFAULT_CALIBRATION
    try:
        text = source.read_text(encoding="utf-8")
    except UnicodeDecodeError as e:
        raise QuantkitError(f"{source}: not UTF-8 text (byte {e.start})") from None
    dataset = str(text_file) if text_file else "quantkit/eval/data/calibration.txt"
    im = collect_imatrix(model_dir, text, ctx=ctx, chunks=chunks, device=device, dataset=dataset,
                         process_output=process_output, lora=lora, lora_scale=lora_scale)
    write_imatrix(output, im, overwrite=force)
    click.echo(f"{output}: {len(im)} tensors, {im.chunk_count} chunks of {ctx} tokens from {dataset}")
    if hessians_path is not None:
        hessians = collect_hessians(model_dir, text, ctx=ctx, chunks=chunks)
        save_hessians(hessians_path, hessians)
        click.echo(f"{hessians_path}: {len(hessians)} second-moment matrices from the same text")
