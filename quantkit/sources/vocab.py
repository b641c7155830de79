"""Tokenizers -> GGUF ``tokenizer.*`` keys, as llama.cpp's convert_hf_to_gguf.py writes them.

Three kinds, each written through a ``gguf.GGUFWriter`` used as key collector:

- BPE (``tokenizer.ggml.model = "gpt2"``) from ``tokenizer.json``: tokens in id order, token types
  (CONTROL for special added tokens, USER_DEFINED for other added ones, NORMAL, UNUSED for holes),
  merges, and ``tokenizer.ggml.pre``: the name of llama.cpp's pre-tokenizer, found by the sha256 of
  the ids the Hugging Face tokenizer gives for a check text (see :mod:`.pretokenizers`);
- SentencePiece (``"llama"``) from ``tokenizer.model``: pieces, scores and types;
- WordPiece (``"bert"``) for BERT: tokens in llama.cpp's phantom-space form (``##x`` -> ``x``,
  ``x`` -> ``\u2581x``).

Special token ids, ``add_bos``/``add_eos`` and the chat template come from ``gguf.SpecialVocab``; the
normalizer flags llama.cpp reads (lowercase, strip accents) from tokenizer.json's normalizer, as
llama.cpp's own gguf-py does (newer than gguf 0.19 on PyPI).
"""

from __future__ import annotations

import json
from contextlib import contextmanager
from hashlib import sha256
from pathlib import Path

import gguf
from tokenizers import Tokenizer

from ..errors import first_line
from .hf import SourceError, load_error, load_pretrained, read_json
from .pretokenizers import CHECK_TEXT, PRE_TOKENIZERS

# added tokens llama.cpp treats as control tokens even when not marked special
_LOOKS_SPECIAL = ("<pad>", "<mask>", "<2mass>", "[@BOS@]")


def looks_special(text: str) -> bool:
    return (
        text in _LOOKS_SPECIAL
        or (text.startswith("<|") and text.endswith("|>"))
        or (text.startswith("<\uff5c") and text.endswith("\uff5c>"))
        or (text.startswith("<unused") and text.endswith(">"))
    )


NORMALIZER_KEYS = {  # tokenizer.json normalizer attribute -> GGUF key (bool)
    "lowercase": "tokenizer.ggml.normalizer.lowercase",
    "strip_accents": "tokenizer.ggml.normalizer.strip_accents",
}


def normalizer_flags(normalizer: dict | None) -> dict[str, bool]:
    """{"lowercase": bool, "strip_accents": bool} (those that are set) of a tokenizer.json normalizer."""
    flags: dict[str, bool] = {}
    if not normalizer:
        return flags
    kind = normalizer.get("type")
    if kind == "Lowercase":
        flags["lowercase"] = True
    elif kind == "StripAccents":
        flags["strip_accents"] = True
    elif kind == "BertNormalizer":
        flags.update({k: normalizer[k] for k in NORMALIZER_KEYS if normalizer.get(k) is not None})
    elif kind == "Sequence":
        for part in normalizer.get("normalizers", []):
            flags.update(normalizer_flags(part))
    return flags


def add_special_vocab(w, folder: Path, **kwargs) -> None:
    """gguf.SpecialVocab's keys (special ids, add_* flags, merges, chat template), then normalizer flags."""
    gguf.SpecialVocab(folder, **kwargs).add_to_gguf(w, quiet=True)
    tokenizer_json = folder / "tokenizer.json"
    if tokenizer_json.is_file():
        normalizer = read_json(tokenizer_json).get("normalizer")
        for name, value in normalizer_flags(normalizer).items():
            w.add_bool(NORMALIZER_KEYS[name], bool(value))


# tokenizer_config.json classes whose transformers loader takes tokenizer.json as it is (no __init__ of
# their own that rebuilds the normalizer or pre-tokenizer)
_VERBATIM_CLASSES = ("TokenizersBackend", "PreTrainedTokenizerFast")
# model types (or none) for which transformers may patch the pre-tokenizer regex of a large vocabulary
_MISTRAL_MODEL_TYPES = ("", "mistral", "mistral3", "voxtral", "ministral", "pixtral")
_SPECIAL_TOKEN_KEYS = ("bos_token", "eos_token", "unk_token", "sep_token", "pad_token", "cls_token", "mask_token")


