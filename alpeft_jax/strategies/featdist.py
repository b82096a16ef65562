"""Featdist (METHOD 3.7): distance to the labelled mean of the predicted class, farthest first."""

from __future__ import annotations

from collections.abc import Mapping
from functools import partial
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from alpeft_jax.strategies import spmd
from alpeft_jax.strategies.base import check_inputs, check_labels, labelled_ids, register

UNKNOWN_CLASS_DISTANCE = 1e6


@jax.jit
def _featdist(feat: jax.Array, pred: jax.Array, means: jax.Array, known: jax.Array) -> jax.Array:
    d = jnp.linalg.norm(feat - means[pred], axis=-1)
    return jnp.where(known[pred], d, UNKNOWN_CLASS_DISTANCE)


_LAB_CHUNK = 4096  # labelled rows per step of the class sums


def _class_means(
    feat: jax.Array, labels: jax.Array, lab_ids: jax.Array, n_lab: jax.Array, k: int, axis: str | None
) -> tuple[jax.Array, jax.Array]:
    """Per-class means [k,D] of the labelled rows lab_ids[:n_lab] and which classes have any.

    The labelled rows are summed in index order, `_LAB_CHUNK` at a time (taken from the shards that hold
    them), so the means are the same floats on one device and on any mesh.
    """
    size = min(_LAB_CHUNK, lab_ids.shape[0])

    def body(st: tuple) -> tuple:
        sums, counts, s = st
        start = jnp.minimum(s, lab_ids.shape[0] - size)  # shifted back: positions before s were summed already
        ids = jax.lax.dynamic_slice_in_dim(lab_ids, start, size)
        pos = start + jnp.arange(size)
        seg = jnp.where((pos >= s) & (pos < n_lab), spmd.take(labels, ids, axis), k)  # others: a dropped segment
        sums = sums + jax.ops.segment_sum(spmd.take(feat, ids, axis), seg, num_segments=k + 1)[:k]
        return sums, counts + jnp.bincount(seg, length=k + 1)[:k], s + size

    init = (jnp.zeros((k, feat.shape[-1]), jnp.float32), jnp.zeros((k,), jnp.int32), jnp.int32(0))
    sums, counts, _ = jax.lax.while_loop(lambda st: st[2] < n_lab, body, init)
    return sums / jnp.maximum(counts.astype(jnp.float32), 1.0)[:, None], counts > 0


def _local_scores(
    feat: jax.Array, logits: jax.Array, labels: jax.Array, lab_ids: jax.Array, n_lab: jax.Array, axis: str | None
) -> jax.Array:
    feat = feat.astype(jnp.float32)
    means, known = _class_means(feat, labels.astype(jnp.int32), lab_ids, n_lab, logits.shape[-1], axis)
    return _featdist(feat, jnp.argmax(logits, axis=-1), means, known)


@jax.jit
def _scores(feat: jax.Array, logits: jax.Array, labels: jax.Array, lab_ids: jax.Array, n_lab: jax.Array) -> jax.Array:
    return _local_scores(feat, logits, labels, lab_ids, n_lab, None)


def featdist_scores(feat: np.ndarray, logits: np.ndarray, labels: np.ndarray, labeled: np.ndarray) -> jax.Array:
    """Per-example distance to the labelled class mean of argmax(logits); 1e6 where no such label exists."""
    check_labels(labels, labeled, np.shape(logits)[-1], "featdist")
    lab_ids, n_lab = labelled_ids(labeled)
    return _scores(jnp.asarray(feat), jnp.asarray(logits), jnp.asarray(labels), lab_ids, n_lab)


# A sharded pool is scored on its shards, a per-row pass like entropy's (measured faster on the shards,
# uncertainty.ON_MESH); `sharded=False` gathers it to the host first.
ON_MESH = True


@partial(jax.jit, static_argnames=("budget", "mesh"))
def _select(
    feat: jax.Array,
    logits: jax.Array,
    labels: jax.Array,
    labeled: jax.Array,
    lab_ids: jax.Array,
    n_lab: jax.Array,
    budget: int,
    mesh: spmd.Mesh | None,
) -> jax.Array:
    """Farthest known-class distance first (ties: lower index), then the unknown-class examples by index."""

    def local(
        f: jax.Array,
        lg: jax.Array,
        y: jax.Array,
        lab: jax.Array,
        lab_ids: jax.Array,
        n_lab: jax.Array,
        axis: str | None,
    ) -> jax.Array:
        d = _local_scores(f, lg, y, lab_ids, n_lab, axis)
        key = jnp.where(d < UNKNOWN_CLASS_DISTANCE, d, -1.0)  # every distance is >= 0: unknown ones rank last
        return spmd.top_k(jnp.where(lab, -jnp.inf, key), budget, axis)

    rep = spmd.P()
    return spmd.spmd(local, mesh, (spmd.ROWS,) * 4 + (rep, rep), rep)(feat, logits, labels, labeled, lab_ids, n_lab)


@register("featdist", requires=("logits", "labels"), candidates=False)
def select_featdist(
    rng: object,
    pool: Mapping[str, np.ndarray],
    labeled: np.ndarray,
    budget: int,
    feature_key: str = "logits",
    sharded: bool | None = None,
    excluded: np.ndarray | None = None,
    **_: object,
) -> np.ndarray:
    """Unlabelled examples sorted by featdist distance, descending; unknown-class ones fill any shortfall.

    The authors use the K-dim (scaled) logits as the feature; `feature_key="features"` uses the embeddings.
    `excluded` (bool[N]): rows never picked that have no label either (they count in no class mean).
    """
    labeled = np.asarray(labeled)
    taken = labeled if excluded is None else labeled | np.asarray(excluded, bool)
    check_inputs(pool, taken, budget, {"logits", "labels", feature_key})
    labeled, _n = check_inputs(pool, labeled, 0, {"logits", "labels", feature_key})
    if budget == 0:
        return np.zeros((0,), np.int64)
    arrays, mesh = spmd.placed(pool, {"logits", "labels", feature_key}, sharded, ON_MESH)
    lab_ids, n_lab = labelled_ids(labeled)
    args: tuple[Any, ...]
    if mesh is None:
        check_labels(arrays["labels"], labeled, np.shape(arrays["logits"])[-1], "featdist")
        args = (np.asarray(arrays["labels"], np.int32), jnp.asarray(taken), lab_ids, n_lab)
    else:
        check_labels(arrays["labels"], spmd.put(labeled, mesh), np.shape(arrays["logits"])[-1], "featdist")
        lab = spmd.put(taken, mesh)
        args = (arrays["labels"], lab, spmd.put(lab_ids, mesh, spmd.P()), spmd.put(n_lab, mesh, spmd.P()))
    out = _select(arrays[feature_key], arrays["logits"], *args, int(budget), mesh)
    return np.asarray(out, np.int64)
