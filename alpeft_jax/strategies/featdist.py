"""Featdist (METHOD 3.7): distance to the labelled mean of the predicted class, farthest first."""

from __future__ import annotations

from collections.abc import Mapping
from functools import partial

import jax
import jax.numpy as jnp
import numpy as np

from alpeft_jax.strategies import spmd
from alpeft_jax.strategies.base import check_inputs, check_labels, register

UNKNOWN_CLASS_DISTANCE = 1e6


@jax.jit
def _featdist(feat: jax.Array, pred: jax.Array, means: jax.Array, known: jax.Array) -> jax.Array:
    d = jnp.linalg.norm(feat - means[pred], axis=-1)
    return jnp.where(known[pred], d, UNKNOWN_CLASS_DISTANCE)


def _class_means(feat: jax.Array, labels: jax.Array, labeled: jax.Array, k: int,
                 axis: str | None) -> tuple[jax.Array, jax.Array]:
    """Per-class means of the labelled rows' features [k,D] (over all shards) and which classes have any."""
    seg = jnp.where(labeled, labels, k)  # unlabelled rows go to a dropped extra segment
    sums = spmd.gsum(jax.ops.segment_sum(feat, seg, num_segments=k + 1)[:k], axis)
    counts = spmd.gsum(jax.ops.segment_sum(jnp.ones_like(seg), seg, num_segments=k + 1)[:k], axis)
    return sums / jnp.maximum(counts.astype(jnp.float32), 1.0)[:, None], counts > 0


def _local_scores(feat: jax.Array, logits: jax.Array, labels: jax.Array, labeled: jax.Array,
                  axis: str | None) -> jax.Array:
    feat = feat.astype(jnp.float32)
    means, known = _class_means(feat, labels.astype(jnp.int32), labeled, logits.shape[-1], axis)
    return _featdist(feat, jnp.argmax(logits, axis=-1), means, known)


@jax.jit
def _scores(feat: jax.Array, logits: jax.Array, labels: jax.Array, labeled: jax.Array) -> jax.Array:
    return _local_scores(feat, logits, labels, labeled, None)


def featdist_scores(feat: np.ndarray, logits: np.ndarray, labels: np.ndarray,
                    labeled: np.ndarray) -> jax.Array:
    """Per-example distance to the labelled class mean of argmax(logits); 1e6 where no such label exists."""
    check_labels(labels, labeled, np.shape(logits)[-1], "featdist")
    return _scores(jnp.asarray(feat), jnp.asarray(logits), jnp.asarray(labels), jnp.asarray(labeled))


# Pools sharded over a mesh are scored on their shards; `sharded=False` gathers them to the host first.
ON_MESH = True


@partial(jax.jit, static_argnames=("budget", "mesh"))
def _select(feat: jax.Array, logits: jax.Array, labels: jax.Array, labeled: jax.Array, budget: int,
            mesh: spmd.Mesh | None) -> jax.Array:
    """Farthest known-class distance first (ties: lower index), then the unknown-class examples by index."""

    def local(f: jax.Array, lg: jax.Array, y: jax.Array, lab: jax.Array, axis: str | None) -> jax.Array:
        d = _local_scores(f, lg, y, lab, axis)
        key = jnp.where(d < UNKNOWN_CLASS_DISTANCE, d, -1.0)  # every distance is >= 0: unknown ones rank last
        return spmd.top_k(jnp.where(lab, -jnp.inf, key), budget, axis)

    return spmd.spmd(local, mesh, (spmd.ROWS,) * 4, spmd.P())(feat, logits, labels, labeled)


@register("featdist", requires=("logits", "labels"))
def select_featdist(rng: object, pool: Mapping[str, np.ndarray], labeled: np.ndarray, budget: int,
                    feature_key: str = "logits", sharded: bool | None = None, **_: object) -> np.ndarray:
    """Unlabelled examples sorted by featdist distance, descending; unknown-class ones fill any shortfall.

    The authors use the K-dim (scaled) logits as the feature; `feature_key="features"` uses the embeddings.
    """
    labeled, _n = check_inputs(pool, labeled, budget, {"logits", "labels", feature_key})
    if budget == 0:
        return np.zeros((0,), np.int64)
    arrays, mesh = spmd.placed(pool, {"logits", "labels", feature_key}, sharded, ON_MESH)
    lab = jnp.asarray(labeled) if mesh is None else spmd.put(labeled, mesh)
    check_labels(arrays["labels"], lab if mesh is not None else labeled, np.shape(arrays["logits"])[-1], "featdist")
    labels = arrays["labels"] if mesh is not None else np.asarray(arrays["labels"], np.int32)
    out = _select(arrays[feature_key], arrays["logits"], labels, lab, int(budget), mesh)
    return np.asarray(out, np.int64)
