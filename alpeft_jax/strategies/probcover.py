"""ProbCover (Yehuda et al. 2022): greedy maximum coverage of delta-balls over the pool.

No delta-ball graph is stored: one blocked device pass counts each point's uncovered ball members, and the
greedy (on device) lowers those counts by the newly covered points after each pick.
"""

from __future__ import annotations

from collections.abc import Mapping
from functools import partial

import jax
import jax.numpy as jnp
import numpy as np

from alpeft_jax.strategies.base import as_key, check_inputs, l2_normalize, register
from alpeft_jax.strategies.distances import (
    DEFAULT_BLOCK,
    _pad_to,
    count_within,
    first_argmax,
    fold_block_pairs,
    min_sq_dist,
    nearest_other_label_sq_dist,
)
from alpeft_jax.strategies.kmeans import kmeans

_HI = jax.lax.Precision.HIGHEST
PURITY_SAMPLE = 65536  # rows that estimate the purity curve on larger pools


def purity_delta(rng: jax.Array, x: jax.Array, n_classes: int, alpha: float = 0.95, kmeans_iters: int = 20,
                 block: int = DEFAULT_BLOCK, sample: int | None = PURITY_SAMPLE) -> float:
    """Largest delta whose balls are pure (one k-means cluster, k = n_classes) for at least alpha of points.

    A ball B(x, delta) is pure iff the nearest point of another cluster is at distance >= delta, so the
    purity curve is read off one blocked nearest-other-cluster pass instead of a grid of deltas. Past
    2 x `sample` points (None: never) the curve is that of `sample` random rows, each still against all N,
    which costs sample x N pairs instead of N^2 / 2 (the alpha-quantile of 65,536 draws is within about
    0.1 percentile of the pool's).
    """
    if not 0.0 < alpha <= 1.0:
        raise ValueError(f"alpha must be in (0, 1], got {alpha}")
    if sample is not None and sample < 1:
        raise ValueError(f"sample must be positive or None, got {sample}")
    _, labels = kmeans(rng, x, n_classes, kmeans_iters, block)
    rows = None
    if sample is not None and x.shape[0] > 2 * sample:
        rows = np.sort(np.asarray(jax.random.choice(jax.random.fold_in(rng, 1), x.shape[0], (sample,), False)))
    nn_other = nearest_other_label_sq_dist(x, labels, block, rows=rows)
    nn_other = np.sort(np.sqrt(np.asarray(nn_other, np.float64)))
    n = nn_other.shape[0]
    need = int(np.ceil(alpha * n))
    delta = float(nn_other[n - need])
    if not np.isfinite(delta):
        raise ValueError("k-means found a single cluster; pass delta explicitly or a larger n_classes")
    return delta


@partial(jax.jit, static_argnames=("block",))
def ball_counts(x: jax.Array, weight: jax.Array, r2: jax.Array, block: int) -> jax.Array:
    """For each row i, sum of weight[j] over rows j with squared distance < r2 (self included).

    x is zero-padded to whole blocks; only block pairs (I, J) with I <= J are computed and each mask
    serves both sides, in one device loop, so no edge list is built and memory stays O(N + block^2).
    """
    n = x.shape[0]
    xp = _pad_to(x, block)

    def fold(d: jax.Array, wi: jax.Array, wj: jax.Array) -> tuple[jax.Array, jax.Array]:
        m = (d < r2).astype(jnp.float32)
        return jnp.matmul(m, wj, precision=_HI), jnp.matmul(wi, m, precision=_HI)

    wp = _pad_to(weight.astype(jnp.float32), block)
    counts = fold_block_pairs(xp, wp, block, jnp.zeros((xp.shape[0],), jnp.float32), fold, jnp.add)
    return jnp.round(counts[:n]).astype(jnp.int32)


_CHUNKS = (1, 4, 16, 64, 256)


