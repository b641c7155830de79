"""Recipe files: llama-quantize's ``--tensor-type-file`` format, read and written.

Format (tools/quantize/quantize.cpp, ``parse_tensor_type_file``): ``REGEX=TYPE`` items separated by
spaces or newlines; no comments. Each item is one ``--tensor-type``: quantkit reads it with the
grammar of :mod:`quantkit.plan.overrides` (regex lower-cased, type in any case, first match wins).
llama-quantize splits an item at its *first* ``=`` and quantkit at its last, so the recipes written
here never put ``=`` in a regex, and both read them the same way.

Written recipes name each tensor exactly: ``^blk\\.(0|1|7)\\.attn_v\\.weight$=Q6_K`` (one line per
kind and type, layers listed) or ``^token_embd\\.weight$=Q8_0``. Python's ``re`` and llama.cpp's
``std::regex`` (ECMAScript) match such patterns identically.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from pathlib import Path

from ..errors import QuantkitError
from ..files import write_atomic
from .overrides import parse_override
from .presets import tensor_sort_key

_LAYER_NAME = re.compile(r"blk\.(\d+)\.(.+)")


def read_recipe(path) -> list[str]:
    """The ``REGEX=TYPE`` items of a ``--tensor-type-file``, in file order, each checked."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as e:
        raise QuantkitError(f"{path}: cannot read the tensor type file: {e.strerror or e}") from None
    except UnicodeDecodeError as e:
        raise QuantkitError(f"{path}: the tensor type file is not UTF-8 text (byte {e.start})") from None
    items = text.split()
    for item in items:
        try:
            parse_override(item)
        except QuantkitError as e:
            raise QuantkitError(f"{path}: {e}") from None
    return items


def recipe_items(types: Mapping[str, object]) -> list[str]:
    """``REGEX=TYPE`` items giving every tensor of ``types`` (GGUF name -> type) exactly its type.

    Tensors of one kind (``attn_v.weight``...) and type in several layers share one item.
    """
    layered: dict[tuple[str, str], list[int]] = {}
    items: list[tuple[tuple, str]] = []
    for name in sorted(types, key=tensor_sort_key):
        qtype = getattr(types[name], "name", str(types[name])).upper()
        if "=" in name or any(c.isspace() for c in name):
            raise QuantkitError(f"tensor {name!r}: a recipe cannot name it (it holds '=' or white space)")
        match = _LAYER_NAME.fullmatch(name)
        if match:
            layered.setdefault((match.group(2), qtype), []).append(int(match.group(1)))
        else:
            items.append(((-1, name.encode()), f"^{re.escape(name)}$={qtype}"))
    for (kind, qtype), layers in layered.items():
        alternatives = "|".join(str(i) for i in sorted(layers))
        items.append(((min(layers), kind.encode(), qtype), fr"^blk\.({alternatives})\.{re.escape(kind)}$={qtype}"))
    return [item for _, item in sorted(items)]


def write_recipe(path, types: Mapping[str, object]) -> Path:
    """Write the recipe of ``types`` (GGUF name -> type) to ``path`` atomically; returns the path."""
    path = Path(path)
    write_atomic(path, "".join(item + "\n" for item in recipe_items(types)))
    return path
