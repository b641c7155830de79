"""``quantkit lora ADAPTER_DIR --base MODEL_DIR -o adapter.gguf``: a PEFT LoRA adapter as llama.cpp's GGUF adapter."""

import click

from ..jobs.lora import convert_lora


@click.command()
@click.argument("adapter_dir", type=click.Path(file_okay=False))
@click.option("--base", "base_dir", required=True, type=click.Path(file_okay=False),
              help="The Hugging Face folder of the model the adapter was trained on (its architecture names the tensors).")
@click.option("-o", "--output", required=True, type=click.Path(dir_okay=False), help="The GGUF adapter to write.")
@click.option("-t", "--type", "type_name", default="F16", show_default=True, help="F32, F16, BF16 or Q8_0.")
@click.option("--threads", type=int, default=None, help="Threads for the kernels (default: the idle cores, i.e. cores minus the load average).")
@click.option("--force", is_flag=True, help="Overwrite OUTPUT if it exists.")
def lora(adapter_dir, base_dir, output, type_name, threads, force):
    """Convert the PEFT LoRA adapter ADAPTER_DIR (adapter_config.json + adapter_model.safetensors) to the GGUF
    adapter llama.cpp applies with --lora."""
    convert_lora(adapter_dir, base_dir, output, type_name, overwrite=force, threads=threads)