@partial(jax.jit, static_argnames=("budget",))
def greedy_coverage(x: jax.Array, r2: jax.Array, covered: jax.Array, gains: jax.Array, chosen: jax.Array,
                    u: jax.Array, budget: int) -> jax.Array:
    """Greedy picks maximising newly covered points; a random unchosen pick once nothing is left to cover.

    `gains` [N] count each point's uncovered ball members (see `ball_counts`). After a pick, the points it
    newly covers are taken in chunks (sizes from `_CHUNKS`, the largest not above what is left) and every
    point's gain drops by the chunk members in its ball: one N x D x chunk product per chunk, so the whole
    run costs one pass over all pairs plus a few matrix-vector products per pick, in O(N) memory.
    `u` [budget] are the uniforms of the random picks (the floor(u * n_free)-th unchosen point).
    """
    sqn = jnp.sum(x * x, axis=-1)
    neg = jnp.int32(-1)

    def ball(c: jax.Array) -> jax.Array:
        return sqn[c] + sqn - 2.0 * jnp.matmul(x, x[c], precision=_HI) < r2

    def chunk_update(size: int) -> object:
        def run(st: tuple) -> tuple:
            pending, gains = st
            (idx,) = jnp.nonzero(pending, size=size, fill_value=0)
            valid = jnp.arange(size) < jnp.sum(pending)
            d = sqn[:, None] + sqn[idx][None, :] - 2.0 * jnp.matmul(x, x[idx].T, precision=_HI)
            drop = jnp.sum((d < r2) & valid[None, :], axis=1, dtype=jnp.int32)
            return pending.at[idx].set(False), gains - drop

        return run

    def drain(st: tuple) -> tuple:
        for size in reversed(_CHUNKS):  # largest chunks first; each loop leaves fewer than `size` pending
            st = jax.lax.while_loop(lambda t, size=size: jnp.sum(t[0], dtype=jnp.int32) >= size,
                                    chunk_update(size), st)
        return st

    def pick(i: int, state: tuple) -> tuple:
        covered, gains, chosen, picks = state
        c = first_argmax(jnp.where(chosen, neg, gains))
        free = ~chosen
        k = jnp.minimum(jnp.floor(u[i] * jnp.sum(free)).astype(jnp.int32), jnp.sum(free) - 1)
        rand = jnp.argmax(jnp.cumsum(free.astype(jnp.int32)) > k)
        c = jnp.where(gains[c] > 0, c, rand)
        # the barrier keeps XLA from fusing the ball test into every consumer inside the loops below
        new, gains = jax.lax.optimization_barrier((ball(c) & ~covered, gains))
        _, gains = drain((new, gains))
        return covered | new, gains, chosen.at[c].set(True), picks.at[i].set(c)

    init = (covered, gains, chosen, jnp.zeros((budget,), jnp.int32))
    _, _, _, picks = jax.lax.fori_loop(0, budget, pick, init)
    return picks


@register("probcover", requires=("features", "logits"))
def select_probcover(rng: object, pool: Mapping[str, np.ndarray], labeled: np.ndarray, budget: int,
                     delta: float | None = None, alpha: float = 0.95, n_classes: int | None = None,
                     kmeans_iters: int = 20, block: int = DEFAULT_BLOCK, purity_sample: int | None = PURITY_SAMPLE,
                     **_: object) -> np.ndarray:
    """ProbCover picks on L2-normalised features, in greedy order.

    delta defaults to `purity_delta` with n_classes from pool["logits"] (or the `n_classes` option).
    The initial gains count uncovered ball members: over all pairs (N^2 / 2) while most of the pool is
    uncovered, over N x (uncovered) pairs once the labelled set covers at least half of it.
    Randomness: k-means from the first half of split(key); once nothing is left to cover, pick i is the
    floor(u[i] * n_free)-th unchosen point with u = jax.random.uniform(second half, (budget,)).
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
        delta = purity_delta(key_km, x, n_classes, alpha, kmeans_iters, block, purity_sample)
    if delta <= 0:
        raise ValueError(f"delta must be positive, got {delta}")
    r2 = jnp.float32(delta) ** 2
    lab = np.flatnonzero(labeled)
    covered = jnp.zeros((x.shape[0],), bool)
    if lab.size:
        covered = min_sq_dist(x, x[lab], block)[0] < r2
    uncovered = np.flatnonzero(~np.asarray(covered))
    if 2 * uncovered.size <= x.shape[0]:
        gains = count_within(x, x[uncovered], r2, min(block, 2048))
    else:
        gains = ball_counts(x, ~covered, r2, min(block, 2048))
    u = jax.random.uniform(key_rand, (budget,))
    return np.asarray(greedy_coverage(x, r2, covered, gains, jnp.asarray(labeled), u, int(budget)), np.int64)


__all__ = ["purity_delta", "ball_counts", "greedy_coverage", "select_probcover"]
