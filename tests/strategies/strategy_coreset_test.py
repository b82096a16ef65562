"""Coreset's greedy sequence against scikit-activeml's CoreSet (k-centre greedy) from the same labelled set."""

import numpy as np
import pytest
from skactiveml.pool import CoreSet

from alpeft_jax import strategies


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
