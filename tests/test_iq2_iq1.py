"""IQ2_XXS / IQ2_XS / IQ2_S / IQ1_S / IQ1_M: bytes equal to llama.cpp's ggml_quantize_chunk, exact
dequantization.

The C reference is slow for these types (IQ2_XS ~4 MB/s; IQ1 builds its 2048-entry tables on first
use, ~10 s), so cases stay at a few dozen to a few hundred rows.
"""

import numpy as np
import pytest

import llamacpp_ref as ref
from quantkit.errors import ImatrixError
from quantkit.quants import QuantizedTensor, dequantize, quantize

TYPES = ["IQ2_XS", "IQ2_XXS", "IQ2_S", "IQ1_S", "IQ1_M"]
NEEDS_IMATRIX = {"IQ2_XXS", "IQ2_XS", "IQ1_S"}
# llama.cpp's test-quantize-fns thresholds: 2-bit and "binary" (1.5-bit) types
SELFTEST_MAX_ERROR = {"IQ2_XS": 0.0075, "IQ2_XXS": 0.0075, "IQ2_S": 0.0075, "IQ1_S": 0.025, "IQ1_M": 0.025}


def check_exact(qtype, x, imatrix):
    """quantkit's bytes == ggml_quantize_chunk's; quantkit's dequantization == dequantize_row_*."""
    x = np.ascontiguousarray(x, dtype=np.float32)
    expected = ref.quantize(x, qtype, imatrix)
    got = quantize(x, qtype, imatrix=imatrix)
    assert got.data.dtype == np.uint8
    np.testing.assert_array_equal(got.data, expected)
    values = dequantize(QuantizedTensor(got.qtype, got.shape, expected))
    np.testing.assert_array_equal(values.reshape(-1).view(np.uint32), ref.dequantize(expected, qtype, x.size).view(np.uint32))


def random_imatrix(rng, n):
    return (rng.random(n) + 0.01).astype(np.float32)


def activation_imatrix(rng, n, samples=48):
    """Mean of squared activations whose scale varies strongly from column to column."""
    act = rng.standard_normal((samples, n)) * np.exp(1.5 * rng.standard_normal(n))
    return (act**2).mean(axis=0).astype(np.float32)


def imatrices(qtype, rng, n):
    out = [random_imatrix(rng, n), activation_imatrix(rng, n)]
    if qtype not in NEEDS_IMATRIX:
        out.append(None)
    return out


@pytest.mark.parametrize("qtype", TYPES)
@pytest.mark.parametrize("shape", [(1, 256), (7, 512), (40, 1024)])
def test_gaussian(qtype, shape):
    rng = np.random.default_rng([TYPES.index(qtype), *shape])
    x = rng.standard_normal(shape).astype(np.float32)
    for imatrix in imatrices(qtype, rng, shape[1]):
        check_exact(qtype, x, imatrix)


@pytest.mark.parametrize("qtype", TYPES)
def test_heavy_tailed(qtype):
    rng = np.random.default_rng(11)
    t2 = rng.standard_t(2, (48, 512)).astype(np.float32)
    lognormal = (rng.standard_normal((48, 512)) * np.exp(rng.standard_normal((48, 512)))).astype(np.float32)
    for x in (t2, lognormal):
        for imatrix in imatrices(qtype, rng, 512):
            check_exact(qtype, x, imatrix)


@pytest.mark.parametrize("qtype", TYPES)
def test_edge_rows(qtype):
    """Zero rows and groups, constants, ties, tiny/huge scales, sparse rows, zero/tiny/huge importances."""
    rng = np.random.default_rng(5)
    n = 512
    z = rng.standard_normal(n)
    z[:40] = 0
    z[300:340] = 0
    spikes = rng.standard_normal(n)
    spikes[::7] *= 100
    rows = [
        np.zeros(n),
        z,
        np.full(n, 0.5),
        np.full(n, -0.25),
        np.round(rng.standard_normal(n) * 2) / 2,
        rng.standard_normal(n) * 1e-9,
        rng.standard_normal(n) * 1e4,
        spikes,
        np.where(rng.random(n) < 0.9, 0, rng.standard_normal(n)),
    ]
    rows += [rng.standard_normal(n) * scale for scale in (1e-20, 1e-12, 1e-7, 1e-6, 1e6, 1e9)]
    x = np.array(rows, dtype=np.float32)
    with_zeros = random_imatrix(rng, n)
    with_zeros[:64] = 0
    with_zeros[200:260] = 0
    tiny, huge = random_imatrix(rng, n) * 1e-6, random_imatrix(rng, n) * 1e6
    for imatrix in imatrices(qtype, rng, n) + [with_zeros, tiny, huge]:
        check_exact(qtype, x, imatrix)


