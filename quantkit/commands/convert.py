"""``quantkit convert MODEL_DIR -o OUT.gguf --type PRESET``: a Hugging Face folder to GGUF in one pass."""

import click

from ..errors import QuantkitError
from ..eval.automix import auto_convert
from ..eval.report import read_text
from ..extras import require_extra
from ..jobs.convert import convert as run_convert
from . import lora_options, mix_options, split_options, target_of, tensor_type_items


@click.command()
@click.argument("model_dir", type=click.Path(file_okay=False))
@click.option("-o", "--output", type=click.Path(dir_okay=False), help="The GGUF file to write.")
@click.option("-t", "--type", "preset", default="F16", show_default=True,
              help="F32, F16, BF16, Q8_0 (as llama.cpp's converter) or a llama-quantize preset (Q4_K_M, ...).")
@click.option("--imatrix", type=click.Path(dir_okay=False), help="Importance matrix (GGUF or legacy .dat).")
@click.option("--tensor-type", "tensor_types", multiple=True, metavar="REGEX=TYPE",
              help="Give tensors whose name matches REGEX the type TYPE (repeatable; first match wins).")
@click.option("--dry-run", is_flag=True, help="Print the per-tensor plan and the expected size; write nothing.")
@click.option("--threads", type=int, default=None,
              help="Threads for the kernels (default: the idle cores, i.e. cores minus the load average).")
@click.option("--force", is_flag=True, help="Overwrite OUTPUT if it exists.")
@click.option("--optimize", is_flag=True,
              help="Search harder within the same types (data-free; same sizes; llama.cpp runs it). See docs/optimize.md.")
@click.option("--calibrate", is_flag=True,
              help="With --optimize: run the model on calibration text and quantize with error feedback (GPTQ).")
@lora_options
@split_options
@mix_options
def convert(model_dir, output, preset, imatrix, tensor_types, dry_run, threads, force, optimize, calibrate, lora,
            lora_scale, split_max_size, split_max_tensors, tensor_type_file, target_size, target_bpw, calibration_file,
            ray_address, device):
    """Convert the Hugging Face safetensors folder MODEL_DIR to a GGUF file llama.cpp runs."""
    if calibrate and not dry_run:
        require_extra("eval", "quantkit convert --calibrate")
    if output is None and not dry_run:
        raise QuantkitError("missing -o OUT.gguf (or pass --dry-run)")
    tensor_types = tensor_type_items(tensor_types, tensor_type_file)
    target = target_of(target_size, target_bpw)
    if target is not None:
        if dry_run or lora or split_max_size or split_max_tensors or calibrate:
            raise QuantkitError("--target-size/--target-bpw do not combine with --dry-run, --lora, --split-* or --calibrate")
        require_extra("eval", "quantkit convert --target-size/--target-bpw")
        text = None if calibration_file is None else read_text(calibration_file, "calibration text")
        auto_convert(model_dir, output, target, imatrix=imatrix, tensor_types=tensor_types, text=text, device=device,
                     threads=threads, overwrite=force, ray_address=ray_address, optimize=optimize)
        return
    run_convert(model_dir, output, preset, imatrix=imatrix, tensor_types=tensor_types, dry_run=dry_run,
                threads=threads, overwrite=force, lora=lora, lora_scale=lora_scale,
                split_max_size=split_max_size, split_max_tensors=split_max_tensors, optimize=optimize,
                calibrate=calibrate, calibration=calibration_file)
