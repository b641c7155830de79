"""Malformed GGUF files: each is a small valid file we write, with some bytes patched. Every one
must raise a quantkit error with a one-line message naming the file, quickly, and nothing else."""

import random
import struct
import tracemalloc

import numpy as np
import pytest
from gguf import GGUFValueType

from quantkit import read_gguf
from quantkit.errors import GGUFFormatError, QuantkitError, ShapeError, UnsupportedTypeError
from quantkit.ggufio import typed
from test_gguf_writer import write_small_gguf

V = GGUFValueType
METADATA = {
    "general.alignment": 32,
    "test.k1": typed(7, V.UINT32),
    "test.k2": typed(8, V.UINT32),
    "test.flag": True,
    "test.words": ["alpha", "beta"],
    "test.numbers": typed([1, 2, 3], V.UINT32),
}


@pytest.fixture(scope="module")
def small(tmp_path_factory) -> bytes:
    """The bytes of a valid file: METADATA, 'tensor_a' (F32 2x32) and 'tensor_b' (Q8_0 1x32)."""
    path = write_small_gguf(tmp_path_factory.mktemp("small") / "small.gguf", METADATA)
    read_gguf(path).close()  # valid as written
    return path.read_bytes()


def kv_pos(raw: bytes, key: str) -> dict:
    """Offsets of a kv's key length, value type and value."""
    p = raw.index(struct.pack("<Q", len(key)) + key.encode())
    return {"key": p, "type": p + 8 + len(key), "value": p + 12 + len(key)}


def info_pos(raw: bytes, name: str) -> dict:
    """Offsets of a tensor info's name, n_dims, ne[0], type and offset fields."""
    p = raw.index(struct.pack("<Q", len(name)) + name.encode())
    at = p + 8 + len(name)
    n_dims = struct.unpack_from("<I", raw, at)[0]
    return {"name": p + 8, "n_dims": at, "ne0": at + 4, "type": at + 4 + 8 * n_dims, "offset": at + 8 + 8 * n_dims}


def patched(raw: bytes, at: int, fmt: str, value) -> bytes:
    data = bytearray(raw)
    struct.pack_into("<" + fmt, data, at, value)
    return bytes(data)


def read_bad(tmp_path, data: bytes, error=QuantkitError, fragment: str = ""):
    """Open ``data`` as bad.gguf; assert it fails with ``error`` and a one-line message, having allocated
    no more than a few times the file's size (no count is trusted before it is checked)."""
    path = tmp_path / "bad.gguf"
    path.write_bytes(data)
    tracemalloc.start()
    try:
        with pytest.raises(error) as info:
            read_gguf(path)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak <= 4 * len(data) + (1 << 20), peak
    message = str(info.value)
    assert "\n" not in message and "bad.gguf" in message, message
    assert fragment in message, message
    return message


def test_not_gguf(tmp_path, small):
    read_bad(tmp_path, b"GGML" + small[4:], GGUFFormatError, "not a GGUF file")
    read_bad(tmp_path, b"PK\x03\x04" + bytes(100), GGUFFormatError, "not a GGUF file")
    read_bad(tmp_path, b"abc", GGUFFormatError, "not a GGUF file")


@pytest.mark.parametrize("version, fragment", [(1, "version 1 is not supported"), (4, "version 4 is not supported"),
                                               (0x03000000, "big-endian")])
def test_unsupported_version(tmp_path, small, version, fragment):
    read_bad(tmp_path, patched(small, 4, "I", version), GGUFFormatError, fragment)


def test_every_truncation_is_reported(tmp_path, small):
    infos_end = info_pos(small, "tensor_b")["offset"] + 8
    data_end = len(small) - 30  # tensor_b's 34 bytes end there; the padding after it may be cut
    for size in range(data_end):
        message = read_bad(tmp_path, small[:size], GGUFFormatError)
        if size < infos_end:
            assert "truncated" in message, (size, message)
        else:
            assert "runs past the end of the file" in message, (size, message)