def _token_content(token) -> str | None:
    return token.get("content") if isinstance(token, dict) else token


def _transformers_uses_json_as_is(folder: Path) -> bool:
    """Whether transformers' AutoTokenizer would give exactly tokenizer.json's tokenizer.

    True when tokenizer_config.json names a class without a constructor of its own and sets nothing
    transformers applies on top of the file: no add_bos/add_eos (they rewrite the post-processor), no
    special token missing from tokenizer.json's added tokens (transformers would add it), no
    truncation or padding, no cleanup of decoded spaces, and not a large Mistral vocabulary (whose
    regex transformers patches).
    """
    try:
        config = json.loads((folder / "tokenizer_config.json").read_text(encoding="utf-8"))
        tokenizer_json = json.loads((folder / "tokenizer.json").read_text(encoding="utf-8"))
        model_type = json.loads((folder / "config.json").read_text(encoding="utf-8")).get("model_type") or ""
    except (OSError, ValueError):
        return False
    if not isinstance(config, dict) or config.get("tokenizer_class") not in _VERBATIM_CLASSES:
        return False
    if any(key in config for key in ("add_bos_token", "add_eos_token")) or config.get("clean_up_tokenization_spaces"):
        return False
    if tokenizer_json.get("truncation") or tokenizer_json.get("padding"):
        return False
    if len(tokenizer_json.get("model", {}).get("vocab") or ()) > 100_000 and model_type in _MISTRAL_MODEL_TYPES:
        return False
    added = {(t.get("content"), t.get("id")) for t in tokenizer_json.get("added_tokens", [])}
    added_contents = {content for content, _ in added}
    named = [_token_content(config.get(key)) for key in _SPECIAL_TOKEN_KEYS]
    extra = config.get("extra_special_tokens") or config.get("additional_special_tokens") or []
    named += [_token_content(t) for t in (extra.values() if isinstance(extra, dict) else extra)]
    if any(t is not None and t not in added_contents for t in named):
        return False
    declared = config.get("added_tokens_decoder") or {}
    return all((entry.get("content"), int(i)) in added for i, entry in declared.items())


class JsonTokenizer:
    """tokenizer.json through the `tokenizers` library, with the methods of transformers' tokenizers
    that this module uses (and their results, when :func:`_transformers_uses_json_as_is` holds)."""

    def __init__(self, path: Path):
        self._tokenizer = Tokenizer.from_file(str(path))
        self.added_tokens_decoder = self._tokenizer.get_added_tokens_decoder()

    def get_vocab(self) -> dict[str, int]:
        return self._tokenizer.get_vocab(with_added_tokens=True)

    def get_added_vocab(self) -> dict[str, int]:
        return {token.content: i for i, token in sorted(self.added_tokens_decoder.items())}

    def encode(self, text: str, add_special_tokens: bool = True) -> list[int]:
        return self._tokenizer.encode(text, add_special_tokens=add_special_tokens).ids

    def decode(self, ids: list[int]) -> str:
        return self._tokenizer.decode(ids, skip_special_tokens=False)


def _load_tokenizer(folder: Path):
    """The Hugging Face tokenizer transformers gives for the folder: what llama.cpp must match.

    Its class may depend on tokenizer_config.json or config.json's model_type (e.g. Qwen2Tokenizer
    rebuilds the pre-tokenizer in code), so transformers loads it, unless tokenizer.json alone is
    known to give the same tokenizer: then the `tokenizers` library reads it, without the seconds
    that importing transformers (and torch) costs.
    """
    if not (folder / "tokenizer.json").is_file() and not (folder / "vocab.txt").is_file():
        raise SourceError(f"{folder}: no tokenizer (tokenizer.json, tokenizer.model or vocab.txt)")
    if _transformers_uses_json_as_is(folder):
        try:
            return JsonTokenizer(folder / "tokenizer.json")
        except Exception as e:  # tokenizers raises a bare Exception for a malformed file
            raise SourceError(f"{folder}: cannot load the tokenizer: {first_line(e)}") from None
    from transformers import AutoTokenizer  # deferred: optional and heavy (the [hf] extra)

    return load_pretrained(AutoTokenizer.from_pretrained, folder, "tokenizer", local_files_only=True)


