"""``quantkit quantize SOURCE OUTPUT PRESET``: requantize a GGUF file with a llama-quantize preset."""

import click

from ..jobs.calibrate import HessianFile
from ..jobs.quantize import requantize
from ..plan.imatrix_file import read_imatrix
from ..plan.overrides import parse_overrides
from ..plan.presets import resolve_preset
from . import split_options, tensor_type_items


@click.command()
@click.argument("source", type=click.Path(dir_okay=False))
@click.argument("output", type=click.Path(dir_okay=False))
@click.argument("preset")
@click.option("--imatrix", "imatrix_path", type=click.Path(dir_okay=False), default=None,
              help="Importance matrix file (llama.cpp's imatrix GGUF or legacy .dat).")
@click.option("--tensor-type", "tensor_types", multiple=True, metavar="REGEX=TYPE",
              help="Give tensors whose name matches REGEX the type TYPE (repeatable; first match wins).")
@click.option("--tensor-type-file", type=click.Path(dir_okay=False), default=None, metavar="FILE",
              help="REGEX=TYPE items separated by spaces or newlines, as llama-quantize's --tensor-type-file "
                   "(after any --tensor-type).")
@click.option("--pure", is_flag=True, help="Give every quantizable tensor the preset's default type.")
@click.option("--output-tensor-type", "output_type", default=None, metavar="TYPE", help="Type for output.weight.")
@click.option("--token-embedding-type", default=None, metavar="TYPE", help="Type for token_embd.weight.")
@click.option("--threads", type=int, default=None, help="Threads for the kernels (default: all cores).")
@click.option("--force", is_flag=True, help="Overwrite OUTPUT if it exists.")
@click.option("--optimize", is_flag=True,
              help="Search harder within the same types (data-free; same sizes; llama.cpp runs it). See docs/optimize.md.")
@click.option("--calibrate-from", "hessians_path", type=click.Path(dir_okay=False), default=None,
              help="With --optimize: input second moments (quantkit imatrix --hessians) for error feedback.")
@split_options
def quantize(source, output, preset, imatrix_path, tensor_types, tensor_type_file, pure, output_type,
             token_embedding_type, threads, force, optimize, hessians_path, split_max_size, split_max_tensors):
    """Quantize SOURCE.gguf into OUTPUT.gguf with PRESET, choosing each tensor's type as llama-quantize does.

    PRESET: F32 F16 BF16 Q8_0 Q4_0 Q4_1 Q5_0 Q5_1 Q2_K Q2_K_S Q3_K_S Q3_K_M Q3_K_L Q4_K_S Q4_K_M Q5_K_S
    Q5_K_M Q6_K IQ1_S IQ1_M IQ2_XXS IQ2_XS IQ2_S IQ2_M IQ3_XXS IQ3_XS IQ3_S IQ3_M IQ4_NL IQ4_XS TQ1_0 TQ2_0
    (any case; Q3_K, Q4_K, Q5_K mean their _M presets).
    """
    resolve_preset(preset)  # an unknown preset fails before the imatrix is read
    overrides = parse_overrides(tensor_type_items(tensor_types, tensor_type_file))
    imatrix = extra_metadata = None
    if imatrix_path is not None:
        imatrix = read_imatrix(imatrix_path)
        extra_metadata = imatrix.quantize_metadata(imatrix_path)  # the quantize.imatrix.* keys llama-quantize adds
    hessians = None if hessians_path is None else HessianFile(hessians_path)
    requantize(source, output, preset, imatrix=imatrix, threads=threads, overwrite=force, overrides=overrides,
               pure=pure, output_type=output_type, token_embedding_type=token_embedding_type,
               extra_metadata=extra_metadata, split_max_size=split_max_size, split_max_tensors=split_max_tensors,
               optimize=optimize, hessians=hessians)
