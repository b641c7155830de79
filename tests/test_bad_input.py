"""Malformed model folders and command lines: one line ``quantkit: error: ...`` (at most 200
characters, no raw bytes) and exit status 2, never a traceback.

Must show each class: safetensors headers (not an object, an entry not an object, missing or
unknown dtype, data_offsets negative, overlapping, past the end, a truncated data section, ...),
config.json not UTF-8 or not JSON, tokenizer.json corrupt or of the wrong structure, click's own
usage errors (a file where a folder is expected and the reverse), and the message cap.
"""

import json
import os
import struct

import pytest
from click.testing import CliRunner
from test_convert_support import make_llama_folder

from quantkit.cli import main


def run(*args):
    return CliRunner().invoke(main, [str(a) for a in args])


def assert_one_line_error(result, *fragments):
    assert result.exit_code == 2, (result.exit_code, result.output, result.exception)
    assert "Traceback" not in result.output
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("quantkit: error: "), result.stderr
    message = lines[0][len("quantkit: error: "):]
    assert len(message) <= 200 and message.isprintable(), message
    for fragment in fragments:
        assert fragment in message, message
    return message


@pytest.fixture
def folder(tmp_path, smollm2_hf_dir):
    return make_llama_folder(tmp_path, smollm2_hf_dir)


def convert(folder):
    return run("convert", folder, "-o", folder.parent / "out.gguf", "--type", "F16")


# --- safetensors headers ------------------------------------------------------------------------------


def split_safetensors(path):
    raw = path.read_bytes()
    (n,) = struct.unpack("<Q", raw[:8])
    return json.loads(raw[8 : 8 + n]), raw[8 + n :]


def write_safetensors(path, header, data: bytes, length=None):
    text = json.dumps(header).encode() if not isinstance(header, bytes) else header
    path.write_bytes(struct.pack("<Q", len(text) if length is None else length) + text + data)


def first_entry(header):
    return next(k for k in header if k != "__metadata__")


def _set(key, value):
    def edit(header, data):
        header[first_entry(header)][key] = value
        return header, data
    return edit


def _overlapping(header, data):
    """The second tensor (in data order) starts 2 bytes inside the first."""
    names = sorted((k for k in header if k != "__metadata__"), key=lambda k: header[k]["data_offsets"])
    start, stop = header[names[1]]["data_offsets"]
    header[names[1]]["data_offsets"] = [start - 2, stop - 2]
    return header, data


def _past_end(header, data):
    last = max((k for k in header if k != "__metadata__"), key=lambda k: header[k]["data_offsets"])
    start, stop = header[last]["data_offsets"]
    header[last]["data_offsets"] = [start + 2**40, stop + 2**40]
    return header, data


