"""``convert``: a Hugging Face safetensors folder to a GGUF file llama.cpp runs (see docs/convert.md)."""

from .pipeline import ConversionPlan, ConversionResult, convert, plan_conversion

__all__ = ["ConversionPlan", "ConversionResult", "convert", "plan_conversion"]
