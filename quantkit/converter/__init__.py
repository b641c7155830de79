"""``convert``: a Hugging Face safetensors folder to a GGUF file llama.cpp runs; ``convert_lora``: a PEFT
LoRA adapter to llama.cpp's GGUF adapter (see docs/convert.md)."""

from .lora import convert_lora
from .pipeline import ConversionPlan, ConversionResult, convert, plan_conversion

__all__ = ["ConversionPlan", "ConversionResult", "convert", "convert_lora", "plan_conversion"]
