import jax
import numpy as np
import pytest


def make_pool(n=300, d=16, k=5, t=4, seed=0, n_labeled=20):
    """A small synthetic pool with every key any strategy reads."""
    g = np.random.default_rng(seed)
    centers = g.normal(size=(k, d)) * 3
    y = g.integers(0, k, n)
    feats = (centers[y] + g.normal(size=(n, d))).astype(np.float32)
    logits = (g.normal(size=(n, k)) * 2).astype(np.float32)
    labels = np.full(n, -1, np.int64)
    labeled = np.zeros(n, bool)
    lab = g.choice(n, n_labeled, replace=False)
    labeled[lab] = True
    labels[lab] = y[lab]
    pool = {
        "logits": logits,
        "features": feats,
        "labels": labels,
        "mc_logits": (logits[None] + g.normal(size=(t, n, k))).astype(np.float32),
        "loss_pred": g.normal(size=n).astype(np.float32),
    }
    return pool, labeled, y


@pytest.fixture(name="make_pool")
def make_pool_fixture():
    """The `make_pool(n, d, k, t, seed, n_labeled)` factory."""
    return make_pool


class CompileCounter:
    """Counts XLA backend compilations while active (jax.monitoring's compile-duration event)."""

    EVENT = "/jax/core/compile/backend_compile_duration"

    def __init__(self):
        self.count = 0

    def _listen(self, event, duration, **kwargs):
        if event == self.EVENT:
            self.count += 1

    def __enter__(self):
        jax.monitoring.register_event_duration_secs_listener(self._listen)
        return self

    def __exit__(self, *exc):
        jax.monitoring.unregister_event_duration_listener(self._listen)


def al_rounds(select, pool, labeled, y, budget, rounds):
    """Run `rounds` selections, labelling each round's picks (labels from y); the picks and compile counts."""
    pool = dict(pool, labels=pool["labels"].copy())
    labeled = labeled.copy()
    picks, compiles = [], []
    for r in range(rounds):
        with CompileCounter() as cc:
            out = np.asarray(select(r, pool, labeled))
        assert out.shape == (budget,) and not labeled[out].any()
        picks.append(out)
        compiles.append(cc.count)
        labeled[out] = True
        pool["labels"][out] = y[out]
    return picks, compiles
