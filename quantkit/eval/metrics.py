"""Quality metrics of a quantized model against its 16-bit baseline, and their uncertainty.

Distributions are next-token log-probabilities, natural log. Two forms:

- full: a float array ``(positions, vocab)`` of log-softmax values (torch backend);
- top-k: ``TopK(ids, logprobs)``, both ``(positions, k)``, the k most likely tokens of each
  position and their full-vocabulary log-probabilities (what llama.cpp's server returns with
  ``n_probs``).

KLD of top-k distributions lumps everything outside the tokens both sides list into one "tail"
outcome. Merging outcomes can only lower a KL divergence, so this is a lower bound of the exact
KLD; the torch backend reports both, so the gap is visible.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

BOOTSTRAP_SAMPLES = 2000
CONFIDENCE = 0.95


@dataclass(frozen=True)
class TopK:
    """The k most likely tokens per position: ``ids`` int64 and ``logprobs`` float64, ``(positions, k)``."""

    ids: np.ndarray
    logprobs: np.ndarray

    def __len__(self) -> int:
        return len(self.ids)

    def top1(self) -> np.ndarray:
        return self.ids[np.arange(len(self.ids)), np.argmax(self.logprobs, axis=1)]


def log_softmax(logits) -> np.ndarray:
    """float64 log-probabilities of logits along the last axis."""
    x = np.asarray(logits, dtype=np.float64)
    x = x - x.max(axis=-1, keepdims=True)
    return x - np.log(np.exp(x).sum(axis=-1, keepdims=True))


def top_k(logprobs, k: int) -> TopK:
    """The top-k form of full log-probabilities ``(positions, vocab)``, most likely first."""
    lp = np.asarray(logprobs, dtype=np.float64)
    k = min(k, lp.shape[-1])
    ids = np.argpartition(-lp, k - 1, axis=-1)[:, :k]
    values = np.take_along_axis(lp, ids, axis=-1)
    order = np.argsort(-values, axis=-1, kind="stable")
    return TopK(np.take_along_axis(ids, order, axis=-1).astype(np.int64), np.take_along_axis(values, order, axis=-1))


def kld(base_logprobs, quant_logprobs) -> np.ndarray:
    """Per-position KL(base || quant) of full distributions ``(positions, vocab)``, in nats."""
    p_log = np.asarray(base_logprobs, dtype=np.float64)
    q_log = np.asarray(quant_logprobs, dtype=np.float64)
    return np.maximum((np.exp(p_log) * (p_log - q_log)).sum(axis=-1), 0.0)


def _tail(listed_mass: float) -> float:
    """Probability left outside the listed tokens (kept > 0 so its log is finite)."""
    return max(1.0 - listed_mass, 1e-12)


def kld_topk(base: TopK, quant: TopK) -> np.ndarray:
    """Per-position KL(base || quant) over the tokens both top-k lists hold plus one lumped tail.

    A lower bound of the exact KLD (merging outcomes cannot increase a KL divergence).
    """
    out = np.empty(len(base))
    for i in range(len(base)):
        q_of = dict(zip(quant.ids[i].tolist(), quant.logprobs[i].tolist()))
        p_common, q_common = [], []
        for token, p_lp in zip(base.ids[i].tolist(), base.logprobs[i].tolist()):
            if token in q_of:
                p_common.append(p_lp)
                q_common.append(q_of[token])
        p_lp, q_lp = np.array(p_common), np.array(q_common)
        p_tail, q_tail = _tail(np.exp(p_lp).sum()), _tail(np.exp(q_lp).sum())
        out[i] = max(float((np.exp(p_lp) * (p_lp - q_lp)).sum() + p_tail * np.log(p_tail / q_tail)), 0.0)
    return out


def perplexity(token_logprobs) -> float:
    """exp of the mean negative log-probability of the tokens that actually came."""
    return float(np.exp(-np.mean(np.asarray(token_logprobs, dtype=np.float64))))


def cosine_similarity(a, b) -> np.ndarray:
    """Row-wise cosine similarity of two ``(n, dim)`` embedding arrays."""
    a = np.asarray(a, dtype=np.float64)
    b = np.asarray(b, dtype=np.float64)
    norms = np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1)
    return np.clip((a * b).sum(axis=1) / np.maximum(norms, 1e-30), -1.0, 1.0)


def _resamples(n: int, seed: int) -> np.ndarray:
    """``(BOOTSTRAP_SAMPLES, n)`` indices drawn with replacement; the same for every metric of a run."""
    return np.random.default_rng(seed).integers(0, n, size=(BOOTSTRAP_SAMPLES, n))


def bootstrap_ci(values, seed: int = 0, transform=None) -> dict:
    """Mean of ``values`` and its 95% percentile-bootstrap interval: {"mean", "lo", "hi"}.

    ``transform`` (e.g. ``np.exp`` for perplexity from log-probabilities) is applied to the mean
    and to each resampled mean.
    """
    v = np.asarray(values, dtype=np.float64)
    f = transform or (lambda x: x)
    if v.size == 0:
        return {"mean": None, "lo": None, "hi": None}
    means = f(v[_resamples(v.size, seed)].mean(axis=1))
    alpha = (1 - CONFIDENCE) / 2
    return {"mean": float(f(v.mean())), "lo": float(np.quantile(means, alpha)), "hi": float(np.quantile(means, 1 - alpha))}


def within_noise(a, b, seed: int = 0) -> bool:
    """Whether two paired samples (same prompts or positions) have means within noise of each other.

    True when the 95% bootstrap interval of the mean of the paired differences holds 0.
    """
    d = np.asarray(a, dtype=np.float64) - np.asarray(b, dtype=np.float64)
    if d.size == 0:
        return True
    ci = bootstrap_ci(d, seed=seed)
    return ci["lo"] <= 0.0 <= ci["hi"]
