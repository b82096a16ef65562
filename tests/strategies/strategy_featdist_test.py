"""Featdist against a direct NumPy transcription of METHOD 3.7."""

import numpy as np

from alpeft_jax import strategies


def numpy_featdist(feat, logits, labels, labeled, budget):
    pred = logits.argmax(1)
    unl = np.flatnonzero(~labeled)
    d = {}
    for i in unl:
        same = labeled & (labels == pred[i])
        d[i] = np.linalg.norm(feat[i] - feat[same].mean(0)) if same.any() else 1e6
    known = [i for i in unl if d[i] != 1e6]
    known.sort(key=lambda i: -d[i])
    return np.asarray((known + [i for i in unl if d[i] == 1e6])[:budget])


def test_matches_transcription_and_fills_with_unknown_classes():
    g = np.random.default_rng(0)
    n, k = 200, 6
    logits = (g.normal(size=(n, k)) * 2).astype(np.float32)
    labels = np.full(n, -1)
    labeled = np.zeros(n, bool)
    lab = g.choice(n, 12, replace=False)
    labeled[lab] = True
    labels[lab] = g.integers(0, 3, 12)  # classes 3..5 never labelled -> distance 1e6
    pool = {"logits": logits, "labels": labels}
    n_known = int(np.isin(logits.argmax(1)[~labeled], labels[lab]).sum())
    for budget in (10, n_known + 5):
        got = strategies.get("featdist")(0, pool, labeled, budget)
        np.testing.assert_array_equal(got, numpy_featdist(logits.astype(np.float64), logits, labels, labeled, budget))
    feats = g.normal(size=(n, 9)).astype(np.float32)
    got = strategies.get("featdist")(0, {**pool, "features": feats}, labeled, 15, feature_key="features")
    np.testing.assert_array_equal(got, numpy_featdist(feats.astype(np.float64), logits, labels, labeled, 15))