@pytest.mark.parametrize("qtype", TYPES)
def test_smollm2_weights(qtype, smollm2_weights):
    rng = np.random.default_rng(7)
    down = smollm2_weights["blk.3.ffn_down.weight"][:40]  # (40, 1536): values of dequantized Q4_1, many ties
    for imatrix in imatrices(qtype, rng, down.shape[1]):
        check_exact(qtype, down, imatrix)
    q = smollm2_weights["blk.5.attn_q.weight"].reshape(-1, 512)[:64]
    for imatrix in imatrices(qtype, rng, 512):
        check_exact(qtype, q, imatrix)


@pytest.mark.parametrize("qtype", TYPES)
def test_minilm_weights(qtype, minilm_weights):
    rng = np.random.default_rng(8)
    w = minilm_weights["encoder.layer.0.intermediate.dense.weight"].reshape(-1, 768)[:64]
    for imatrix in imatrices(qtype, rng, 768):
        check_exact(qtype, w, imatrix)


@pytest.mark.parametrize("qtype", sorted(NEEDS_IMATRIX))
def test_refuses_without_imatrix(qtype):
    assert ref.requires_imatrix(qtype)
    x = np.ones((2, 256), dtype=np.float32)
    with pytest.raises(ImatrixError, match="imatrix"):
        quantize(x, qtype)


@pytest.mark.parametrize("qtype", TYPES)
def test_requires_imatrix_as_llamacpp(qtype):
    assert ref.requires_imatrix(qtype) == (qtype in NEEDS_IMATRIX)


@pytest.mark.parametrize("qtype", TYPES)
def test_llamacpp_selftest_error(qtype):
    """test-quantize-fns: 0.1 + 2cos(i) round trip, rmse-like error below llama.cpp's threshold."""
    n = 32 * 128
    x = (0.1 + 2.0 * np.cos(np.arange(n, dtype=np.float32)).astype(np.float64)).astype(np.float32)
    imatrix = np.ones(n, dtype=np.float32) if qtype in NEEDS_IMATRIX else None
    q = quantize(x.reshape(1, -1), qtype, imatrix=imatrix)
    y = dequantize(q).reshape(-1).astype(np.float64)
    error = np.sqrt(np.sum((x - y) ** 2)) / n
    assert error < SELFTEST_MAX_ERROR[qtype], error


def test_grid_tables():
    """The rebuilt iq2xs_init tables: the map inverts the codebook; neighbours are nearest-first."""
    from quantkit.quants.iq2 import grid_tables

    for size, nwant in ((256, 2), (512, 2), (1024, 1), (2048, 3)):
        t = grid_tables(size)
        assert t.levels.shape == (size, 8)
        index = (t.levels.astype(np.int64) << (2 * np.arange(8))).sum(axis=1)
        np.testing.assert_array_equal(t.kmap[index], np.arange(size))
        assert (t.kmap >= 0).sum() == size
        digits = np.indices((3,) * 8).reshape(8, -1).T[:, ::-1]
        points = (digits << (2 * np.arange(8))).sum(axis=1)
        off_grid = points[t.kmap[points] < 0]
        assert len(off_grid) == 3**8 - size
        rng = np.random.default_rng(size)
        for u in rng.choice(off_grid, 20, replace=False):
            pos = 2 * ((u >> (2 * np.arange(8))) & 3) + 1
            d2 = ((2 * t.levels.astype(np.int64) + 1 - pos) ** 2).sum(axis=1)
            cut = np.unique(d2)[:nwant].max()
            expected = np.lexsort((np.arange(size), d2))
            expected = expected[d2[expected] <= cut]
            np.testing.assert_array_equal(t.neighbours(u), expected)
        assert grid_tables(size) is t  # built once


def test_ties_keep_index_order():
    """Equal values in a sub-block: the sort that splits them must be stable, as glibc's qsort is."""
    rng = np.random.default_rng(9)
    levels = np.array([-1.0, -0.5, 0.0, 0.5, 1.0], dtype=np.float32)
    x = rng.choice(levels, size=(32, 512)).astype(np.float32)
    for qtype in TYPES:
        for imatrix in imatrices(qtype, rng, 512):
            check_exact(qtype, x, imatrix)


