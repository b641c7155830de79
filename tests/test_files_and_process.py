"""Outputs are files like any other (mode 0666 less the umask, not mkstemp's 0600); the library writes
nothing to stdout; it leaves process-wide settings (HF_HUB_OFFLINE, transformers' logging) as it found them."""

import os
import stat
from contextlib import contextmanager

import numpy as np
import pytest

import quantkit
from quantkit.files import write_atomic
from quantkit.ggufio import GGUFStreamWriter, TensorInfo
from quantkit.plan.imatrix_file import Imatrix, ImatrixEntry, write_imatrix
from quantkit.jobs.quantize import requantize


@contextmanager
def umask(mask: int):
    previous = os.umask(mask)
    try:
        yield
    finally:
        os.umask(previous)


def mode(path) -> int:
    return stat.S_IMODE(os.stat(path).st_mode)


@pytest.mark.parametrize("mask, expected", [(0o022, 0o644), (0o027, 0o640), (0o002, 0o664)])
def test_outputs_get_the_permissions_of_any_new_file(tmp_path, smollm2_path, mask, expected):
    q = quantkit.quantize(np.ones((2, 32), np.float32), "Q8_0")
    with umask(mask):
        written = [
            quantkit.write_gguf(tmp_path / "w.gguf", {"general.architecture": "llama"}, {"t": q}),
            write_imatrix(tmp_path / "im.gguf", Imatrix({"a.weight": ImatrixEntry(np.ones((1, 8), np.float32), np.array([2]))})),
            write_atomic(tmp_path / "report.md", "# scorecard\n"),
            write_atomic(tmp_path / "plot.png", b"\x89PNG"),
        ]
        with GGUFStreamWriter(tmp_path / "s.gguf", {}, [TensorInfo("t", q.qtype, q.shape)]) as out:
            out.write("t", q.data)
        written.append(tmp_path / "s.gguf")
        requantize(smollm2_path, tmp_path / "q.gguf", "Q8_0", progress=False)
        written.append(tmp_path / "q.gguf")
    assert {p.name: oct(mode(p)) for p in written} == {p.name: oct(expected) for p in written}
    assert not [p for p in tmp_path.iterdir() if ".tmp-" in p.name]


def test_requantize_and_convert_print_nothing_to_stdout(tmp_path, smollm2_path, smollm2_hf_dir, capfd):
    requantize(smollm2_path, tmp_path / "q.gguf", "Q8_0", progress=True)
    out, err = capfd.readouterr()
    assert out == "" and f"wrote {tmp_path / 'q.gguf'}" in err
    quantkit.convert(smollm2_hf_dir, tmp_path / "c.gguf", "Q8_0", progress=True)
    out, err = capfd.readouterr()
    assert out == "" and f"wrote {tmp_path / 'c.gguf'}" in err


def test_convert_leaves_hf_hub_offline_alone(tmp_path, minilm_dir, monkeypatch):
    """MiniLM's tokenizer is loaded through transformers (local files only, by argument)."""
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    quantkit.convert(minilm_dir, tmp_path / "m.gguf", "F16", progress=False)
    assert "HF_HUB_OFFLINE" not in os.environ
    monkeypatch.setenv("HF_HUB_OFFLINE", "0")
    quantkit.convert(minilm_dir, tmp_path / "m.gguf", "F16", progress=False, overwrite=True)
    assert os.environ["HF_HUB_OFFLINE"] == "0"
