"""``--tensor-type REGEX=TYPE``: the one override grammar of convert and quantize.

As llama-quantize reads it: the text before the last ``=`` is a regular expression (lower-cased, as
llama-quantize lower-cases it; GGUF tensor names are lower case), the text after it a type name in
any case. The type must be one quantkit writes. The first override whose regex is found in a tensor's
name gives that tensor its type.
"""

from __future__ import annotations

import re
from typing import Iterable, NamedTuple

from gguf import GGMLQuantizationType

from ..errors import QuantkitError
from ..types import quant_type


class Override(NamedTuple):
    """One ``REGEX=TYPE``: the compiled regex and the type it gives."""

    pattern: re.Pattern
    qtype: GGMLQuantizationType

    @property
    def spec(self) -> str:
        return f"{self.pattern.pattern}={self.qtype.name}"


def parse_override(item) -> Override:
    """``"REGEX=TYPE"``, a (regex, type) pair or an :class:`Override` -> a checked Override."""
    if isinstance(item, Override):
        return item
    if isinstance(item, str):
        pattern, sep, type_name = item.rpartition("=")
        if not sep or not pattern or not type_name.strip():
            raise QuantkitError(f"--tensor-type {item!r}: expected REGEX=TYPE, e.g. 'attn_v=Q8_0'")
    else:
        pattern, type_name = item
    try:
        regex = re.compile(pattern.lower())
    except re.error as e:
        raise QuantkitError(f"--tensor-type {pattern!r}: bad regular expression ({e})") from None
    return Override(regex, quant_type(type_name).ggml)


def parse_overrides(items: Iterable | None) -> list[Override]:
    return [parse_override(item) for item in items or ()]


def override_type(overrides: Iterable[Override], name: str) -> GGMLQuantizationType | None:
    """The type of the first override whose regex is found in ``name``, else None."""
    return next((o.qtype for o in overrides if o.pattern.search(name)), None)