def near_tie_rows(rng, nrows, n):
    """Rows of a few magnitudes, each nudged by a few float32 ulps: neighbour candidates whose real
    distances tie or nearly tie, so that only C's float32 rounding separates them."""
    base = rng.choice(np.array([0.3, 0.7, 1.0, 1.3, 2.0], dtype=np.float32), size=(nrows, n))
    ulps = rng.integers(-3, 4, size=(nrows, n)).astype(np.int32)
    x = (base.view(np.int32) + ulps).view(np.float32) * rng.choice(np.array([-1, 1], dtype=np.float32), (nrows, n))
    return x * np.exp2(rng.integers(-8, 9, size=(nrows, 1))).astype(np.float32)


@pytest.mark.parametrize("qtype", TYPES)
def test_near_ties(qtype):
    """Near-tied neighbour distances (the run search's margin must keep every candidate C could pick)."""
    rng = np.random.default_rng(13)
    x = near_tie_rows(rng, 48, 512)
    flat = np.ones(512, dtype=np.float32)
    stepped = np.repeat(np.array([1.0, 2.0, 0.5, 1.0], dtype=np.float32), 128)
    for imatrix in imatrices(qtype, rng, 512) + [flat, stepped]:
        check_exact(qtype, x, imatrix)


def test_iq1m_split_near_ties():
    """IQ1_M's split search settled by the largest would-be best (no ordered scan) must pick C's
    split: importances with near-zero entries make splits on either side of such a value tie to a
    float32 ulp or two, so only C's rounding separates them (the search's margins must send those
    groups to C's scan)."""
    rng = np.random.default_rng(23)
    n = 512
    x = rng.standard_normal((64, n)).astype(np.float32)
    near_zero = random_imatrix(rng, n)
    near_zero[rng.random(n) < 0.3] *= np.float32(1e-9)
    spread = np.exp2(rng.integers(-20, 1, n)).astype(np.float32)
    for imatrix in (near_zero, spread):
        check_exact("IQ1_M", x, imatrix)
    check_exact("IQ1_M", near_tie_rows(rng, 64, n), near_zero)


def test_run_search_matches_per_trial_scan():
    """_run_neighbours (one float64 pass per run of trials, float32 only for near-ties) picks, for
    every trial scale, the neighbour that C's per-trial float32 scan picks."""
    from numba import njit

    from quantkit.quants.iq2 import _best_neighbour, _run_neighbours, grid_tables

    @njit
    def compare(xs, ws, scales, kmap, nbr_list):
        ntrial = scales.shape[1]
        lv_run = np.zeros(8 * ntrial, dtype=np.int32)
        lv_one = np.zeros(8 * ntrial, dtype=np.int32)
        ab = np.zeros(5 * 1024 + 64)
        kept = np.zeros(1024, dtype=np.int64)
        t = np.zeros(24, dtype=np.float32)
        t4 = np.zeros(81, dtype=np.float32)
        checked = 0
        for g in range(xs.shape[0]):
            id_ = np.float32(1.0) / scales[g, 0]
            u = 0
            for i in range(8):
                u |= min(max(np.int32(np.rint(np.float32(0.5) * (id_ * xs[g, i] - np.float32(1.0)))), 0), 2) << (2 * i)
            if kmap[u] >= 0:
                continue
            _run_neighbours(u, kmap, nbr_list, xs[g], ws[g], 0, scales[g], 0, ntrial, lv_run, ntrial, ab, kept, t, t4)
            for s in range(ntrial):
                _best_neighbour(u, kmap, nbr_list, xs[g], ws[g], 0, scales[g, s], lv_one, 8 * s, 1, t, t4)
                for i in range(8):
                    if lv_run[i * ntrial + s] != lv_one[8 * s + i]:
                        return -1 - g
            checked += 1
        return checked

    rng = np.random.default_rng(17)
    groups = 4000
    for size in (256, 512, 1024):
        kmap, nbr_list, _ = grid_tables(size).kernel_args()
        for x in (near_tie_rows(rng, groups, 8), np.abs(rng.standard_normal((groups, 8))).astype(np.float32)):
            x[:, 0] = np.abs(x[:, 0])
            w = rng.choice(np.array([1.0, 1.0, 0.5, 2.0, 1e-3], dtype=np.float32), size=(groups, 8))
            w[: groups // 2] = 1.0  # equal weights: permuted entries tie in real arithmetic
            vmax = np.abs(x).max(axis=1, keepdims=True)
            ids = (np.float32(5.0) + np.arange(-3, 4, dtype=np.float32) * np.float32(0.1)) / vmax
            scales = (np.float32(1.0) / ids.astype(np.float32)).astype(np.float32)
            checked = compare(x, w, scales, kmap, nbr_list)
            assert checked > groups // 4, checked
