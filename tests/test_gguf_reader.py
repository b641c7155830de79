"""The reader on the real SmolLM2 GGUF (written by llama.cpp), checked against gguf-py's GGUFReader."""

import struct
import tracemalloc

import numpy as np
import pytest
from gguf import GGMLQuantizationType, GGUFReader, GGUFValueType

from quantkit import read_gguf
from quantkit.errors import QuantkitError, UnsupportedTypeError
from quantkit.ggufio import ArrayType


@pytest.fixture(scope="module")
def smollm2(smollm2_path):
    with read_gguf(smollm2_path) as f:
        yield f


@pytest.fixture(scope="module")
def peer(smollm2_path):
    return GGUFReader(str(smollm2_path))


def test_header_and_counts(smollm2):
    assert smollm2.version == 3
    assert smollm2.alignment == 32
    assert len(smollm2.tensors) == 272
    assert len(smollm2.metadata) == 33
    counts = {}
    for t in smollm2.tensors:
        counts[t.qtype.name] = counts.get(t.qtype.name, 0) + 1
    assert counts == {"Q4_1": 210, "F32": 61, "Q8_0": 1}


def test_known_values(smollm2):
    md = smollm2.metadata
    assert md["general.architecture"] == "llama"
    assert md["llama.block_count"] == 30
    assert md.value_type("llama.block_count") == GGUFValueType.UINT32
    assert md["llama.attention.head_count"] == 9 and md["llama.attention.head_count_kv"] == 3
    assert md["tokenizer.ggml.pre"] == "smollm"
    assert md["llama.rope.freq_base"] == 100000.0
    assert md.value_type("tokenizer.ggml.tokens") == ArrayType(GGUFValueType.STRING)
    assert len(md["tokenizer.ggml.tokens"]) == 49152
    assert md["tokenizer.ggml.tokens"][:3] == ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
    assert md.value_type("tokenizer.ggml.token_type") == ArrayType(GGUFValueType.INT32)
    emb = smollm2.tensor("token_embd.weight")
    assert (emb.qtype, emb.shape, emb.nbytes) == (GGMLQuantizationType.Q8_0, (49152, 576), 49152 * 576 // 32 * 34)


def test_metadata_equals_gguf_py(smollm2, peer):
    peer_fields = {name: field for name, field in peer.fields.items() if not name.startswith("GGUF.")}
    assert list(smollm2.metadata) == list(peer_fields)
    for key, field in peer_fields.items():
        assert smollm2.metadata[key] == field.contents(), key
        spec = smollm2.metadata.value_type(key)
        if field.types[0] == GGUFValueType.ARRAY:
            assert spec == ArrayType(field.types[-1]), key
        else:
            assert spec == field.types[0], key
    assert smollm2.metadata["tokenizer.ggml.merges"] == peer_fields["tokenizer.ggml.merges"].contents()


def test_tensors_equal_gguf_py(smollm2, peer):
    assert [t.name for t in smollm2.tensors] == [t.name for t in peer.tensors]
    for ours, theirs in zip(smollm2.tensors, peer.tensors):
        assert ours.qtype == theirs.tensor_type, ours.name
        assert ours.shape == tuple(int(d) for d in reversed(theirs.shape.tolist())), ours.name
        assert ours.nbytes == theirs.n_bytes, ours.name
        assert ours.offset == theirs.data_offset, ours.name
    for i in (0, 1, 2, 137, 271):
        ours, theirs = smollm2.tensors[i], peer.tensors[i]
        assert np.array_equal(ours.data, np.asarray(theirs.data).reshape(-1).view(np.uint8)), ours.name


def test_data_is_a_zero_copy_view(smollm2):
    t = smollm2.tensor("blk.0.ffn_down.weight")
    data = t.data
    assert data.dtype == np.uint8 and data.size == t.nbytes == 552960
    assert not data.flags.owndata and not data.flags.writeable


def test_f32_dequantize(smollm2):
    t = smollm2.tensor("blk.0.attn_norm.weight")
    values = t.dequantize()
    assert values.shape == (576,) and values.dtype == np.float32
    assert np.array_equal(values, t.data.view("<f4"))


def test_every_tensor_dequantizes_as_gguf_py_and_llamacpp(smollm2, peer):
    """All 272 tensors (Q4_1, Q8_0, F32): quantkit's dequantization == gguf-py's == llama.cpp's."""
    import llamacpp_ref
    from gguf.quants import dequantize as gguf_dequantize

    for ours, theirs in zip(smollm2.tensors, peer.tensors):
        values = ours.dequantize()
        assert values.shape == ours.shape and values.dtype == np.float32
        expected = gguf_dequantize(np.asarray(theirs.data), theirs.tensor_type).reshape(ours.shape)
        np.testing.assert_array_equal(values, expected, err_msg=ours.name)
        np.testing.assert_array_equal(values.reshape(-1), llamacpp_ref.dequantize(ours.data, ours.qtype, values.size))
    assert len(smollm2.tensors) == 272


def test_unsupported_type_dequantize_raises(tmp_path):
    from quantkit import write_gguf
    from quantkit.quants import QuantizedTensor

    tensor = QuantizedTensor(GGMLQuantizationType.I32, (2, 4), np.arange(8, dtype="<i4").view(np.uint8))
    path = write_gguf(tmp_path / "i32.gguf", {}, {"ints": tensor})
    with read_gguf(path) as f:
        assert np.array_equal(f.tensor("ints").data.view("<i4"), np.arange(8))
        with pytest.raises(UnsupportedTypeError, match="I32"):
            f.tensor("ints").dequantize()


def test_missing_tensor_name(smollm2):
    with pytest.raises(QuantkitError, match="no tensor named 'nope'"):
        smollm2.tensor("nope")


def test_open_reads_no_tensor_data(smollm2_path):
    """Opening parses the metadata (the tokenizer arrays) and copies none of the 96 MB of tensors."""
    tracemalloc.start()
    try:
        f = read_gguf(smollm2_path)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    f.close()
    assert peak < 32 << 20, peak


def test_closed_file_refuses_data(smollm2_path):
    f = read_gguf(smollm2_path)
    t = f.tensors[0]
    f.close()
    with pytest.raises(QuantkitError, match="closed"):
        t.data


def test_huge_sparse_file_opens_instantly(tmp_path):
    """A 16 GiB tensor (a sparse file): opening and taking its view read no data."""
    name = b"huge.weight"
    infos = struct.pack("<Q", len(name)) + name + struct.pack("<IQQIQ", 2, 65536, 65536, GGMLQuantizationType.F32, 0)
    header = b"GGUF" + struct.pack("<IQQ", 3, 1, 0) + infos
    data_offset = -(-len(header) // 32) * 32
    path = tmp_path / "huge.gguf"
    with open(path, "wb") as fh:
        fh.write(header)
        fh.truncate(data_offset + 65536 * 65536 * 4)
    tracemalloc.start()
    try:
        with read_gguf(path) as f:
            t = f.tensor("huge.weight")
            data = t.data
            assert (t.shape, t.nbytes, data.size, t.offset) == ((65536, 65536), 2**34, 2**34, data_offset)
            assert data[-1] == 0
            del data
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 1 << 20, peak  # a view into the map: nothing of the 16 GiB copied


def test_arrays_stay_bytes_until_read(smollm2_path):
    """A tokenizer array is kept as its GGUF bytes at open; head() parses only its start; a read parses it once."""
    with read_gguf(smollm2_path) as f:
        md = f.metadata
        assert md.raw_value("tokenizer.ggml.tokens") is not None
        head, length = md.head("tokenizer.ggml.tokens", 3)
        assert (head, length) == (["<|endoftext|>", "<|im_start|>", "<|im_end|>"], 49152)
        assert md.raw_value("tokenizer.ggml.tokens") is not None  # head() left it unparsed
        assert md.head("llama.block_count", 3) == (30, None)
        tokens = md["tokenizer.ggml.tokens"]
        assert md.raw_value("tokenizer.ggml.tokens") is None and md["tokenizer.ggml.tokens"] is tokens
        assert md.head("tokenizer.ggml.tokens", 2) == (tokens[:2], 49152)


def test_unread_arrays_read_like_lists_everywhere(smollm2_path, peer):
    """get, items, values, pop, ==, dict(), {**m} and copy() all see plain lists equal to gguf-py's."""
    expected = peer.fields["tokenizer.ggml.token_type"].contents()
    with read_gguf(smollm2_path) as f:
        for read in (lambda m: m.get("tokenizer.ggml.token_type"), lambda m: dict(m.items())["tokenizer.ggml.token_type"],
                     lambda m: list(m.values())[list(m).index("tokenizer.ggml.token_type")],
                     lambda m: m.pop("tokenizer.ggml.token_type"), lambda m: dict(m)["tokenizer.ggml.token_type"],
                     lambda m: {**m}["tokenizer.ggml.token_type"]):
            md = f.metadata.copy()
            assert md.raw_value("tokenizer.ggml.token_type") is not None
            assert read(md) == expected
        md = f.metadata.copy()
        assert md == dict(f.metadata.copy()) and not md != dict(md)
        assert md["tokenizer.ggml.merges"] == peer.fields["tokenizer.ggml.merges"].contents()
        assert f.metadata.raw_value("tokenizer.ggml.merges") is not None  # the copy parsed its own
