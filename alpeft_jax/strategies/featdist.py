"""Featdist (METHOD 3.7): distance to the labelled mean of the predicted class, farthest first."""

from __future__ import annotations

from collections.abc import Mapping

import jax
import jax.numpy as jnp
import numpy as np

from alpeft_jax.strategies.base import check_inputs, register

UNKNOWN_CLASS_DISTANCE = 1e6


@jax.jit
def _featdist(feat: jax.Array, pred: jax.Array, means: jax.Array, known: jax.Array) -> jax.Array:
    d = jnp.linalg.norm(feat - means[pred], axis=-1)
    return jnp.where(known[pred], d, UNKNOWN_CLASS_DISTANCE)


def featdist_scores(feat: np.ndarray, logits: np.ndarray, labels: np.ndarray,
                    labeled: np.ndarray) -> jax.Array:
    """Per-example distance to the labelled class mean of argmax(logits); 1e6 where no such label exists."""
    k = np.shape(logits)[-1]
    lab = np.flatnonzero(labeled)
    y = np.asarray(labels)[lab]
    if np.any((y < 0) | (y >= k)):
        raise ValueError(f"labelled examples need labels in [0, {k}); fill pool['labels'] for them")
    feat = jnp.asarray(feat, jnp.float32)
    sums = jax.ops.segment_sum(feat[lab], jnp.asarray(y), num_segments=k)
    counts = np.bincount(y, minlength=k)
    means = sums / jnp.maximum(jnp.asarray(counts, jnp.float32), 1.0)[:, None]
    pred = jnp.argmax(jnp.asarray(logits), axis=-1)
    return _featdist(feat, pred, means, jnp.asarray(counts > 0))


@register("featdist", requires=("logits", "labels"))
def select_featdist(rng: object, pool: Mapping[str, np.ndarray], labeled: np.ndarray, budget: int,
                    feature_key: str = "logits", **_: object) -> np.ndarray:
    """Unlabelled examples sorted by featdist distance, descending; unknown-class ones fill any shortfall.

    The authors use the K-dim (scaled) logits as the feature; `feature_key="features"` uses the embeddings.
    """
    labeled, _n = check_inputs(pool, labeled, budget, {"logits", "labels", feature_key})
    d = np.asarray(featdist_scores(pool[feature_key], pool["logits"], pool["labels"], labeled))
    unl = np.flatnonzero(~labeled)
    du = d[unl]
    known = du < UNKNOWN_CLASS_DISTANCE
    known_idx = unl[known][np.argsort(-du[known], kind="stable")]
    out = np.concatenate([known_idx, unl[~known]])
    return out[:budget].astype(np.int64)
