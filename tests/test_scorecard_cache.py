"""The scorecard's caches are keyed by the model's content, quantkit's version, the type and the imatrix:
two different models in folders of the same name, or a new quantkit version, never reuse a file."""

import json
import os
import shutil
import stat

import numpy as np
import pytest

import quantkit
from quantkit.eval import Settings, scorecard
from quantkit.eval.backends import model_digest
from test_convert_support import llama_weights, make_llama_folder

SETTINGS = Settings(max_new_tokens=4, text_tokens=64, chunk_tokens=32)


@pytest.fixture(scope="module")
def two_models(tmp_path_factory, smollm2_hf_dir):
    """Two tiny Llamas, both in folders called ``model``: same config and shapes, different weights."""
    first = make_llama_folder(tmp_path_factory.mktemp("a"), smollm2_hf_dir)
    halved = {name: (w * np.float16(0.5)).astype(w.dtype) for name, w in llama_weights().items()}
    second = make_llama_folder(tmp_path_factory.mktemp("b"), smollm2_hf_dir, halved)
    return first, second


@pytest.fixture(scope="module")
def prompts(tmp_path_factory):
    path = tmp_path_factory.mktemp("prompts") / "prompts.txt"
    path.write_text("What is the capital of France?\nName a colour.\n")
    return path


def test_model_digest_follows_content_not_place(tmp_path, two_models):
    first, second = two_models
    assert model_digest(first) != model_digest(second)
    copy = shutil.copytree(first, tmp_path / "elsewhere" / "other-name")
    assert model_digest(copy) == model_digest(first)
    config = json.loads((copy / "config.json").read_text())
    (copy / "config.json").write_text(json.dumps({**config, "rms_norm_eps": 1e-6}))
    assert model_digest(copy) != model_digest(first)


def test_same_folder_name_and_new_version_do_not_share_cache(tmp_path, two_models, prompts, monkeypatch):
    first, second = two_models
    out = tmp_path / "report"

    def run(model):
        previous = os.umask(0o022)
        try:
            return scorecard(model, ["Q8_0"], out, prompts=prompts, settings=SETTINGS, progress=False, threads=1)
        finally:
            os.umask(previous)

    def cached():
        return sorted(p.name for p in (out / "files").iterdir()), sorted(p.name for p in (out / "cache").iterdir())

    a = run(first)
    files, results = cached()
    assert len(files) == 4 and len(results) == 4  # baseline and Q8_0: GGUF + .seconds, result + model outputs each
    b = run(second)
    assert [len(names) for names in cached()] == [8, 8]
    assert b["baseline"]["text"]["perplexity"] != a["baseline"]["text"]["perplexity"]
    assert b["types"][0]["answers"] != a["types"][0]["answers"] or b["types"][0]["text"] != a["types"][0]["text"]

    assert run(first)["types"] == a["types"] and [len(names) for names in cached()] == [8, 8]  # reused
    monkeypatch.setattr(quantkit, "__version__", quantkit.__version__ + ".post1")
    run(first)
    assert [len(names) for names in cached()] == [12, 12]  # a new version converts and measures again

    written = [p for folder in ("files", "cache") for p in (out / folder).iterdir()]
    assert {oct(stat.S_IMODE(p.stat().st_mode)) for p in written} == {"0o644"}
    assert not [p for p in written if ".tmp-" in p.name or p.name.endswith(".partial")]
