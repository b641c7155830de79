"""Scorecard metrics on hand-made cases with known answers."""

import math

import numpy as np
import pytest

from quantkit.eval import metrics


def _random_logprobs(rng, positions, vocab, scale=3.0):
    return metrics.log_softmax(rng.standard_normal((positions, vocab)) * scale)


def test_kld_of_a_distribution_with_itself_is_zero():
    lp = _random_logprobs(np.random.default_rng(0), 20, 500)
    assert np.all(metrics.kld(lp, lp) == 0.0)
    top = metrics.top_k(lp, 10)
    assert np.all(metrics.kld_topk(top, top) == 0.0)


def test_kld_of_two_point_distributions():
    p = np.log([[0.5, 0.5]])
    q = np.log([[0.9, 0.1]])
    expected = 0.5 * math.log(0.5 / 0.9) + 0.5 * math.log(0.5 / 0.1)
    assert metrics.kld(p, q)[0] == pytest.approx(expected, rel=1e-12)
    assert metrics.kld(q, p)[0] == pytest.approx(0.9 * math.log(0.9 / 0.5) + 0.1 * math.log(0.1 / 0.5), rel=1e-12)


def test_lumped_kld_is_a_lower_bound_and_exact_with_the_whole_vocabulary():
    rng = np.random.default_rng(1)
    p = _random_logprobs(rng, 50, 300)
    q = metrics.log_softmax(p + 0.5 * rng.standard_normal(p.shape))
    exact = metrics.kld(p, q)
    for k in (5, 40):
        lumped = metrics.kld_topk(metrics.top_k(p, k), metrics.top_k(q, k))
        assert np.all(lumped <= exact + 1e-12)
        assert lumped.mean() > 0.2 * exact.mean()  # not trivially zero
    np.testing.assert_allclose(metrics.kld_topk(metrics.top_k(p, 300), metrics.top_k(q, 300)), exact, rtol=1e-9, atol=1e-12)


def test_top_k_keeps_the_most_likely_tokens_in_order():
    lp = np.log(np.array([[0.1, 0.6, 0.05, 0.25]]))
    top = metrics.top_k(lp, 2)
    assert top.ids.tolist() == [[1, 3]]
    np.testing.assert_allclose(np.exp(top.logprobs), [[0.6, 0.25]])
    assert top.top1().tolist() == [1]


def test_perplexity_of_known_distributions():
    assert metrics.perplexity(np.full(10, math.log(1 / 4))) == pytest.approx(4.0)
    # a model that is uniform over a 1000-token vocabulary has perplexity 1000 on any text
    uniform = metrics.log_softmax(np.zeros((7, 1000)))
    assert metrics.perplexity(uniform[np.arange(7), [3, 1, 4, 1, 5, 9, 2]]) == pytest.approx(1000.0)
    # tokens seen with probability 1/2 and 1/8: geometric mean of the inverses is 4
    assert metrics.perplexity(np.log([0.5, 0.125])) == pytest.approx(4.0)


def test_cosine_similarity():
    a = np.array([[1.0, 2.0, 3.0], [1.0, 0.0, 0.0]])
    b = np.array([[2.0, 4.0, 6.0], [0.0, 1.0, 0.0]])
    np.testing.assert_allclose(metrics.cosine_similarity(a, b), [1.0, 0.0], atol=1e-15)


def test_bootstrap_interval_holds_the_mean_and_shrinks_with_more_samples():
    rng = np.random.default_rng(2)
    small = metrics.bootstrap_ci(rng.normal(1.0, 1.0, 20))
    large = metrics.bootstrap_ci(rng.normal(1.0, 1.0, 2000))
    for ci in (small, large):
        assert ci["lo"] < ci["mean"] < ci["hi"]
    assert (large["hi"] - large["lo"]) < 0.3 * (small["hi"] - small["lo"])
    assert 0.07 < large["hi"] - large["lo"] < 0.11  # 2 x 1.96 sigma / sqrt(n) = 0.088
    assert metrics.bootstrap_ci(np.full(5, 0.25)) == {"mean": 0.25, "lo": 0.25, "hi": 0.25}
    ppl = metrics.bootstrap_ci(np.full(4, math.log(3.0)), transform=np.exp)
    assert ppl["mean"] == pytest.approx(3.0) and ppl["lo"] == pytest.approx(3.0)


def test_within_noise_of_paired_samples():
    rng = np.random.default_rng(3)
    a = rng.normal(0.0, 1.0, 200)
    assert metrics.within_noise(a, a + rng.normal(0.0, 0.01, 200))
    assert not metrics.within_noise(a, a + 0.5 + rng.normal(0.0, 0.01, 200))


def test_identical_answers_embed_to_similarity_one(minilm_dir):
    from sentence_transformers import SentenceTransformer

    model = SentenceTransformer(str(minilm_dir), device="cpu")
    answers = ["The capital of France is Paris.", "def f(x):\n    return x * 2"]
    other = ["Bananas are yellow.", "def f(x):\n    return x * 2"]
    similarity = metrics.cosine_similarity(model.encode(answers), model.encode(answers))
    np.testing.assert_allclose(similarity, 1.0, atol=1e-6)
    different = metrics.cosine_similarity(model.encode(answers), model.encode(other))
    assert different[0] < 0.5 and different[1] == pytest.approx(1.0, abs=1e-6)
