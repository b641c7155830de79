"""One module per CLI command (``quantkit <name>``), each defining a click command ``<name>``.

``quantkit.cli`` imports a module here only when its command runs; the options several commands
share are defined here once.
"""

import click

from ..ggufio import parse_split_size
from ..plan.recipes import read_recipe
from ..plan.targets import Target, parse_size


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


def _target_size(ctx, param, value):
    return None if value is None else parse_size(value)  # a QuantkitError: one line, exit 2


def tensor_type_items(tensor_types, tensor_type_file) -> list[str]:
    """The ``--tensor-type`` items, then those of ``--tensor-type-file`` (first match wins)."""
    return list(tensor_types) + (read_recipe(tensor_type_file) if tensor_type_file else [])


def target_of(target_size, target_bpw) -> Target | None:
    return None if target_size is None and target_bpw is None else Target(target_size, target_bpw)


def device_option(command):
    """``--device cpu|cuda``: where torch runs (default: cuda when available)."""
    return click.option("--device", type=click.Choice(["cpu", "cuda"]), default=None,
                        help="Where torch runs the model [default: cuda when available, else cpu].")(command)


def mix_options(command):
    """``--tensor-type-file``, ``--target-size``, ``--target-bpw``, ``-f``, ``--ray-address`` and ``--device``: recipes and
    size-targeted mixes (docs/automix.md)."""
    command = device_option(command)
    command = click.option("--ray-address", default=None, metavar="ADDRESS",
                           help="Run the sensitivity probes as Ray tasks on the cluster at ADDRESS ('local': start "
                                "Ray here); the model folder must be at the same path on every node.")(command)
    command = click.option("-f", "--calibration", "--calibration-file", "calibration_file",
                           type=click.Path(dir_okay=False), default=None,
                           help="Text the sensitivity probes and --calibrate run on [default: the built-in calibration "
                                "text; --calibrate uses its held-in half].")(command)
    command = click.option("--target-bpw", type=click.FloatRange(min=0, min_open=True), default=None, metavar="BPW",
                           help="Choose the types per tensor group from measured sensitivity so that the file "
                                "has at most BPW bits per weight (all tensors, as llama.cpp reports).")(command)
    command = click.option("--target-size", default=None, callback=_target_size, metavar="SIZE",
                           help="Like --target-bpw, for a file of at most SIZE bytes (K, M, G: powers of 1000; "
                                "KiB, MiB, GiB: of 1024). Writes OUT.recipe.txt beside the file.")(command)
    return click.option("--tensor-type-file", type=click.Path(dir_okay=False), default=None, metavar="FILE",
                        help="REGEX=TYPE items separated by spaces or newlines, as llama-quantize's "
                             "--tensor-type-file (after any --tensor-type).")(command)
