"""Classification metrics per round: accuracy, NLL, ECE and Brier score.

Metrics are built from per-batch sufficient statistics so evaluation runs over fixed-shape padded batches
(``mask`` marks the real rows) under one compiled function: ``batch_stats`` per batch (jit-able),
``merge`` to accumulate, ``finalize`` to turn the sums into metrics.

ECE uses ``num_bins`` equal-width bins on the max-probability confidence, each bin (lo, hi] as in
Guo et al. (2017): ECE = sum_b |acc_b - conf_b| * n_b / n. (torchmetrics bins [lo, hi) and keeps
confidence exactly 1.0 in a separate bin, so the two differ only for confidences on a bin edge.)
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

NUM_BINS = 15


def batch_stats(
    logits: jax.Array, labels: jax.Array, mask: jax.Array | None = None, num_bins: int = NUM_BINS
) -> dict[str, jax.Array]:
    """Sums over the real rows of one batch: n, correct, nll, brier and per-bin count/conf/acc (float32)."""
    logits = jnp.asarray(logits)
    labels = jnp.asarray(labels)
    if logits.ndim != 2 or labels.shape != logits.shape[:1]:
        raise ValueError(f"expected logits [batch, classes] and labels [batch], got {logits.shape} and {labels.shape}")
    m = jnp.ones(logits.shape[:1], jnp.float32) if mask is None else jnp.asarray(mask).astype(jnp.float32)
    if m.shape != logits.shape[:1]:
        raise ValueError(f"mask must be [batch]={logits.shape[:1]}, got shape {m.shape}")
    z = jnp.where(m[:, None] > 0, logits.astype(jnp.float32), 0.0)
    logp = jax.nn.log_softmax(z, axis=-1)
    p = jnp.exp(logp)
    onehot = jax.nn.one_hot(labels, z.shape[-1], dtype=jnp.float32)
    nll = -jnp.sum(onehot * logp, axis=-1)
    brier = jnp.sum((p - onehot) ** 2, axis=-1)
    conf = jnp.max(p, axis=-1)
    correct = (jnp.argmax(z, axis=-1) == labels).astype(jnp.float32)
    # Bin b holds confidences in (b/num_bins, (b+1)/num_bins]; confidence > 0 always (it is >= 1/K).
    edges = jnp.linspace(0.0, 1.0, num_bins + 1, dtype=jnp.float32)[1:-1]
    idx = jnp.sum(conf[:, None] > edges[None, :], axis=-1)
    in_bin = jax.nn.one_hot(idx, num_bins, dtype=jnp.float32) * m[:, None]
    return {
        "n": jnp.sum(m),
        "correct": jnp.sum(m * correct),
        "nll": jnp.sum(m * nll),
        "brier": jnp.sum(m * brier),
        "bin_count": jnp.sum(in_bin, axis=0),
        "bin_conf": jnp.sum(in_bin * conf[:, None], axis=0),
        "bin_acc": jnp.sum(in_bin * correct[:, None], axis=0),
    }


def merge(a: dict[str, jax.Array] | None, b: dict[str, jax.Array]) -> dict[str, jax.Array]:
    """Sum two sets of batch statistics (``a=None`` starts the accumulation)."""
    if a is None:
        return b
    return jax.tree_util.tree_map(lambda x, y: x + y, a, b)


def finalize(stats: dict[str, jax.Array]) -> dict[str, float]:
    """Turn accumulated statistics into accuracy, nll, ece, brier (means over the real rows) and n."""
    s = {k: np.asarray(v, np.float64) for k, v in stats.items()}
    n = float(s["n"])
    if n <= 0:
        raise ValueError("no real rows in the statistics: every mask entry was false")
    ece = float(np.sum(np.abs(s["bin_acc"] - s["bin_conf"])) / n)
    return {
        "accuracy": float(s["correct"]) / n,
        "nll": float(s["nll"]) / n,
        "ece": ece,
        "brier": float(s["brier"]) / n,
        "n": int(round(n)),
    }


_batch_stats_jit = jax.jit(batch_stats, static_argnames=("num_bins",))


def metrics(
    logits: jax.Array, labels: jax.Array, mask: jax.Array | None = None, num_bins: int = NUM_BINS
) -> dict[str, float]:
    """Accuracy, NLL, ECE, Brier and n of whole arrays of logits and labels."""
    return finalize(_batch_stats_jit(logits, labels, mask, num_bins=num_bins))
