"""ProbCover (Yehuda et al. 2022): greedy maximum coverage of delta-balls over the pool.

The delta-ball graph is built block by block (sparse CSR, no N x N matrix); the greedy keeps, for each point,
the number of still-uncovered points in its ball and lowers it as points get covered.
"""

from __future__ import annotations

from collections.abc import Mapping

import jax
import numpy as np

from alpeft_jax.strategies.base import as_key, check_inputs, l2_normalize, register
from alpeft_jax.strategies.distances import DEFAULT_BLOCK, nearest_other_label_sq_dist, radius_graph
from alpeft_jax.strategies.kmeans import kmeans


def purity_delta(rng: jax.Array, x: jax.Array, n_classes: int, alpha: float = 0.95, kmeans_iters: int = 20,
                 block: int = DEFAULT_BLOCK) -> float:
    """Largest delta whose balls are pure (one k-means cluster, k = n_classes) for at least alpha of points.

    A ball B(x, delta) is pure iff the nearest point of another cluster is at distance >= delta, so the
    purity curve is read off one blocked nearest-other-cluster pass instead of a grid of deltas.
    """
    if not 0.0 < alpha <= 1.0:
        raise ValueError(f"alpha must be in (0, 1], got {alpha}")
    _, labels = kmeans(rng, x, n_classes, kmeans_iters, block)
    nn_other = np.sort(np.sqrt(np.asarray(nearest_other_label_sq_dist(x, labels, block), np.float64)))
    n = nn_other.shape[0]
    need = int(np.ceil(alpha * n))
    delta = float(nn_other[n - need])
    if not np.isfinite(delta):
        raise ValueError("k-means found a single cluster; pass delta explicitly or a larger n_classes")
    return delta


def transpose_csr(indptr: np.ndarray, indices: np.ndarray, n: int) -> tuple[np.ndarray, np.ndarray]:
    """CSR of the transposed adjacency."""
    rows = np.repeat(np.arange(n, dtype=np.int64), np.diff(indptr))
    order = np.argsort(indices, kind="stable")
    t_indptr = np.zeros(n + 1, np.int64)
    np.cumsum(np.bincount(indices, minlength=n), out=t_indptr[1:])
    return t_indptr, rows[order]


def _gather(indptr: np.ndarray, indices: np.ndarray, rows: np.ndarray) -> np.ndarray:
    starts, ends = indptr[rows], indptr[rows + 1]
    lens = ends - starts
    if lens.sum() == 0:
        return np.zeros(0, np.int64)
    offs = np.repeat(starts - np.cumsum(lens) + lens, lens) + np.arange(lens.sum())
    return indices[offs]


def max_coverage(indptr: np.ndarray, indices: np.ndarray, labeled: np.ndarray, budget: int,
                 gen: np.random.Generator) -> np.ndarray:
    """Greedy picks maximising newly covered points; random unlabelled picks once nothing is left to cover."""
    n = labeled.shape[0]
    t_indptr, t_indices = transpose_csr(indptr, indices, n)
    covered = np.zeros(n, bool)
    covered[_gather(indptr, indices, np.flatnonzero(labeled))] = True
    deg = np.add.reduceat((~covered)[indices].astype(np.int64), indptr[:-1]) if indices.size else np.zeros(n)
    deg = np.where(np.diff(indptr) > 0, deg, 0)
    chosen = labeled.copy()
    picks = []
    for _ in range(budget):
        cand = np.where(chosen, -1, deg)
        j = int(np.argmax(cand))
        if cand[j] <= 0:
            free = np.flatnonzero(~chosen)
            j = int(free[gen.integers(free.size)])
        new = indices[indptr[j]:indptr[j + 1]]
        new = new[~covered[new]]
        covered[new] = True
        if new.size:
            deg -= np.bincount(_gather(t_indptr, t_indices, new), minlength=n)
        chosen[j] = True
        picks.append(j)
    return np.asarray(picks, np.int64)


@register("probcover", requires=("features", "logits"))
def select_probcover(rng: object, pool: Mapping[str, np.ndarray], labeled: np.ndarray, budget: int,
                     delta: float | None = None, alpha: float = 0.95, n_classes: int | None = None,
                     kmeans_iters: int = 20, block: int = DEFAULT_BLOCK, **_: object) -> np.ndarray:
    """ProbCover picks on L2-normalised features, in greedy order.

    delta defaults to `purity_delta` with n_classes from pool["logits"] (or the `n_classes` option).
    """
    needs = {"features"} if (delta is not None or n_classes is not None) else {"features", "logits"}
    labeled, _n = check_inputs(pool, labeled, budget, needs)
    if budget == 0:
        return np.zeros((0,), np.int64)
    key_km, key_rand = jax.random.split(as_key(rng))
    x = l2_normalize(pool["features"])
    if delta is None:
        if n_classes is None:
            n_classes = int(np.shape(pool["logits"])[-1])
        delta = purity_delta(key_km, x, n_classes, alpha, kmeans_iters, block)
    if delta <= 0:
        raise ValueError(f"delta must be positive, got {delta}")
    indptr, indices = radius_graph(x, delta, block)
    gen = np.random.default_rng(np.asarray(jax.random.randint(key_rand, (2,), 0, 2**31 - 1), np.uint64))
    return max_coverage(indptr, indices, labeled, budget, gen)


__all__ = ["purity_delta", "max_coverage", "select_probcover"]
