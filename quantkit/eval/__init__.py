"""What each quantization costs: ``scorecard(model_dir, types, out_dir, ...)`` (see report.py).

Backends (torch: dequantized weights in transformers; llama.cpp: the converted GGUF through
xllamacpp) are in backends.py, the metrics and their bootstrap intervals in metrics.py.
"""

from .report import DEFAULT_TYPES, Settings, scorecard

__all__ = ["DEFAULT_TYPES", "Settings", "scorecard"]
