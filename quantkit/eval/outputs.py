"""A backend's model outputs for one variant, cached as ``.npz`` so no model pass is ever run twice.

The scorecard's numbers are statistics over these outputs; the outputs are the expensive part
(generation and teacher-forced passes). One file per variant (the baseline included) holds:

- ``variant``: the variant's description (size, bits per weight, quantize seconds, weight error,
  tensor types), JSON text;
- ``answers``: greedy answer token ids per prompt;
- ``forced``: teacher-forced distributions (:class:`Scored`) along the baseline's answers (empty for
  the baseline itself, whose ``answer_scores`` are its teacher-forced pass);
- ``text``: teacher-forced distributions over the text chunks, with the full-vocabulary
  log-probabilities for the baseline (torch) and, for a variant, the exact per-position KLD to the
  baseline in ``text_kld`` (so a variant's file stays small).

Ragged lists are stored concatenated with their lengths. Files are read with ``allow_pickle=False``.
"""

from __future__ import annotations

import io
import json
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ..files import write_atomic
from .backends import Scored
from .metrics import TopK


@dataclass
class Outputs:
    """What one variant's model computed on the scorecard's inputs."""

    variant: dict  # the report's fields of the variant (report._variant_fields)
    answers: list  # greedy answer token ids per prompt
    answer_scores: list = field(default_factory=list)  # Scored per scored answer sequence
    text_scores: list = field(default_factory=list)  # Scored per text chunk
    text_kld: np.ndarray | None = None  # exact per-position KLD to the baseline over the text (torch variants)


def _pack_scores(arrays: dict, prefix: str, scores: list) -> None:
    k = scores[0].topk.ids.shape[1] if scores else 0
    arrays[f"{prefix}_lengths"] = np.array([len(s.target_logprobs) for s in scores], dtype=np.int64)
    arrays[f"{prefix}_ids"] = np.concatenate([s.topk.ids for s in scores]) if scores else np.zeros((0, k), np.int64)
    arrays[f"{prefix}_logprobs"] = (np.concatenate([s.topk.logprobs for s in scores]) if scores
                                    else np.zeros((0, k)))
    arrays[f"{prefix}_targets"] = np.concatenate([s.target_logprobs for s in scores]) if scores else np.zeros(0)
    if scores and scores[0].full is not None:
        arrays[f"{prefix}_full"] = np.concatenate([s.full for s in scores])


def _unpack_scores(data, prefix: str) -> list:
    bounds = np.cumsum([0, *data[f"{prefix}_lengths"].tolist()])
    ids, logprobs, targets = data[f"{prefix}_ids"], data[f"{prefix}_logprobs"], data[f"{prefix}_targets"]
    full = data[f"{prefix}_full"] if f"{prefix}_full" in data.files else None
    return [Scored(TopK(ids[a:b], logprobs[a:b]), targets[a:b], None if full is None else full[a:b])
            for a, b in zip(bounds[:-1], bounds[1:])]


def save_outputs(path: Path, outputs: Outputs) -> None:
    """Write ``outputs`` to ``path`` (.npz, atomically)."""
    arrays = {"variant": np.array(json.dumps(outputs.variant)),
              "answer_lengths": np.array([len(a) for a in outputs.answers], dtype=np.int64),
              "answer_ids": np.array([t for a in outputs.answers for t in a], dtype=np.int64)}
    _pack_scores(arrays, "forced", outputs.answer_scores)
    _pack_scores(arrays, "text", outputs.text_scores)
    if outputs.text_kld is not None:
        arrays["text_kld"] = np.asarray(outputs.text_kld, dtype=np.float64)
    buffer = io.BytesIO()
    np.savez(buffer, **arrays)
    path.parent.mkdir(parents=True, exist_ok=True)
    write_atomic(path, buffer.getvalue())


def load_outputs(path: Path) -> Outputs:
    """The :class:`Outputs` that :func:`save_outputs` wrote to ``path``."""
    with np.load(path, allow_pickle=False) as data:
        bounds = np.cumsum([0, *data["answer_lengths"].tolist()])
        ids = data["answer_ids"].tolist()
        return Outputs(json.loads(str(data["variant"])), [ids[a:b] for a, b in zip(bounds[:-1], bounds[1:])],
                       _unpack_scores(data, "forced"), _unpack_scores(data, "text"),
                       data["text_kld"] if "text_kld" in data.files else None)
