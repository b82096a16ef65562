"""Uncertainty strategies against scikit-activeml's UncertaintySampling and NumPy formulas."""

import numpy as np
import pytest
from skactiveml.base import SkactivemlClassifier
from skactiveml.pool import UncertaintySampling

from alpeft_jax import strategies


class FixedProba(SkactivemlClassifier):
    """A classifier whose predict_proba returns given probabilities; X holds the row index."""

    def __init__(self, probas=None, classes=None, missing_label=-1):
        super().__init__(classes=classes, missing_label=missing_label)
        self.probas = probas

    def fit(self, X, y, sample_weight=None):
        self._validate_data(X, y)
        return self

    def predict_proba(self, X):
        return self.probas[np.asarray(X)[:, 0].astype(int)]


@pytest.mark.parametrize(
    "ours, theirs, opts",
    [
        ("entropy", "entropy", {"eps": 0.0}),
        ("margin", "margin_sampling", {}),
        ("least_confidence", "least_confident", {}),
    ],
)
@pytest.mark.parametrize("k", [3, 10])
def test_same_ordered_topk_as_skactiveml(ours, theirs, opts, k):
    g = np.random.default_rng(k)
    n, budget = 400, 25
    logits = (g.normal(size=(n, k)) * 2).astype(np.float32)
    p = np.exp(logits - logits.max(1, keepdims=True))
    p = (p / p.sum(1, keepdims=True)).astype(np.float64)
    labeled = np.zeros(n, bool)
    labeled[g.choice(n, 30, replace=False)] = True
    y = np.where(labeled, g.integers(0, k, n), -1)
    X = np.arange(n, dtype=float)[:, None]
    clf = FixedProba(p, classes=np.arange(k)).fit(X, y)
    ref = UncertaintySampling(method=theirs, missing_label=-1, random_state=0).query(
        X, y, clf, fit_clf=False, batch_size=budget
    )
    got = strategies.get(ours)(0, {"logits": logits}, labeled, budget, **opts)
    np.testing.assert_array_equal(got, ref)


def test_entropy_default_eps_matches_method_formula():
    g = np.random.default_rng(1)
    logits = (g.normal(size=(500, 7)) * 3).astype(np.float32)
    p = np.exp(logits.astype(np.float64))
    p /= p.sum(1, keepdims=True)
    u = -(p * np.log(p + 1e-6)).sum(1)
    labeled = np.zeros(500, bool)
    labeled[:50] = True
    ref = np.flatnonzero(~labeled)[np.argsort(-u[~labeled], kind="stable")][:40]
    got = strategies.get("entropy")(0, {"logits": logits}, labeled, 40)
    np.testing.assert_array_equal(got, ref)


def test_bald_matches_numpy_mutual_information():
    g = np.random.default_rng(2)
    t, n, k = 6, 300, 5
    mc = (g.normal(size=(t, n, k)) * 2).astype(np.float32)
    p = np.exp(mc.astype(np.float64))
    p /= p.sum(-1, keepdims=True)
    pm = p.mean(0)
    mi = -(pm * np.log(pm)).sum(-1) + (p * np.log(p)).sum(-1).mean(0)
    labeled = np.zeros(n, bool)
    labeled[::7] = True
    ref = np.flatnonzero(~labeled)[np.argsort(-mi[~labeled])][:30]
    got = strategies.get("bald")(0, {"mc_logits": mc}, labeled, 30)
    np.testing.assert_array_equal(got, ref)
    # identical passes carry no information about the weights
    same = np.repeat(mc[:1], t, axis=0)
    scores = np.asarray(strategies.uncertainty.bald_scores(same))
    np.testing.assert_allclose(scores, 0.0, atol=1e-5)
