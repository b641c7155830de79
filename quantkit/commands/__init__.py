"""One module per CLI command (``quantkit <name>``), each defining a click command ``<name>``.

``quantkit.cli`` imports a module here only when its command runs; the options several commands
share are defined here once.
"""

import click

from ..ggufio import parse_split_size


def _split_size(ctx, param, value):
    return 0 if value is None else parse_split_size(value)  # a QuantkitError: one line, exit 2


def lora_options(command):
    """``--lora ADAPTER_DIR`` (repeatable) and ``--lora-scale S``: merge PEFT LoRA adapters into the weights."""
    command = click.option("--lora-scale", type=float, default=1.0, show_default=True,
                           help="Multiply each adapter's alpha/r * B @ A by S before adding it.")(command)
    return click.option("--lora", multiple=True, type=click.Path(file_okay=False), metavar="ADAPTER_DIR",
                        help="PEFT LoRA adapter folder merged into the weights as they are read (repeatable).")(command)


def split_options(command):
    """``--split-max-size SIZE`` and ``--split-max-tensors N``: write llama.cpp's split files."""
    command = click.option("--split-max-tensors", type=click.IntRange(min=0), default=0,
                           help="Write OUT-00001-of-0000N.gguf shards of at most N tensors.")(command)
    return click.option("--split-max-size", default=None, callback=_split_size, metavar="SIZE",
                        help="Write OUT-00001-of-0000N.gguf shards of at most SIZE tensor bytes (K, M, G: "
                             "powers of 1000, as llama.cpp).")(command)
