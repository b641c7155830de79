"""A short user program against the public API; tests/test_packaging.py type-checks it with mypy."""

from pathlib import Path

import numpy as np

from quantkit import QuantizedTensor, dequantize, quantize, read_gguf, write_gguf


def roundtrip(path: Path) -> float:
    weights = np.random.default_rng(0).standard_normal((64, 256)).astype(np.float32)
    q: QuantizedTensor = quantize(weights, "Q4_K", imatrix=np.ones(256, np.float32), threads=1)
    restored: np.ndarray = dequantize(q)
    with read_gguf(path) as f:
        names: list[str] = [t.name for t in f.tensors]
        write_gguf(path.with_suffix(".copy.gguf"), f.metadata, f.tensors, overwrite=True)
    return float(np.abs(restored - weights).max()) + len(names)
