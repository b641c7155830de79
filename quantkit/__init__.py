"""quantkit: GGUF files llama.cpp runs, quantized in Python byte for byte as llama.cpp does.

The public API is imported lazily so that ``import quantkit`` (and the CLI's start-up) does not
pull in numba or torch.
"""

__version__ = "0.1.0"

_EXPORTS = {
    "quantize": "quantkit.quants",
    "dequantize": "quantkit.quants",
    "QuantizedTensor": "quantkit.quants",
    "read_gguf": "quantkit.ggufio",
    "write_gguf": "quantkit.ggufio",
    "GGUFStreamWriter": "quantkit.ggufio",
    "QuantkitError": "quantkit.errors",
    "convert": "quantkit.converter",
    "convert_lora": "quantkit.converter",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name):
    if name in _EXPORTS:
        import importlib

        return getattr(importlib.import_module(_EXPORTS[name]), name)
    raise AttributeError(f"module 'quantkit' has no attribute {name!r}")
