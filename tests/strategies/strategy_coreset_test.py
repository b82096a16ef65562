"""Coreset's greedy sequence against scikit-activeml's CoreSet (k-centre greedy) from the same labelled set."""

import numpy as np
import pytest
from skactiveml.pool import CoreSet

from alpeft_jax import strategies
from alpeft_jax.strategies import coreset


@pytest.mark.parametrize("seed, n_lab", [(0, 1), (1, 25)])
def test_same_greedy_sequence_as_skactiveml(seed, n_lab):
    g = np.random.default_rng(seed)
    n, d, budget = 400, 12, 30
    feats = (g.normal(size=(n, d)) * g.uniform(0.5, 3, size=(n, 1))).astype(np.float32)
    labeled = np.zeros(n, bool)
    labeled[g.choice(n, n_lab, replace=False)] = True
    y = np.where(labeled, 0, -1)
    xn = feats.astype(np.float64) / np.linalg.norm(feats.astype(np.float64), axis=1, keepdims=True)
    ref = CoreSet(missing_label=-1, random_state=0).query(xn, y, batch_size=budget)
    got = strategies.get("coreset")(0, {"features": feats}, labeled, budget)
    np.testing.assert_array_equal(got, ref)


def test_blocked_init_matches_unblocked():
    g = np.random.default_rng(3)
    feats = g.normal(size=(300, 8)).astype(np.float32)
    labeled = np.zeros(300, bool)
    labeled[g.choice(300, 40, replace=False)] = True
    a = strategies.get("coreset")(0, {"features": feats}, labeled, 20, block=7)
    b = strategies.get("coreset")(0, {"features": feats}, labeled, 20)
    np.testing.assert_array_equal(a, b)


def test_no_labelled_starts_from_a_random_point_then_goes_farthest():
    g = np.random.default_rng(4)
    feats = g.normal(size=(100, 5)).astype(np.float32)
    out = strategies.get("coreset")(7, {"features": feats}, np.zeros(100, bool), 5)
    xn = feats / np.linalg.norm(feats, axis=1, keepdims=True)
    d = np.linalg.norm(xn - xn[out[0]], axis=1)
    assert out[1] == int(np.argmax(d))


def test_no_labelled_first_pick_is_uniform_over_seeds_and_fixed_by_the_seed():
    # a deterministic first centre (the largest norm, index 0, ...) fails the chi-square below
    from scipy.stats import chisquare

    feats = np.random.default_rng(5).normal(size=(10, 4)).astype(np.float32)
    select = lambda s: strategies.get("coreset")(s, {"features": feats}, np.zeros(10, bool), 3)
    runs = [select(s) for s in range(200)]
    first = np.array([r[0] for r in runs])
    assert chisquare(np.bincount(first, minlength=10)).pvalue > 1e-3  # 20 expected per point
    np.testing.assert_array_equal(select(17), runs[17])  # the same seed, the same picks
    xn = feats.astype(np.float64) / np.linalg.norm(feats.astype(np.float64), axis=1, keepdims=True)
    for r in runs[:20]:  # after a random first centre, farthest-first from it
        np.testing.assert_array_equal(r[1:], _eager_k_center(xn, np.eye(10, dtype=bool)[r[0]], 2))


def _eager_k_center(xn: np.ndarray, labeled: np.ndarray, budget: int) -> np.ndarray:
    """Textbook farthest-first greedy in float64: one full distance pass per pick."""
    md = np.min(((xn[:, None, :] - xn[labeled][None]) ** 2).sum(-1), axis=1)
    md[labeled] = -np.inf
    out = []
    for _ in range(budget):
        j = int(np.argmax(md))
        out.append(j)
        md = np.minimum(md, ((xn - xn[j]) ** 2).sum(-1))
        md[j] = -np.inf
    return np.asarray(out)


@pytest.mark.parametrize("d", [2, 64])  # 2-D: refreshed rows are often beaten, so the full pass runs too
@pytest.mark.parametrize("top, chunk, tries", [(64, 16, 4), (3, 5, 1), (1, 1, 2), (5000, 16, 4)])
def test_lazy_greedy_equals_eager_greedy(d, top, chunk, tries):
    g = np.random.default_rng(d)
    n, budget = 1500, 60
    feats = (g.normal(size=(n, d)) + 3.0 * g.normal(size=(8, d))[g.integers(0, 8, n)]).astype(np.float32)
    labeled = np.zeros(n, bool)
    labeled[g.choice(n, 10, replace=False)] = True
    xn = feats.astype(np.float64) / np.linalg.norm(feats.astype(np.float64), axis=1, keepdims=True)
    ref = _eager_k_center(xn, labeled, budget)
    x = coreset.device_features(feats)
    r, sqn = coreset.unit_norm_factors(x)
    md = coreset.min_sq_dist_to_rows(x, r, sqn, np.flatnonzero(labeled).astype(np.int32), 512)
    md = np.where(labeled, -np.inf, np.asarray(md)).astype(np.float32)
    got = coreset.k_center_greedy(x, r, sqn, md, budget, top=top, chunk=chunk, block=256, tries=tries)
    np.testing.assert_array_equal(np.asarray(got), ref)
