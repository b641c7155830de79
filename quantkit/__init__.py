"""quantkit: GGUF files llama.cpp runs, quantized in Python byte for byte as llama.cpp does.

The public API is imported lazily so that ``import quantkit`` (and the CLI's start-up) does not
pull in numba or torch.
"""

import importlib
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # what the lazy exports below resolve to, for type checkers
    from .errors import QuantkitError
    from .ggufio import GGUFStreamWriter, read_gguf, write_gguf
    from .jobs.convert import convert
    from .jobs.lora import convert_lora
    from .quants import QuantizedTensor, dequantize, quantize

__version__ = "0.1.0"  # the one version source (pyproject.toml reads it)

_EXPORTS = {
    "quantize": "quantkit.quants",
    "dequantize": "quantkit.quants",
    "QuantizedTensor": "quantkit.quants",
    "read_gguf": "quantkit.ggufio",
    "write_gguf": "quantkit.ggufio",
    "GGUFStreamWriter": "quantkit.ggufio",
    "QuantkitError": "quantkit.errors",
    "convert": "quantkit.jobs.convert",
    "convert_lora": "quantkit.jobs.lora",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name):
    if name in _EXPORTS:
        return getattr(importlib.import_module(_EXPORTS[name]), name)
    raise AttributeError(f"module 'quantkit' has no attribute {name!r}")