def test_truncated_messages_name_the_place(tmp_path, small):
    read_bad(tmp_path, small[:10], GGUFFormatError, "truncated: 10 bytes, a GGUF header takes 24")
    at = info_pos(small, "tensor_a")["ne0"]
    read_bad(tmp_path, small[: at + 3], GGUFFormatError, f"truncated: tensor 'tensor_a' dimension at offset {at} needs 8 bytes, 3 left")
    at = info_pos(small, "tensor_b")["type"]
    read_bad(tmp_path, small[:at], GGUFFormatError, "truncated: tensor 'tensor_b' type")


@pytest.mark.parametrize("where, fragment", [
    ("tensor count", "tensor count 4611686018427387904 at offset 8 is larger than"),
    ("kv count", "metadata key count 4611686018427387904 at offset 16 is larger than"),
    ("key length", "metadata key length 4611686018427387904"),
    ("string length", "key 'test.words'[0] length 4611686018427387904"),
    ("array length", "key 'test.numbers' array length 4611686018427387904"),
    ("string array length", "key 'test.words' array length 4611686018427387904"),
    ("tensor name length", "tensor name length 4611686018427387904"),
])
def test_huge_counts_fail_instantly(tmp_path, small, where, fragment):
    at = {
        "tensor count": 8,
        "kv count": 16,
        "key length": kv_pos(small, "test.k1")["key"],
        "string length": kv_pos(small, "test.words")["value"] + 12,
        "array length": kv_pos(small, "test.numbers")["value"] + 4,
        "string array length": kv_pos(small, "test.words")["value"] + 4,
        "tensor name length": info_pos(small, "tensor_a")["name"] - 8,
    }[where]
    read_bad(tmp_path, patched(small, at, "Q", 2**62), GGUFFormatError, fragment)


def test_too_many_dimensions(tmp_path, small):
    at = info_pos(small, "tensor_a")["n_dims"]
    read_bad(tmp_path, patched(small, at, "I", 5), GGUFFormatError, "tensor 'tensor_a' has 5 dimensions, at most 4")


def test_unknown_value_type(tmp_path, small):
    at = kv_pos(small, "test.k1")["type"]
    read_bad(tmp_path, patched(small, at, "I", 99), GGUFFormatError, "key 'test.k1': unknown value type 99")
    at = kv_pos(small, "test.numbers")["value"]
    read_bad(tmp_path, patched(small, at, "I", 13), GGUFFormatError, "unknown value type 13")


def test_invalid_bool(tmp_path, small):
    at = kv_pos(small, "test.flag")["value"]
    read_bad(tmp_path, patched(small, at, "B", 2), GGUFFormatError, "key 'test.flag': bool byte 2")


def test_arrays_nested_too_deep(tmp_path):
    key = b"test.deep"
    value = b"".join(struct.pack("<IQ", V.ARRAY, 1) for _ in range(20)) + struct.pack("<IQ", V.UINT8, 0)
    data = b"GGUF" + struct.pack("<IQQ", 3, 0, 1) + struct.pack("<Q", len(key)) + key + struct.pack("<I", V.ARRAY) + value
    read_bad(tmp_path, data, GGUFFormatError, "nested deeper than 8")


def test_unknown_tensor_type(tmp_path, small):
    at = info_pos(small, "tensor_b")["type"]
    read_bad(tmp_path, patched(small, at, "I", 99), UnsupportedTypeError, "tensor 'tensor_b' has unknown type 99")
    read_bad(tmp_path, patched(small, at, "I", 4), UnsupportedTypeError, "unknown type 4")  # Q4_2, removed


def test_row_length_not_whole_blocks(tmp_path, small):
    at = info_pos(small, "tensor_b")["ne0"]
    read_bad(tmp_path, patched(small, at, "Q", 16), ShapeError,
             "tensor 'tensor_b' row length 16 is not a multiple of Q8_0's block size 32")


