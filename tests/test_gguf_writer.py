"""The streaming, atomic writer: byte-identical write-back of llama.cpp's file, every value type,
chunked streaming, atomicity and output refusals."""

import filecmp
import hashlib

import numpy as np
import pytest
from gguf import GGMLQuantizationType, GGUFReader, GGUFValueType

from quantkit import GGUFStreamWriter, read_gguf, write_gguf
from quantkit.errors import OutputError, ShapeError
from quantkit.ggufio import ArrayType, MetadataError, TensorInfo, typed
from quantkit.quants import QuantizedTensor

V = GGUFValueType
F32 = GGMLQuantizationType.F32
Q8_0 = GGMLQuantizationType.Q8_0


def write_small_gguf(path, metadata=None, **kwargs):
    """A small valid file: two tensors 'tensor_a' (F32 2x32) and 'tensor_b' (Q8_0 1x32)."""
    tensors = {
        "tensor_a": QuantizedTensor(F32, (2, 32), np.arange(64, dtype="<f4").view(np.uint8)),
        "tensor_b": QuantizedTensor(Q8_0, (1, 32), np.arange(34, dtype=np.uint8)),
    }
    if metadata is None:
        metadata = {"general.architecture": "test", "test.count": typed(7, V.UINT32)}
    return write_gguf(path, metadata, tensors, **kwargs)


def sha256(path) -> str:
    return hashlib.sha256(open(path, "rb").read()).hexdigest()


def leftovers(folder):
    return sorted(p.name for p in folder.iterdir())


def test_smollm2_write_back_is_byte_identical(smollm2_path, tmp_path):
    with read_gguf(smollm2_path) as f:
        out = write_gguf(tmp_path / "copy.gguf", f.metadata, f.tensors)
    assert filecmp.cmp(out, smollm2_path, shallow=False)
    assert sha256(out) == sha256(smollm2_path)
    assert leftovers(tmp_path) == ["copy.gguf"]