SAFETENSORS_CASES = {  # name -> (edit(header, data) -> (header, data), fragment of the message)
    "header_not_object": (lambda h, d: ([1, 2, 3], d), "not a JSON object"),
    "header_not_json": (lambda h, d: (b"{not json" + b" " * 10, d), "corrupt safetensors header"),
    "header_not_utf8": (lambda h, d: (b'{"\xff": 1}', d), "corrupt safetensors header"),
    "entry_not_object": (lambda h, d: ({**h, first_entry(h): [1]}, d), "not a JSON object"),
    "missing_dtype": (lambda h, d: ({**h, first_entry(h): {k: v for k, v in h[first_entry(h)].items() if k != "dtype"}}, d),
                      "unknown dtype"),
    "unknown_dtype": (_set("dtype", "F7"), "unknown dtype 'F7'"),
    "dtype_not_string": (_set("dtype", 4), "unknown dtype"),
    "shape_not_list": (_set("shape", "big"), "shape"),
    "negative_dimension": (_set("shape", [-1, 64]), "shape"),
    "negative_offsets": (_set("data_offsets", [-8, 0]), "negative"),
    "offsets_not_pair": (_set("data_offsets", [0]), "data_offsets"),
    "huge_shape": (_set("shape", [2**62, 2**62]), "does not match shape"),
    "overlapping": (_overlapping, "overlaps"),
    "past_end": (_past_end, "past the end of the file"),
    "truncated_data": (lambda h, d: (h, d[: len(d) // 2]), "past the end of the file"),
    "trailing_bytes": (lambda h, d: (h, d + b"\0" * 8), "after the last tensor"),
    "metadata_not_strings": (lambda h, d: ({**h, "__metadata__": {"format": 1}}, d), "__metadata__"),
}


@pytest.mark.parametrize("case", SAFETENSORS_CASES)
def test_malformed_safetensors_header(folder, case):
    path = folder / "model.safetensors"
    edit, fragment = SAFETENSORS_CASES[case]
    header, data = edit(*split_safetensors(path))
    write_safetensors(path, header, data)
    assert_one_line_error(convert(folder), "model.safetensors", fragment)


@pytest.mark.parametrize("length, fragment", [(2**63, "does not fit the file"), (10**9, "does not fit the file")])
def test_header_length_past_the_file(folder, length, fragment):
    path = folder / "model.safetensors"
    header, data = split_safetensors(path)
    write_safetensors(path, header, data, length=length)
    assert_one_line_error(convert(folder), "model.safetensors", fragment)


# --- config.json and tokenizer files ------------------------------------------------------------------


@pytest.mark.parametrize("content, fragment", [
    (b'{"architectures": ["Llama\xffForCausalLM"]}', "not UTF-8"),
    (b"\xff\xfe{\x00}\x00", "not UTF-8"),
    (b'{"architectures": [', "not valid JSON"),
    (b"[" * 100_000, "not valid JSON"),
    (b"[1, 2]", "expected a JSON object"),
])
def test_config_json_not_utf8_or_not_json(folder, content, fragment):
    (folder / "config.json").write_bytes(content)
    assert_one_line_error(convert(folder), "config.json", fragment)


TOKENIZER_CASES = {  # tokenizer.json content
    "garbage": b"\x00\x01garbage\xff",
    "truncated": b'{"version": "1.0", "model": {"type": "BPE", "vocab": {"a": ',
    "a_list": b"[1, 2, 3]",
    "model_a_list": b'{"model": [], "added_tokens": []}',
    "vocab_of_strings": json.dumps({"model": {"type": "BPE", "vocab": {"a": "zero"}, "merges": []}}).encode(),
    "added_tokens_not_list": json.dumps({"model": {"type": "BPE", "vocab": {"a": 0}, "merges": []},
                                         "added_tokens": 5}).encode(),
    "nested_deeply": b'{"model": ' + b"[" * 100_000,
}


@pytest.mark.parametrize("case", TOKENIZER_CASES)
def test_tokenizer_json_corrupt_or_wrong_structure(folder, case):
    (folder / "tokenizer.json").write_bytes(TOKENIZER_CASES[case])
    assert_one_line_error(convert(folder), str(folder))


def test_tokenizer_config_not_an_object(folder):
    (folder / "tokenizer_config.json").write_text("[]")
    assert_one_line_error(convert(folder), str(folder))


# --- click's usage errors -----------------------------------------------------------------------------


def test_file_where_a_folder_is_expected(folder):
    message = assert_one_line_error(run("convert", folder / "config.json", "-o", folder.parent / "o.gguf"),
                                    "config.json", "is a file")
    assert "MODEL_DIR" in message


def test_folder_where_a_file_is_expected(folder, tmp_path):
    assert_one_line_error(run("convert", folder, "-o", tmp_path), "is a directory", "--output")
    assert_one_line_error(run("convert", folder, "-o", tmp_path / "o.gguf", "--imatrix", tmp_path), "is a directory")
    assert_one_line_error(run("quantize", tmp_path, tmp_path / "o.gguf", "Q8_0"), "is a directory", "SOURCE")
    assert_one_line_error(run("imatrix", folder, "-f", tmp_path, "-o", tmp_path / "i.gguf"), "is a directory")


def test_other_usage_errors():
    assert_one_line_error(run("convert"), "Missing argument")
    assert_one_line_error(run("convert", ".", "--threads", "many"), "--threads", "not a valid integer")
    assert_one_line_error(run("no-such-command"), "No such command")
    assert_one_line_error(run("--bogus"), "No such option")


# --- the message cap ------------------------------------------------------------------------------------


def test_long_message_is_cut_to_200(tmp_path):
    deep = tmp_path
    for i in range(6):
        deep = deep / ("d" * 120 + str(i))
    deep.mkdir(parents=True)
    message = assert_one_line_error(run("convert", deep, "-o", tmp_path / "o.gguf"), "d" * 100)
    assert len(message) == 200 and message.endswith("...")


def test_undecodable_file_name_gives_no_raw_bytes(tmp_path):
    name = os.fsdecode(b"model-\xff\xfe")
    (tmp_path / name).mkdir()
    message = assert_one_line_error(run("convert", tmp_path / name, "-o", tmp_path / "o.gguf"), "no config.json")
    assert "\\udcff" in message
