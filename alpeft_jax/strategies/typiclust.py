"""TypiClust (Hacohen et al. 2022): the most typical point of the largest uncovered k-means clusters."""

from __future__ import annotations

from collections.abc import Mapping

import jax
import numpy as np

from alpeft_jax.strategies.base import as_key, check_inputs, l2_normalize, register
from alpeft_jax.strategies.distances import DEFAULT_BLOCK, knn_sq_dist
from alpeft_jax.strategies.kmeans import kmeans


def typicality(x: jax.Array, k: int, block: int = DEFAULT_BLOCK, k_max: int | None = None) -> np.ndarray:
    """1 / (mean squared distance to the k nearest other points + 1e-5), as the reference code (faiss L2)."""
    return 1.0 / (np.asarray(knn_sq_dist(x, k, block, k_max), np.float64).mean(axis=1) + 1e-5)


def cluster_order(labels: np.ndarray, labeled: np.ndarray, n_clusters: int,
                  min_cluster_size: int) -> np.ndarray:
    """Clusters larger than min_cluster_size, fewest labelled members first, then largest, then lowest id."""
    sizes = np.bincount(labels, minlength=n_clusters)
    existing = np.bincount(labels[labeled], minlength=n_clusters)
    ids = np.flatnonzero(sizes > min_cluster_size)
    return ids[np.lexsort((ids, -sizes[ids], existing[ids]))]


@register("typiclust", requires=("features",))
def select_typiclust(rng: object, pool: Mapping[str, np.ndarray], labeled: np.ndarray, budget: int,
                     k_nn: int = 20, max_clusters: int | None = 500, min_cluster_size: int = 5,
                     kmeans_iters: int = 20, normalize: bool = True, block: int = DEFAULT_BLOCK,
                     **_: object) -> np.ndarray:
    """Round-robin over clusters (by `cluster_order`), each time the unlabelled member of max typicality.

    n_clusters = |labeled| + budget, capped at `max_clusters` (500 in the reference code; None = no cap).
    Typicality is recomputed within the cluster's remaining unlabelled, unselected members with
    k = min(k_nn, size // 2). If no listed cluster has members left, a uniformly random unlabelled point.
    """
    labeled, n = check_inputs(pool, labeled, budget, {"features"})
    if budget == 0:
        return np.zeros((0,), np.int64)
    x = l2_normalize(pool["features"]) if normalize else jax.numpy.asarray(pool["features"], "float32")
    n_clusters = int(labeled.sum()) + budget
    if max_clusters is not None:
        n_clusters = min(n_clusters, max_clusters)
    n_clusters = min(n_clusters, n)
    k_km, k_rand = jax.random.split(as_key(rng))
    _, labels = kmeans(k_km, x, n_clusters, kmeans_iters, block)
    order = cluster_order(labels, labeled, n_clusters, min_cluster_size)
    members = labels.copy()
    members[labeled] = -1
    gen = np.random.default_rng(np.asarray(jax.random.randint(k_rand, (2,), 0, 2**31 - 1), np.uint64))
    picks: list[int] = []
    for i in range(budget):
        idx = None
        for step in range(order.size):
            c = order[(i + step) % order.size]
            m = np.flatnonzero(members == c)
            if m.size:
                break
        else:
            m = np.zeros(0, np.int64)
        if m.size == 1:
            idx = int(m[0])
        elif m.size > 1:
            idx = int(m[np.argmax(typicality(x[m], min(k_nn, m.size // 2), block, k_max=k_nn))])
        else:
            free = np.flatnonzero(~labeled & (members != -2))
            idx = int(free[gen.integers(free.size)])
        picks.append(idx)
        members[idx] = -2
    return np.asarray(picks, np.int64)
