"""NaN and Inf in tensors kept as F32/F16/BF16 (norms, biases, ``--type F32``, tensors a preset copies
unchanged) are refused with the same one-line NonFiniteError as in quantized tensors, by convert and by
quantize, leaving no output."""

import os
from typing import NamedTuple

import numpy as np
import pytest
from click.testing import CliRunner

from quantkit import read_gguf, write_gguf
from quantkit.cli import main
from quantkit.errors import NonFiniteError
from quantkit.quants import QuantizedTensor
from test_convert_errors import assert_one_line_error, no_output_left
from test_convert_support import llama_weights
from test_convert_support import make_llama_folder as make_folder

os.environ.setdefault("HF_HUB_OFFLINE", "1")


@pytest.mark.parametrize("hf_name, gguf_name, preset, row, col", [
    ("model.layers.0.input_layernorm.weight", "blk.0.attn_norm.weight", "Q8_0", 0, 9),  # kept F32 by the preset
    ("model.norm.weight", "output_norm.weight", "Q4_K_M", 0, 9),
    ("model.layers.0.mlp.down_proj.weight", "blk.0.ffn_down.weight", "F32", 3, 9),  # --type F32
])
@pytest.mark.parametrize("bad", [np.nan, np.inf])
def test_convert_refuses_nonfinite_f32_tensors(tmp_path, smollm2_hf_dir, hf_name, gguf_name, preset, row, col, bad):
    weights = llama_weights()
    weights[hf_name].reshape(-1, weights[hf_name].shape[-1])[row, col] = bad
    folder = make_folder(tmp_path, smollm2_hf_dir, weights)
    result = CliRunner().invoke(main, ["convert", str(folder), "-o", str(tmp_path / "out.gguf"), "--type", preset])
    assert_one_line_error(result, f"{gguf_name}: non-finite value {bad} at row {row}, column {col}")
    assert no_output_left(tmp_path)


class Stored(NamedTuple):
    name: str
    qtype: object
    shape: tuple
    data: np.ndarray


STORED = {  # float32 values -> the bytes of each float type (rounding is beside the point here)
    "F32": lambda v: v.astype(np.float32).view(np.uint8),
    "F16": lambda v: v.astype(np.float16).view(np.uint8),
    "BF16": lambda v: (v.astype(np.float32).view(np.uint32) >> 16).astype(np.uint16).view(np.uint8),
}


def _with_bad_norm(src, dst, qtype, bad):
    """A copy of GGUF ``src`` whose blk.0.attn_norm.weight is stored as ``qtype`` and holds ``bad`` at column 5."""
    from gguf import GGMLQuantizationType

    with read_gguf(src) as f:
        tensors = list(f.tensors)
        i = next(i for i, t in enumerate(tensors) if t.name == "blk.0.attn_norm.weight")
        values = tensors[i].dequantize().copy()
        values[5] = bad
        tensors[i] = Stored(tensors[i].name, GGMLQuantizationType[qtype], values.shape, STORED[qtype](values))
        return write_gguf(dst, f.metadata, tensors)


@pytest.mark.parametrize("qtype", ["F32", "F16", "BF16"])
@pytest.mark.parametrize("bad", [np.nan, -np.inf])
def test_quantize_refuses_nonfinite_copied_tensors(tmp_path, smollm2_path, qtype, bad):
    src = _with_bad_norm(smollm2_path, tmp_path / "in.gguf", qtype, bad)
    result = CliRunner().invoke(main, ["quantize", str(src), str(tmp_path / "out.gguf"), "Q4_K_M"])
    assert_one_line_error(result, f"blk.0.attn_norm.weight: non-finite value {bad} at row 0, column 5")
    assert not (tmp_path / "out.gguf").exists() and not [p for p in tmp_path.iterdir() if ".tmp-" in p.name]


@pytest.mark.parametrize("qtype", ["F32", "F16", "BF16"])
def test_check_finite_reads_stored_floats(qtype):
    from gguf import GGMLQuantizationType

    from quantkit.quants import check_finite

    values = np.zeros((3, 8), np.float32)
    check_finite(QuantizedTensor(GGMLQuantizationType[qtype], values.shape, STORED[qtype](values)))  # finite
    values[2, 6] = np.inf
    with pytest.raises(NonFiniteError, match=r"^w: non-finite value inf at row 2, column 6$"):
        check_finite(QuantizedTensor(GGMLQuantizationType[qtype], values.shape, STORED[qtype](values)), "w")