def test_element_count_overflow(tmp_path, small):
    at = info_pos(small, "tensor_a")["ne0"]
    read_bad(tmp_path, patched(small, at, "Q", 2**63), GGUFFormatError, "more than GGUF's int64 allows")


def test_misaligned_tensor_offset(tmp_path, small):
    at = info_pos(small, "tensor_b")["offset"]
    assert struct.unpack_from("<Q", small, at)[0] == 256
    read_bad(tmp_path, patched(small, at, "Q", 257), GGUFFormatError,
             "tensor 'tensor_b' offset 257 is not a multiple of the alignment 32")


def test_tensor_data_past_end(tmp_path, small):
    at = info_pos(small, "tensor_b")["offset"]
    data = patched(small, at, "Q", 4096)
    data_start = len(small) - 64 - 256
    read_bad(tmp_path, data, GGUFFormatError,
             f"tensor 'tensor_b' data [offset {data_start + 4096}, 34 bytes] runs past the end of the file (size {len(small)})")


def test_overlapping_tensors(tmp_path, small):
    at = info_pos(small, "tensor_b")["offset"]
    read_bad(tmp_path, patched(small, at, "Q", 224), GGUFFormatError, "tensor 'tensor_b' data at offset")
    message = read_bad(tmp_path, patched(small, at, "Q", 0), GGUFFormatError, "overlaps tensor 'tensor_a'")
    assert "256 bytes" in message


def test_duplicate_tensor_name(tmp_path, small):
    at = info_pos(small, "tensor_b")["name"]
    data = small[:at] + b"tensor_a" + small[at + 8 :]
    read_bad(tmp_path, data, GGUFFormatError, "duplicate tensor name 'tensor_a'")


def test_duplicate_key(tmp_path, small):
    at = kv_pos(small, "test.k2")["key"] + 8
    data = small[:at] + b"test.k1" + small[at + 7 :]
    read_bad(tmp_path, data, GGUFFormatError, "duplicate metadata key 'test.k1'")


@pytest.mark.parametrize("alignment", [0, 3, 48])
def test_bad_alignment(tmp_path, small, alignment):
    at = kv_pos(small, "general.alignment")["value"]
    read_bad(tmp_path, patched(small, at, "I", alignment), GGUFFormatError,
             f"general.alignment {alignment} is not a power of two")


def test_alignment_of_wrong_type(tmp_path, small):
    at = kv_pos(small, "general.alignment")["type"]
    read_bad(tmp_path, patched(small, at, "I", V.FLOAT32), GGUFFormatError, "general.alignment has type FLOAT32")


def test_random_corruption_never_escapes(tmp_path, small):
    """Random byte changes in the header part: either a valid file or a quantkit error, never a crash."""
    rng = random.Random(1234)
    header_end = len(small) - 64 - 256
    path = tmp_path / "fuzz.gguf"
    for _ in range(400):
        data = bytearray(small)
        for _ in range(rng.randint(1, 4)):
            at = rng.randrange(header_end)
            data[at] = rng.choice([0, 1, 0x7F, 0xFF, rng.randrange(256)])
        path.write_bytes(bytes(data))
        try:
            read_gguf(path).close()
        except QuantkitError as e:
            assert "\n" not in str(e)


def test_missing_file_and_directory(tmp_path):
    with pytest.raises(QuantkitError, match="no such file"):
        read_gguf(tmp_path / "nope.gguf")
    with pytest.raises(QuantkitError, match="is a directory"):
        read_gguf(tmp_path)


def test_valid_patch_still_reads(tmp_path, small):
    """The helpers patch the intended fields: changing k1's value keeps the file valid."""
    at = kv_pos(small, "test.k1")["value"]
    path = tmp_path / "ok.gguf"
    path.write_bytes(patched(small, at, "I", 1234))
    with read_gguf(path) as f:
        assert f.metadata["test.k1"] == 1234
        assert np.array_equal(f.tensor("tensor_a").data.view("<f4"), np.arange(64, dtype=np.float32))