def pre_tokenizer_name(tokenizer, folder: Path) -> str:
    """llama.cpp's name for the tokenizer's pre-tokenization (``tokenizer.ggml.pre``)."""
    digest = sha256(str(tokenizer.encode(CHECK_TEXT)).encode()).hexdigest()
    name = PRE_TOKENIZERS.get(digest)
    if name is None:
        raise SourceError(
            f"{folder}: BPE pre-tokenizer not recognised (check-text hash {digest[:16]}...); "
            "llama.cpp would tokenize differently from Hugging Face"
        )
    return name


def base_vocab(folder: Path, vocab_size: int | None) -> tuple[list[str], list[int], str]:
    """(tokens, token types, pre-tokenizer name) of a BPE or WordPiece tokenizer, ``vocab_size`` long."""
    tokenizer = _load_tokenizer(folder)
    vocab = tokenizer.get_vocab()
    size = vocab_size or len(vocab)
    if max(vocab.values()) >= size:
        raise SourceError(f"{folder}: tokenizer has id {max(vocab.values())}, config.json vocab_size is {size}")
    by_id = {i: text for text, i in vocab.items()}
    added = tokenizer.get_added_vocab()
    decoders = tokenizer.added_tokens_decoder  # id -> AddedToken (special, normalized)
    tokens, types = [], []
    for i in range(size):
        text = by_id.get(i)
        if text is None:
            tokens.append(f"[PAD{i}]")
            types.append(gguf.TokenType.UNUSED)
            continue
        if text in added:
            if not decoders[i].normalized:  # llama.cpp expects added tokens pre-normalized
                text = tokenizer.decode(tokenizer.encode(text, add_special_tokens=False))
            if decoders[i].special or looks_special(text):
                types.append(gguf.TokenType.CONTROL)
            else:
                text = text.replace("\u2581", " ")
                types.append(gguf.TokenType.USER_DEFINED)
        else:
            types.append(gguf.TokenType.NORMAL)
        tokens.append(text)
    return tokens, types, pre_tokenizer_name(tokenizer, folder)


def set_bpe_vocab(w, folder: Path, config: dict) -> None:
    tokens, types, pre = base_vocab(folder, config.get("vocab_size"))
    w.add_tokenizer_model("gpt2")
    w.add_tokenizer_pre(pre)
    w.add_token_list(tokens)
    w.add_token_types(types)
    add_special_vocab(w, folder, load_merges=True)


def set_sentencepiece_vocab(w, folder: Path, config: dict) -> None:
    """SentencePiece pieces, scores and types from tokenizer.model, with added tokens on top."""
    from sentencepiece import (
        SentencePieceProcessor,  # deferred: optional (the [hf] extra)
    )

    model_file = folder / "tokenizer.model"
    if not model_file.is_file():
        raise SourceError(f"{folder}: no tokenizer.model (this architecture's SentencePiece vocabulary)")
    sp = SentencePieceProcessor()
    try:
        sp.LoadFromFile(str(model_file))
    except (OSError, RuntimeError) as e:
        raise SourceError(f"{model_file}: not a SentencePiece model ({str(e).splitlines()[0]})") from None
    size = config.get("vocab_size") or sp.vocab_size()
    tokens = [f"[PAD{i}]".encode() for i in range(size)]
    scores = [-10000.0] * size
    types = [gguf.TokenType.UNUSED] * size
    for i in range(min(sp.vocab_size(), size)):
        tokens[i] = sp.IdToPiece(i).encode("utf-8")
        scores[i] = sp.GetScore(i)
        if sp.IsUnknown(i):
            types[i] = gguf.TokenType.UNKNOWN
        elif sp.IsControl(i):
            types[i] = gguf.TokenType.CONTROL
        elif sp.IsUnused(i):
            types[i] = gguf.TokenType.UNUSED
        elif sp.IsByte(i):
            types[i] = gguf.TokenType.BYTE
        else:
            types[i] = gguf.TokenType.NORMAL
    added_file = folder / "added_tokens.json"
    if added_file.is_file():
        for text, i in read_json(added_file).items():
            if i < size:
                tokens[i], scores[i], types[i] = text.encode("utf-8"), -1000.0, gguf.TokenType.USER_DEFINED
    config_file = folder / "tokenizer_config.json"
    if config_file.is_file():
        decoders = read_json(config_file).get("added_tokens_decoder", {})
        for key, entry in decoders.items():
            i, text = int(key), entry["content"]
            if i >= size:
                continue
            if entry.get("special") or looks_special(text):
                types[i] = gguf.TokenType.CONTROL
            else:
                text = text.replace("\u2581", " ")
                types[i] = gguf.TokenType.USER_DEFINED
            tokens[i], scores[i] = text.encode("utf-8"), -1000.0
    w.add_tokenizer_model("llama")
    w.add_tokenizer_pre("default")
    w.add_token_list(tokens)
    w.add_token_scores(scores)
    w.add_token_types(types)
    add_special_vocab(w, folder, n_vocab=len(tokens))