@pytest.mark.parametrize("write_behind", [0, 1, 3])
def test_smollm2_streamed_in_row_chunks_is_byte_identical(smollm2_path, tmp_path, write_behind):
    out = tmp_path / "rows.gguf"
    with read_gguf(smollm2_path) as f, GGUFStreamWriter(out, f.metadata, f.tensors, write_behind=write_behind) as w:
        for t in f.tensors:
            rows = t.data.reshape(-1, t.nbytes // (t.shape[0] if len(t.shape) == 2 else 1))
            step = max(1, len(rows) // 7)  # uneven chunks: several rows each, the last one shorter
            for i in range(0, len(rows), step):
                w.write(t.name if i == 0 else None, rows[i : i + step])
    assert filecmp.cmp(out, smollm2_path, shallow=False)


def test_gguf_py_reads_what_we_write(tmp_path):
    path = write_small_gguf(tmp_path / "small.gguf")
    reader = GGUFReader(str(path))
    assert reader.fields["general.architecture"].contents() == "test"
    assert reader.fields["test.count"].contents() == 7
    assert reader.fields["test.count"].types == [V.UINT32]
    assert [t.name for t in reader.tensors] == ["tensor_a", "tensor_b"]
    a = reader.tensors[0]
    assert a.tensor_type == F32 and a.shape.tolist() == [32, 2]
    assert np.array_equal(np.asarray(a.data).reshape(-1), np.arange(64, dtype=np.float32))
    assert np.array_equal(np.asarray(reader.tensors[1].data).reshape(-1).view(np.uint8), np.arange(34))


EVERY_TYPE = {
    "u8": typed(255, V.UINT8),
    "i8": typed(-128, V.INT8),
    "u16": typed(65535, V.UINT16),
    "i16": typed(-32768, V.INT16),
    "u32": typed(2**32 - 1, V.UINT32),
    "i32": -(2**31),
    "f32": 0.5,
    "bool": True,
    "str": "héllo ✓ \n",
    "u64": 2**64 - 1,
    "i64": -(2**40),
    "f64": np.float64(0.1),
    "arr.u8": typed([0, 1, 255], V.UINT8),
    "arr.i16": typed([-1, 2], V.INT16),
    "arr.u64": typed([2**63], V.UINT64),
    "arr.f32": [1.5, -2.25],
    "arr.f64": typed([0.1, 0.2], V.FLOAT64),
    "arr.bool": [True, False, True],
    "arr.str": ["a", "", "ü"],
    "arr.i32": [1, -2, 3],
    "arr.i64": [1, 2**40],
    "arr.empty": typed([], V.UINT32),
    "arr.numpy": np.arange(4, dtype=np.uint16),
    "nested": [[1, 2], ["x", "y", "z"], [[True], typed([], V.FLOAT32)], typed([7], V.INT8)],
}


def test_every_value_type_round_trips(tmp_path):
    first = write_small_gguf(tmp_path / "every.gguf", EVERY_TYPE)
    with read_gguf(first) as f:
        md = f.metadata
        expected_types = {
            "u8": V.UINT8, "i8": V.INT8, "u16": V.UINT16, "i16": V.INT16, "u32": V.UINT32, "i32": V.INT32,
            "f32": V.FLOAT32, "bool": V.BOOL, "str": V.STRING, "u64": V.UINT64, "i64": V.INT64, "f64": V.FLOAT64,
            "arr.u8": ArrayType(V.UINT8), "arr.i16": ArrayType(V.INT16), "arr.u64": ArrayType(V.UINT64),
            "arr.f32": ArrayType(V.FLOAT32), "arr.f64": ArrayType(V.FLOAT64), "arr.bool": ArrayType(V.BOOL),
            "arr.str": ArrayType(V.STRING), "arr.i32": ArrayType(V.INT32), "arr.i64": ArrayType(V.INT64),
            "arr.empty": ArrayType(V.UINT32), "arr.numpy": ArrayType(V.UINT16),
            "nested": ArrayType(V.ARRAY, (
                ArrayType(V.INT32), ArrayType(V.STRING),
                ArrayType(V.ARRAY, (ArrayType(V.BOOL), ArrayType(V.FLOAT32))), ArrayType(V.INT8),
            )),
        }
        assert {k: md.value_type(k) for k in md} == expected_types
        assert md["u64"] == 2**64 - 1 and md["i32"] == -(2**31) and md["u8"] == 255
        assert md["f64"] == 0.1 and md["f32"] == 0.5 and md["bool"] is True
        assert md["str"] == "héllo ✓ \n"
        assert md["arr.u64"] == [2**63] and md["arr.f64"] == [0.1, 0.2] and md["arr.bool"] == [True, False, True]
        assert md["arr.str"] == ["a", "", "ü"] and md["arr.empty"] == [] and md["arr.numpy"] == [0, 1, 2, 3]
        assert md["nested"] == [[1, 2], ["x", "y", "z"], [[True], []], [7]]
        second = write_gguf(tmp_path / "again.gguf", md, f.tensors)
    assert filecmp.cmp(first, second, shallow=False)
    peer = GGUFReader(str(first))
    for key in ("u8", "i8", "u64", "i64", "f64", "str", "arr.u8", "arr.str", "arr.i64", "arr.bool"):
        assert peer.fields[key].contents() == md[key], key
    assert peer.fields["nested"].types[:2] == [V.ARRAY, V.ARRAY]


def test_remembered_types_survive_edits(smollm2_path, tmp_path):
    with read_gguf(smollm2_path) as f:
        md = f.metadata.copy()
        md["llama.block_count"] = 31  # still fits UINT32: keeps it
        md["general.name"] = 5  # no longer a string: inferred
        md["tokenizer.ggml.token_type"] = md["tokenizer.ggml.token_type"][:10]
        out = write_gguf(tmp_path / "edited.gguf", md, f.tensors[:2])
    with read_gguf(out) as g:
        assert g.metadata["llama.block_count"] == 31
        assert g.metadata.value_type("llama.block_count") == V.UINT32
        assert g.metadata.value_type("general.name") == V.INT32
        assert g.metadata.value_type("tokenizer.ggml.token_type") == ArrayType(V.INT32)
        assert [t.name for t in g.tensors] == ["token_embd.weight", "blk.0.attn_norm.weight"]


@pytest.mark.parametrize("value, fragment", [
    (typed(300, V.UINT8), "range"),
    ([1, "a"], "mixes"),
    ([], "empty list"),
    (2**64, "64 bits"),
    (object(), "no GGUF type"),
])
def test_unwritable_metadata(tmp_path, value, fragment):
    with pytest.raises(MetadataError, match=fragment):
        write_small_gguf(tmp_path / "bad.gguf", {"test.key": value})
    assert leftovers(tmp_path) == []


def test_alignment_is_honoured(tmp_path):
    path = write_small_gguf(tmp_path / "a64.gguf", {"general.alignment": 64})
    with read_gguf(path) as f:
        assert f.alignment == 64
        assert f.metadata.value_type("general.alignment") == V.UINT32
        assert f.data_offset % 64 == 0
        assert [t.offset - f.data_offset for t in f.tensors] == [0, 256]
    assert GGUFReader(str(path)).alignment == 64
    with pytest.raises(MetadataError, match="power of two"):
        write_small_gguf(tmp_path / "a48.gguf", {"general.alignment": 48})


def test_padding_between_tensors_is_zero(tmp_path):
    path = write_small_gguf(tmp_path / "pad.gguf")
    with read_gguf(path) as f:
        a, b = f.tensors
        raw = open(path, "rb").read()
        assert b.offset == a.offset + 256
        assert raw[b.offset + 34 :] == bytes(32 - 2)  # tensor_b is 34 bytes, padded to 64
        assert len(raw) == b.offset + 64


class Boom(Exception):
    pass


def test_exception_mid_stream_leaves_nothing(tmp_path):
    out = tmp_path / "out.gguf"
    with pytest.raises(Boom):
        with GGUFStreamWriter(out, {"a": 1}, [TensorInfo("t", F32, (4, 32))]) as w:
            w.write("t", np.zeros(32, np.float32))
            raise Boom()
    assert leftovers(tmp_path) == []


class InterruptingTensor:
    """A tensor whose data access is interrupted, like Ctrl-C in the middle of a write."""

    name, qtype, shape = "second", F32, (1, 32)

    @property
    def data(self):
        raise KeyboardInterrupt


class FirstTensor:
    name, qtype, shape, data = "first", F32, (1, 32), np.zeros(128, np.uint8)


def test_keyboard_interrupt_mid_write_leaves_nothing(tmp_path):
    with pytest.raises(KeyboardInterrupt):
        write_gguf(tmp_path / "out.gguf", {}, [FirstTensor(), InterruptingTensor()])
    assert leftovers(tmp_path) == []


def test_temp_file_lives_in_the_target_folder(tmp_path):
    with GGUFStreamWriter(tmp_path / "x.gguf", {}, [TensorInfo("t", F32, (32,))]) as w:
        assert w.tmp_path.parent == tmp_path
        assert w.tmp_path.name.startswith(".x.gguf.tmp-")
        assert not (tmp_path / "x.gguf").exists()
        w.write("t", bytes(128))
    assert leftovers(tmp_path) == ["x.gguf"]


@pytest.mark.parametrize("write_behind", [0, 2])
def test_stream_order_and_sizes_are_checked(tmp_path, write_behind):
    """With write-behind the error surfaces at a later write or at close, the same error."""
    infos = [TensorInfo("a", F32, (32,)), TensorInfo("b", F32, (32,))]
    with pytest.raises(OutputError, match="got data for tensor 'b', expected tensor 'a'"):
        with GGUFStreamWriter(tmp_path / "o.gguf", {}, infos, write_behind=write_behind) as w:
            w.write("b", bytes(128))
    with pytest.raises(OutputError, match="expected tensor 'a' \\(still incomplete\\)"):
        with GGUFStreamWriter(tmp_path / "o.gguf", {}, infos, write_behind=write_behind) as w:
            w.write("a", bytes(64))
            w.write("b", bytes(64))
    with pytest.raises(ShapeError, match="'a': 160 bytes written, it takes 128"):
        with GGUFStreamWriter(tmp_path / "o.gguf", {}, infos, write_behind=write_behind) as w:
            w.write("a", bytes(100))
            w.write(None, bytes(60))
    with pytest.raises(ShapeError, match="tensor 'b' got 64 of its 128 bytes"):
        with GGUFStreamWriter(tmp_path / "o.gguf", {}, infos, write_behind=write_behind) as w:
            w.write("a", bytes(128))
            w.write(None, bytes(64))
    with pytest.raises(OutputError, match="already written"):
        with GGUFStreamWriter(tmp_path / "o.gguf", {}, infos, write_behind=write_behind) as w:
            w.write("a", bytes(128))
            w.write("b", bytes(128))
            w.write(None, b"x")
    assert leftovers(tmp_path) == []


def test_bad_tensor_infos(tmp_path):
    with pytest.raises(ShapeError, match="'q': row length 16 is not a multiple of Q8_0's block size 32"):
        GGUFStreamWriter(tmp_path / "o.gguf", {}, [TensorInfo("q", Q8_0, (2, 16))])
    with pytest.raises(OutputError, match="duplicate tensor name 'a'"):
        GGUFStreamWriter(tmp_path / "o.gguf", {}, [TensorInfo("a", F32, (1,)), TensorInfo("a", F32, (1,))])
    with pytest.raises(ShapeError, match="5 dimensions"):
        GGUFStreamWriter(tmp_path / "o.gguf", {}, [TensorInfo("a", F32, (1, 1, 1, 1, 1))])
    assert leftovers(tmp_path) == []


def test_existing_output_is_refused_unless_overwrite(tmp_path):
    path = write_small_gguf(tmp_path / "m.gguf")
    before = sha256(path)
    with pytest.raises(OutputError, match="exists"):
        write_small_gguf(path, {"general.architecture": "other"})
    assert sha256(path) == before
    write_small_gguf(path, {"general.architecture": "other"}, overwrite=True)
    with read_gguf(path) as f:
        assert f.metadata["general.architecture"] == "other"
    assert leftovers(tmp_path) == ["m.gguf"]


def test_output_equal_to_input_is_refused(tmp_path):
    path = write_small_gguf(tmp_path / "m.gguf")
    before = sha256(path)
    with read_gguf(path) as f:
        with pytest.raises(OutputError, match="also an input"):
            write_gguf(tmp_path / "." / "m.gguf", f.metadata, f.tensors, overwrite=True)
    assert sha256(path) == before
    assert leftovers(tmp_path) == ["m.gguf"]


def test_missing_output_folder(tmp_path):
    with pytest.raises(OutputError, match="does not exist"):
        write_small_gguf(tmp_path / "no" / "m.gguf")


def test_unread_arrays_are_copied_as_their_bytes(smollm2_path, tmp_path):
    """Writing arrays never read (their bytes copied) equals writing them parsed and encoded again;
    a list edited in place after reading is written as edited."""
    with read_gguf(smollm2_path) as f:
        lazy = f.metadata.copy()
        parsed = f.metadata.copy()
        for key in parsed:
            parsed[key]
        assert all(parsed.raw_value(k) is None for k in parsed) and lazy.raw_value("tokenizer.ggml.tokens") is not None
        a = write_gguf(tmp_path / "lazy.gguf", lazy, f.tensors[:3])
        b = write_gguf(tmp_path / "parsed.gguf", parsed, f.tensors[:3])
        edited = f.metadata.copy()
        edited["tokenizer.ggml.tokens"][1] = "<edited>"
        c = write_gguf(tmp_path / "edited.gguf", edited, f.tensors[:3])
    assert filecmp.cmp(a, b, shallow=False)
    with read_gguf(c) as g:
        assert g.metadata["tokenizer.ggml.tokens"][:3] == ["<|endoftext|>", "<edited>", "<|im_end|>"]


def test_early_sync_streams_identical_bytes_and_stops(smollm2_path, tmp_path, monkeypatch):
    """With write-behind a thread fdatasyncs as data arrives (here every 64 KiB); the file is unchanged and
    the thread is gone after close and after abort."""
    import threading

    from quantkit.ggufio import writer

    monkeypatch.setattr(writer, "EARLY_SYNC_BYTES", 64 << 10)
    syncing = lambda: [t for t in threading.enumerate() if t.name == "gguf-early-sync"]  # noqa: E731
    out = tmp_path / "synced.gguf"
    with read_gguf(smollm2_path) as f:
        with GGUFStreamWriter(out, f.metadata, f.tensors, write_behind=2) as w:
            assert len(syncing()) == 1
            for t in f.tensors:
                w.write(t.name, t.data)
        assert not syncing()
        with pytest.raises(RuntimeError):
            with GGUFStreamWriter(tmp_path / "aborted.gguf", f.metadata, f.tensors, write_behind=2) as w:
                w.write(f.tensors[0].name, f.tensors[0].data)
                raise RuntimeError("stop")
    assert not syncing() and leftovers(tmp_path) == ["synced.gguf"]
    assert filecmp.cmp(out, smollm2_path, shallow=False)
