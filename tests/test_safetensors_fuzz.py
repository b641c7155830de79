"""The safetensors header parser under 600 derandomized mutations of a small file.

Must show: reading the folder (HFSource: the header checks) and then every tensor of a folder it
accepts gives success or a one-line quantkit error, never another exception; an accepted header is
one the safetensors library itself opens. Through the CLI (``quantkit convert``, every third
mutation) the exit status is 0 or 2 with one error line of at most 200 characters.
"""

import json
import random
import struct

import numpy as np
import pytest

from quantkit.errors import QuantkitError
from quantkit.sources.hf import HFSource

DTYPES = ["F32", "F16", "BF16", "I8", "U8", "F64", "BOOL", "F7", "", 3, None, ["F32"]]
NUMBERS = [0, 1, 2, 3, 7, 8, 16, 24, -1, -8, 2**31, 2**32, 2**53, 2**63, 2**64, 2**70, 1.5, "8", None, True]


@pytest.fixture(scope="module")
def small(tmp_path_factory):
    """(header dict, data bytes) of a safetensors file with F32, F16 and BF16 tensors."""
    import ml_dtypes  # noqa: F401  (numpy's bfloat16)
    from safetensors.numpy import save_file

    path = tmp_path_factory.mktemp("st") / "model.safetensors"
    save_file({"a.weight": np.arange(8, dtype=np.float32).reshape(2, 4),
               "b.weight": np.arange(6, dtype=np.float16),
               "c.weight": np.ones((3, 2), dtype=ml_dtypes.bfloat16)}, str(path), metadata={"format": "np"})
    raw = path.read_bytes()
    (n,) = struct.unpack("<Q", raw[:8])
    return raw, json.loads(raw[8 : 8 + n]), raw[8 + n :]


def _edit_json(header: dict, data: bytes, rng: random.Random) -> bytes:
    """One random edit of the header JSON: a field's value, a removed field, an entry of another type, ..."""
    header = json.loads(json.dumps(header))
    names = [k for k in header if k != "__metadata__"]
    name = rng.choice(names)
    kind = rng.randrange(8)
    if kind == 0:
        header[name]["dtype"] = rng.choice(DTYPES)
    elif kind == 1:
        header[name]["shape"] = rng.choice([[rng.choice(NUMBERS) for _ in range(rng.randint(0, 3))], "2x4", 8, None])
    elif kind == 2:
        header[name]["data_offsets"] = rng.choice([[rng.choice(NUMBERS), rng.choice(NUMBERS)], [rng.choice(NUMBERS)],
                                                   [0, 8, 16], "0-8", None])
    elif kind == 3:
        del header[name][rng.choice(["dtype", "shape", "data_offsets"])]
    elif kind == 4:
        header[name] = rng.choice([[], "x", 0, None, True, {}])
    elif kind == 5:
        header["__metadata__"] = rng.choice([{"format": 1}, [], "pt", {"a": "b"}, None])
    elif kind == 6:
        start, stop = header[name]["data_offsets"]
        shift = rng.choice([-4, -2, -1, 1, 2, 4, 2**40])
        header[name]["data_offsets"] = [start + shift, stop + shift]
    else:
        header[rng.choice(["x" * 300, "\udcff", "", "a.weight"])] = dict(header[name])
    return json.dumps(header).encode("utf-8", "surrogatepass")


def mutations(small, rng: random.Random):
    raw, header, data = small
    for i in range(600):
        kind = i % 5
        if kind == 0:  # bit flips in the length and header bytes
            blob = bytearray(raw)
            for _ in range(rng.randint(1, 6)):
                at = rng.randrange(8 + len(raw) - len(data))
                blob[at] ^= 1 << rng.randrange(8)
            yield bytes(blob)
        elif kind == 1:  # truncation anywhere
            yield raw[: rng.randrange(len(raw))]
        elif kind == 2:  # a random JSON edit
            text = _edit_json(header, data, rng)
            yield struct.pack("<Q", len(text)) + text + data
        elif kind == 3:  # a huge, small or off-by-some header length
            n = len(raw) - len(data) - 8
            length = rng.choice([0, 1, n - 1, n + 1, n + 8, 2**32, 2**40, 2**63, 2**64 - 1, 100_000_001])
            yield struct.pack("<Q", length) + raw[8:]
        else:  # data section cut short or extended
            cut = rng.randint(1, len(data))
            yield raw[:-cut] if rng.random() < 0.5 else raw + bytes(cut)


def _read_all(folder) -> None:
    source = HFSource(folder)
    for name in source.tensors:
        source.read(name)


def test_fuzz_safetensors_header(tmp_path, small):
    from click.testing import CliRunner
    from safetensors import safe_open

    from quantkit.cli import main

    folder = tmp_path / "model"
    folder.mkdir()
    (folder / "config.json").write_text(json.dumps({"architectures": ["FuzzForCausalLM"]}))
    path = folder / "model.safetensors"
    rng = random.Random(12)
    outcomes = {"ok": 0, "error": 0}
    for i, blob in enumerate(mutations(small, rng)):
        path.write_bytes(blob)
        try:
            _read_all(folder)
            outcomes["ok"] += 1
            with safe_open(str(path), framework="np") as f:  # what quantkit accepts, safetensors opens
                assert sorted(f.keys()) == sorted(HFSource(folder).tensors)
        except QuantkitError as e:
            message = str(e)
            assert "\n" not in message and len(message.replace(str(path), "")) <= 200, (i, message)
            outcomes["error"] += 1
        if i % 3 == 0:  # the CLI: the header is read before the (unsupported) architecture is looked up
            result = CliRunner().invoke(main, ["convert", str(folder), "-o", str(tmp_path / "o.gguf")])
            assert result.exit_code == 2, (i, result.output, result.exception)
            lines = result.stderr.strip().splitlines()
            assert len(lines) == 1 and lines[0].startswith("quantkit: error: "), (i, result.stderr)
            assert len(lines[0]) <= 200 + len("quantkit: error: ") and lines[0].isprintable(), (i, lines[0])
    assert outcomes["ok"] > 10 and outcomes["error"] > 300, outcomes
