"""Metrics against NumPy / scikit-learn references, and invariance to padding and batching."""

import jax.numpy as jnp
import numpy as np
import pytest
from sklearn.metrics import accuracy_score, log_loss

from alpeft_jax import evaluate


def softmax64(z):
    z = z.astype(np.float64)
    e = np.exp(z - z.max(1, keepdims=True))
    return e / e.sum(1, keepdims=True)


def numpy_ece(probs, labels, n_bins=15):
    """Guo et al. (2017) ECE: equal-width bins (lo, hi] on the max probability."""
    conf = probs.max(1)
    acc = (probs.argmax(1) == labels).astype(np.float64)
    bounds = np.linspace(0, 1, n_bins + 1)
    ece = 0.0
    for lo, hi in zip(bounds[:-1], bounds[1:], strict=True):
        inb = (conf > lo) & (conf <= hi)
        if inb.any():
            ece += inb.mean() * abs(acc[inb].mean() - conf[inb].mean())
    return ece


def make(rng, n=300, k=10, scale=2.0):
    logits = (rng.normal(size=(n, k)) * scale).astype(np.float32)
    labels = rng.integers(0, k, size=n)
    # Make the model right more often than chance, so accuracy and ECE are not trivial.
    labels = np.where(rng.random(n) < 0.5, logits.argmax(1), labels).astype(np.int32)
    return logits, labels


@pytest.mark.parametrize("scale", [0.5, 2.0, 8.0])
def test_metrics_match_references(scale):
    logits, labels = make(np.random.default_rng(0), scale=scale)
    p = softmax64(logits)
    got = evaluate.metrics(logits, labels)
    assert got["n"] == len(labels)
    np.testing.assert_allclose(got["accuracy"], accuracy_score(labels, p.argmax(1)), rtol=1e-12)
    nll = -np.mean(np.log(p[np.arange(len(labels)), labels]))
    np.testing.assert_allclose(got["nll"], nll, rtol=1e-5)
    if p.min() > 1e-15:  # sklearn clips probabilities at machine epsilon; compare where it does not
        np.testing.assert_allclose(got["nll"], log_loss(labels, p, labels=np.arange(10)), rtol=1e-5)
    np.testing.assert_allclose(got["ece"], numpy_ece(p, labels), rtol=1e-4, atol=1e-6)
    brier = np.mean(np.sum((p - np.eye(10)[labels]) ** 2, axis=1))
    np.testing.assert_allclose(got["brier"], brier, rtol=1e-5)
    assert got["ece"] > 0.01


def test_padding_and_batching_invariance():
    rng = np.random.default_rng(1)
    logits, labels = make(rng, n=250)
    whole = evaluate.metrics(logits, labels)
    bs = 64  # fixed batch shape; the last batch is padded with junk rows
    stats = None
    for s in range(0, 250, bs):
        z = np.full((bs, 10), 1e3, np.float32)
        y = np.full(bs, -1, np.int32)  # padding label out of range on purpose
        real = min(bs, 250 - s)
        z[:real], y[:real] = logits[s : s + real], labels[s : s + real]
        mask = np.arange(bs) < real
        stats = evaluate.merge(stats, evaluate.batch_stats(jnp.asarray(z), jnp.asarray(y), jnp.asarray(mask)))
    batched = evaluate.finalize(stats)
    assert batched["n"] == 250
    for key in ("accuracy", "nll", "ece", "brier"):
        np.testing.assert_allclose(batched[key], whole[key], rtol=1e-5, atol=1e-7, err_msg=key)
    # bin counts add up to n
    assert float(np.sum(stats["bin_count"])) == 250


def test_saturated_confidence_goes_to_last_bin():
    # conf == 1.0 (saturated, CLIP-scale logits) falls in the last bin (14/15, 1]; conf 0.5 in (7/15, 8/15].
    logits = np.array([[100.0, 0.0], [0.0, 0.0]], np.float32)
    stats = evaluate.batch_stats(logits, np.array([0, 1], np.int32))
    counts = np.asarray(stats["bin_count"])
    assert counts.shape == (15,) and counts[14] == 1 and counts[7] == 1 and counts.sum() == 2
    np.testing.assert_allclose(np.asarray(stats["bin_acc"])[[7, 14]], [0.0, 1.0])  # a tie predicts class 0
    np.testing.assert_allclose(np.asarray(stats["bin_conf"])[[7, 14]], [0.5, 1.0])


def test_errors():
    with pytest.raises(ValueError, match="no real rows"):
        evaluate.finalize(evaluate.batch_stats(np.zeros((2, 3), np.float32), np.zeros(2, np.int32), np.zeros(2, bool)))
    with pytest.raises(ValueError, match="labels"):
        evaluate.metrics(np.zeros((2, 3), np.float32), np.zeros(3, np.int32))
