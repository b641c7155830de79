"""Edges of the library API: float64 input (cast to float32 as llama.cpp's converter does), qtypes that
are neither a name nor an integer id, and tensors with a zero dimension in every path (quantize,
dequantize, read_gguf, write_gguf, GGUFStreamWriter, requantize)."""

from typing import NamedTuple

import numpy as np
import pytest
import torch
from gguf import GGMLQuantizationType, GGUFReader

import llamacpp_ref as ref
from quantkit import dequantize, quantize, read_gguf, write_gguf
from quantkit.errors import ShapeError, UnsupportedTypeError
from quantkit.ggufio import GGUFStreamWriter, TensorInfo
from quantkit.jobs.quantize import requantize


class Stored(NamedTuple):
    name: str
    qtype: GGMLQuantizationType
    shape: tuple
    data: np.ndarray


# --- float64 ----------------------------------------------------------------------------------


@pytest.mark.parametrize("qtype", ["F32", "F16", "BF16", "Q8_0", "Q4_0", "Q6_K", "Q4_K", "IQ4_XS", "IQ2_XS"])
@pytest.mark.parametrize("kind", ["numpy", "torch"])
def test_float64_is_cast_to_float32_as_llamacpp(qtype, kind):
    x = np.random.default_rng(7).standard_normal((4, 512))  # float64, as np.random gives it
    x[0, :3] = [1 + 2**-30, 0.1, -3e-40]  # values float32 rounds (and one it makes subnormal)
    imatrix = np.random.default_rng(8).random(512) + 0.01  # float64 too
    w = imatrix if ref.requires_imatrix(qtype) or qtype in ("Q4_K", "IQ4_XS") else None
    got = quantize(torch.from_numpy(x) if kind == "torch" else x, qtype,
                   imatrix=None if w is None else (torch.from_numpy(w) if kind == "torch" else w))
    expected = ref.quantize(x.astype(np.float32), qtype, None if w is None else w.astype(np.float32))
    assert got.shape == (4, 512)
    np.testing.assert_array_equal(got.data, expected)


# --- the qtype argument -----------------------------------------------------------------------


@pytest.mark.parametrize("qtype", [2.0, 8.0, 2.5, True, False, np.float32(8), np.bool_(True), None, [8]])
def test_qtype_that_is_not_a_name_or_an_integer_is_refused(qtype):
    with pytest.raises(UnsupportedTypeError, match=r"^a tensor type is a name like 'Q4_K' or an integer id, not "):
        quantize(np.ones((2, 32), np.float32), qtype)


@pytest.mark.parametrize("qtype", ["Q8_0", 8, np.int64(8), GGMLQuantizationType.Q8_0])
def test_qtype_names_and_integer_ids_are_taken(qtype):
    assert quantize(np.ones((2, 32), np.float32), qtype).qtype == GGMLQuantizationType.Q8_0


# --- a zero dimension ---------------------------------------------------------------------------

ZERO_SHAPES = [(0, 256), (3, 0), (0,), (2, 0, 256), (0, 0)]


@pytest.mark.parametrize("shape", ZERO_SHAPES)
@pytest.mark.parametrize("qtype", ["F32", "F16", "Q8_0", "Q4_K", "IQ2_XXS"])
def test_zero_dimension_quantizes_to_no_bytes_and_back(shape, qtype):
    w = np.ones(shape[-1], np.float32)
    q = quantize(np.zeros(shape), qtype, imatrix=w)
    assert (q.shape, q.data.dtype, q.data.size) == (shape, np.uint8, 0)
    if shape[-1]:  # ggml_quantize_chunk of no rows writes no bytes
        assert ref.quantize(np.zeros((0, shape[-1]), np.float32), qtype, w).size == 0
    values = dequantize(q)
    assert (values.shape, values.dtype) == (shape, np.float32)


def test_zero_dimension_with_a_row_the_type_cannot_take_is_one_line():
    with pytest.raises(ShapeError, match=r"^t: row length 33 is not a multiple of Q8_0's block size 32"):
        quantize(np.zeros((0, 33), np.float32), "Q8_0", name="t")


@pytest.mark.parametrize("shape", ZERO_SHAPES)
def test_zero_dimension_tensors_are_written_read_and_written_back(tmp_path, shape):
    tensors = [Stored("a", GGMLQuantizationType.F32, (2, 32), np.arange(64, dtype=np.float32).view(np.uint8)),
               Stored("empty", GGMLQuantizationType.Q4_K, shape, np.zeros(0, np.uint8)),
               Stored("b", GGMLQuantizationType.F16, (32,), np.ones(32, np.float16).view(np.uint8))]
    path = write_gguf(tmp_path / "z.gguf", {"general.architecture": "llama"}, tensors)

    reader = GGUFReader(str(path))  # gguf-py reads what we wrote
    assert [tuple(reversed(t.shape.tolist())) for t in reader.tensors] == [(2, 32), shape, (32,)]
    assert [t.n_bytes for t in reader.tensors] == [256, 0, 64]
    with read_gguf(path) as f:
        empty = f.tensor("empty")
        assert (empty.shape, empty.nbytes, empty.dequantize().shape) == (shape, 0, shape)
        np.testing.assert_array_equal(f.tensor("a").dequantize(), np.arange(64, dtype=np.float32).reshape(2, 32))
        again = write_gguf(tmp_path / "again.gguf", f.metadata, f.tensors)
    assert again.read_bytes() == path.read_bytes()

    # streamed, with an empty chunk given for the empty tensor (or none at all)
    for chunks in ([("a", tensors[0].data), ("empty", b""), ("b", tensors[2].data)],
                   [("a", tensors[0].data), ("b", tensors[2].data)]):
        infos = [TensorInfo(t.name, t.qtype, t.shape) for t in tensors]
        with GGUFStreamWriter(tmp_path / "s.gguf", {"general.architecture": "llama"}, infos, overwrite=True) as out:
            for name, chunk in chunks:
                out.write(name, chunk)
        assert (tmp_path / "s.gguf").read_bytes() == path.read_bytes()


def test_requantize_carries_zero_dimension_tensors(tmp_path, smollm2_path):
    extra = [Stored("blk.0.extra.weight", GGMLQuantizationType.F16, (0, 576), np.zeros(0, np.uint8)),
             Stored("blk.0.ffn_up.bias", GGMLQuantizationType.F32, (3, 0), np.zeros(0, np.uint8))]
    with read_gguf(smollm2_path) as f:
        src = write_gguf(tmp_path / "in.gguf", f.metadata, list(f.tensors) + extra)
    plans = {p.name: p for p in requantize(src, tmp_path / "out.gguf", "Q4_K_M", progress=False)}
    with read_gguf(tmp_path / "out.gguf") as f:
        for t in extra:
            out = f.tensor(t.name)
            assert (out.qtype, out.shape, out.nbytes) == (plans[t.name].target, t.shape, 0)