@contextmanager
def _custom_code_refused():
    """transformers' "run the custom code? [y/N]" prompt answered no without reading stdin, while
    gguf-py's LlamaHfVocab loads the tokenizer (it passes no ``trust_remote_code``): a folder's
    ``auto_map`` code is then never imported, whatever stdin holds."""
    try:
        from transformers import dynamic_module_utils  # deferred: optional and heavy (the [hf] extra)
    except ImportError:  # no transformers: nothing can import the folder's code (gguf-py then asks for it)
        yield
        return
    saved = dynamic_module_utils.TIME_OUT_REMOTE_CODE
    dynamic_module_utils.TIME_OUT_REMOTE_CODE = 0  # 0: refuse instead of asking (transformers' CI setting)
    try:
        yield
    finally:
        dynamic_module_utils.TIME_OUT_REMOTE_CODE = saved


def set_llama_vocab(w, folder: Path, config: dict) -> None:
    """Llama-family order: tokenizer.model (SentencePiece), else a byte-fallback tokenizer.json
    (gguf.LlamaHfVocab), else BPE; plus ``add_space_prefix`` from tokenizer_config.json."""
    config_file = folder / "tokenizer_config.json"
    if config_file.is_file():
        prefix = read_json(config_file).get("add_prefix_space")
        if prefix is not None:
            w.add_add_space_prefix(prefix)
    if (folder / "tokenizer.model").is_file():
        return set_sentencepiece_vocab(w, folder, config)
    if not (folder / "tokenizer.json").is_file():
        raise SourceError(f"{folder}: no tokenizer (tokenizer.json or tokenizer.model)")
    try:
        with _custom_code_refused():
            hf_vocab = gguf.LlamaHfVocab(folder)
    except (FileNotFoundError, TypeError):
        return set_bpe_vocab(w, folder, config)
    except Exception as e:  # a tokenizer.json of another structure, or one transformers cannot load
        raise load_error(folder, "tokenizer", e) from None
    tokens, scores, types = zip(*hf_vocab.all_tokens())
    w.add_tokenizer_model("llama")
    w.add_tokenizer_pre("default")
    w.add_token_list(list(tokens))
    w.add_token_scores(list(scores))
    w.add_token_types(list(types))
    add_special_vocab(w, folder, n_vocab=len(tokens))


def set_wordpiece_vocab(w, folder: Path, config: dict) -> None:
    """BERT's WordPiece in llama.cpp's phantom-space form, with ``token_type_count``."""
    tokens, types, pre = base_vocab(folder, config.get("vocab_size"))
    w.add_token_type_count(config.get("type_vocab_size", 1))

    def phantom(text: str, kind: int) -> str:
        if kind == gguf.TokenType.CONTROL:
            return text
        return text[2:] if text.startswith("##") else "\u2581" + text

    w.add_tokenizer_model("bert")
    w.add_tokenizer_pre(pre)
    w.add_token_list([phantom(t, k) for t, k in zip(tokens, types)])
    w.add_token_types(types)
    add_special_vocab(w, folder, n_vocab=len(tokens))
