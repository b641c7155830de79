"""The tokenizer fast path: tokenizer.json through `tokenizers` only where transformers gives the same.

For each variant of SmolLM2's tokenizer folder, the vocabulary quantkit writes (tokens, types,
pre-tokenizer name) must equal the one built from transformers' AutoTokenizer; the variants that
transformers changes must not take the fast path.
"""

import json
import shutil
from unittest import mock

import pytest

from quantkit.sources import vocab


def _variant(root, smollm2_hf_dir, name, edit_config=None, edit_json=None):
    folder = root / name
    folder.mkdir()
    for file in ("config.json", "tokenizer.json", "tokenizer_config.json"):
        shutil.copy(smollm2_hf_dir / file, folder / file)
    for file, edit in (("tokenizer_config.json", edit_config), ("tokenizer.json", edit_json)):
        if edit:
            data = json.loads((folder / file).read_text())
            edit(data)
            (folder / file).write_text(json.dumps(data))
    return folder


def _with_transformers(folder):
    with mock.patch.object(vocab, "_transformers_uses_json_as_is", return_value=False):
        return vocab.base_vocab(folder, None)


def _json_as_is(folder):
    with mock.patch.object(vocab, "_transformers_uses_json_as_is", return_value=True):
        return vocab.base_vocab(folder, None)


VARIANTS = {  # name -> (tokenizer_config edit, tokenizer.json edit, fast path expected)
    "as_saved": (None, None, True),
    "fast_class": (lambda c: c.update(tokenizer_class="PreTrainedTokenizerFast"), None, True),
    "new_pad_token": (lambda c: c.update(pad_token="<|quantkit_pad|>"), None, False),
    "new_extra_token": (lambda c: c.update(extra_special_tokens=["<|tool|>"]), None, False),
    "add_bos": (lambda c: c.update(add_bos_token=True), None, False),
    "gpt2_class": (lambda c: c.update(tokenizer_class="GPT2Tokenizer"), None, False),
    "truncation": (None, lambda j: j.update(truncation={"direction": "Right", "max_length": 8, "strategy": "LongestFirst", "stride": 0}), False),
}


@pytest.mark.parametrize("name", VARIANTS)
def test_vocab_equals_transformers(tmp_path, smollm2_hf_dir, name):
    edit_config, edit_json, fast = VARIANTS[name]
    folder = _variant(tmp_path, smollm2_hf_dir, name, edit_config, edit_json)
    assert vocab._transformers_uses_json_as_is(folder) is fast
    tokens, types, pre = vocab.base_vocab(folder, None)
    assert (tokens, types, pre) == _with_transformers(folder)
    assert pre == "smollm" and len(tokens) == 49152 + (name in ("new_pad_token", "new_extra_token"))


@pytest.mark.parametrize("name", ["new_pad_token", "new_extra_token"])
def test_variants_transformers_changes_would_differ_as_is(tmp_path, smollm2_hf_dir, name):
    """The guard is needed: read as-is, these folders give another vocabulary or pre-tokenizer."""
    edit_config, edit_json, _ = VARIANTS[name]
    folder = _variant(tmp_path, smollm2_hf_dir, name, edit_config, edit_json)
    assert _json_as_is(folder) != _with_transformers(folder)


def test_fast_path_does_not_import_transformers(smollm2_hf_dir):
    import subprocess
    import sys

    code = (
        "import sys; from pathlib import Path; from quantkit.sources import vocab; "
        f"t, _, pre = vocab.base_vocab(Path({str(smollm2_hf_dir)!r}), None); "
        "print(len(t), pre, 'transformers' in sys.modules, 'torch' in sys.modules)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.split()
    assert out == ["49152", "smollm", "False", "False"]