def _mutations(small: bytes, rng: random.Random):
    """Derandomized mutations of the small file: bit flips anywhere, truncations, huge or odd values
    in the count, length, dimension and offset fields, and bytes inserted or deleted in the header."""
    header_end = len(small) - 64 - 256
    u64_fields = [8, 16] + [kv_pos(small, k)["key"] for k in METADATA] + [  # counts, key lengths,
        info_pos(small, n)[f] for n in ("tensor_a", "tensor_b") for f in ("name", "ne0", "offset")]  # names...
    values = [0, 1, 2**31, 2**32 - 1, 2**32, 2**62, 2**63 - 1, 2**63, 2**64 - 1, len(small), len(small) - 1]
    for i in range(600):
        data = bytearray(small)
        kind = i % 5
        if kind == 0:  # bit flips anywhere in the file
            for _ in range(rng.randint(1, 8)):
                at = rng.randrange(len(data))
                data[at] ^= 1 << rng.randrange(8)
        elif kind == 1:  # truncation
            data = data[: rng.randrange(len(data))]
        elif kind == 2:  # a huge or edge value in a count, length, dimension or offset field
            at = rng.choice(u64_fields)
            if at == info_pos(small, "tensor_a")["name"] or at == info_pos(small, "tensor_b")["name"]:
                at -= 8  # the name's length
            struct.pack_into("<Q", data, at, rng.choice(values + [rng.getrandbits(64)]))
        elif kind == 3:  # a random 4- or 8-byte value at a random header position
            width = rng.choice((4, 8))
            at = rng.randrange(header_end - width)
            data[at : at + width] = rng.getrandbits(8 * width).to_bytes(width, "little")
        else:  # bytes inserted into or deleted from the header
            at = rng.randrange(header_end)
            if rng.random() < 0.5:
                del data[at : at + rng.randint(1, 16)]
            else:
                data[at:at] = bytes(rng.randrange(256) for _ in range(rng.randint(1, 16)))
        yield i, bytes(data)


def _read_everything(path) -> None:
    with read_gguf(path) as f:
        dict(f.metadata)
        for t in f.tensors:
            if all(t.shape):  # a zero dimension: the API-edge tests cover dequantizing an empty tensor
                t.dequantize()


def test_fuzz_reader_and_inspect(tmp_path, small):
    """600 derandomized mutations: the reader (and dequantizing every tensor of a file it accepts)
    gives success or a one-line quantkit error (at most 200 characters besides the file's path);
    ``quantkit inspect`` (every third one) exit 0 or 2 with one error line of at most 200."""
    from click.testing import CliRunner

    from quantkit.cli import main

    rng = random.Random(20261202)
    path = tmp_path / "fuzz.gguf"
    outcomes = {"ok": 0, "error": 0}
    for i, data in _mutations(small, rng):
        path.write_bytes(data)
        try:
            _read_everything(path)
            outcomes["ok"] += 1
        except QuantkitError as e:
            assert "\n" not in str(e) and len(str(e).replace(str(path), "")) <= 200, (i, str(e))
            outcomes["error"] += 1
        if i % 3 == 0:
            result = CliRunner().invoke(main, ["inspect", str(path)])
            assert result.exit_code in (0, 2), (i, result.output, result.exception)
            if result.exit_code == 2:
                lines = result.stderr.strip().splitlines()
                assert len(lines) == 1 and lines[0].startswith("quantkit: error: "), (i, result.stderr)
                assert len(lines[0]) <= 200 + len("quantkit: error: ") and lines[0].isprintable(), (i, lines[0])
    assert outcomes["ok"] > 0 and outcomes["error"] > 300, outcomes
