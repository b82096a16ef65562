"""BADGE seeding against NumPy k-means++ on materialised gradient embeddings with the same uniforms."""

import jax
import numpy as np
import pytest

from alpeft_jax import strategies


def numpy_badge(feats, logits, labeled, budget, u):
    f = feats.astype(np.float64)
    f /= np.linalg.norm(f, axis=1, keepdims=True)
    p = np.exp(logits - logits.max(1, keepdims=True))
    p /= p.sum(1, keepdims=True)
    a = np.eye(p.shape[1])[p.argmax(1)] - p
    g = (a[:, :, None] * f[:, None, :]).reshape(len(f), -1)  # [N, K*D]
    unl = np.flatnonzero(~labeled)
    gu = g[unl]
    picks = [int(np.argmax((gu**2).sum(1)))]
    d2 = ((gu - gu[picks[0]]) ** 2).sum(1)
    for i in range(1, budget):
        d2[picks] = 0.0
        cdf = np.cumsum(d2)
        j = int(np.searchsorted(cdf, u[i] * cdf[-1], side="right"))
        picks.append(j)
        d2 = np.minimum(d2, ((gu - gu[j]) ** 2).sum(1))
    return unl[picks]


# (seed, n, d, k, budget, labelled, key): small pools, and n above the 2048-entry block of the two-level inverse CDF
@pytest.mark.parametrize(
    "seed, n, d, k, budget, n_lab, key_seed",
    [(0, 150, 10, 6, 25, 20, 10), (1, 150, 10, 6, 25, 20, 11), (7, 5000, 8, 4, 15, 30, 3)],
)
def test_same_picks_as_numpy_on_materialised_embeddings(seed, n, d, k, budget, n_lab, key_seed):
    g = np.random.default_rng(seed)
    feats = g.normal(size=(n, d)).astype(np.float32)
    logits = (g.normal(size=(n, k)) * 2).astype(np.float32)
    labeled = np.zeros(n, bool)
    labeled[g.choice(n, n_lab, replace=False)] = True
    key = jax.random.key(key_seed)
    u = np.asarray(jax.random.uniform(key, (budget,)), np.float64)
    ref = numpy_badge(feats, logits.astype(np.float64), labeled, budget, u)
    got = strategies.get("badge")(key, {"features": feats, "logits": logits}, labeled, budget)
    np.testing.assert_array_equal(got, ref)


def test_sampling_follows_d2():
    # Two far-apart groups: after the first centre, the second pick must come from the other group.
    g = np.random.default_rng(5)
    feats = np.concatenate([np.tile([1.0, 0], (50, 1)), np.tile([0, 1.0], (50, 1))]) + 1e-3 * g.normal(size=(100, 2))
    logits = np.tile([[3.0, 0.0]], (100, 1)).astype(np.float32)
    for s in range(5):
        out = strategies.get("badge")(
            s, {"features": feats.astype(np.float32), "logits": logits}, np.zeros(100, bool), 2
        )
        assert (out[0] < 50) != (out[1] < 50)


def test_blocked_inverse_cdf_matches_numpy_searchsorted():
    from alpeft_jax.strategies.distances import inverse_cdf_blocked

    g = np.random.default_rng(8)
    w = g.random(10_000).astype(np.float32) * (g.random(10_000) < 0.3)
    w[:3000] = 0.0  # leading zero blocks
    cdf = np.cumsum(w.astype(np.float64))
    for uu in g.random(50):
        ref = int(np.searchsorted(cdf, uu * cdf[-1], side="right"))
        got = int(inverse_cdf_blocked(jax.numpy.asarray(w), jax.numpy.float32(uu), block=512))
        assert got == ref and w[got] > 0
