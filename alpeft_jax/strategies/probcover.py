"""ProbCover (Yehuda et al. 2022): greedy maximum coverage of delta-balls over the pool.

No delta-ball graph is stored: one blocked device pass counts each point's uncovered ball members, and the
greedy (on device) lowers those counts by the newly covered points after each pick.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from functools import partial
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from alpeft_jax.strategies import spmd
from alpeft_jax.strategies.base import as_key, check_inputs, l2_normalize, labelled_ids, register
from alpeft_jax.strategies.distances import (
    DEFAULT_BLOCK,
    _pad_to,
    fold_block_pairs,
    nearest_other_label_sq_dist,
    sq_dist,
)
from alpeft_jax.strategies.kmeans import kmeans, kmeans_labels

_HI = jax.lax.Precision.HIGHEST
PURITY_SAMPLE = 65536  # rows that estimate the purity curve on larger pools


def purity_delta(
    rng: jax.Array,
    x: jax.Array,
    n_classes: int,
    alpha: float = 0.95,
    kmeans_iters: int = 20,
    block: int = DEFAULT_BLOCK,
    sample: int | None = PURITY_SAMPLE,
    mesh: spmd.Mesh | None = None,
) -> float:
    """Largest delta whose balls are pure (one k-means cluster, k = n_classes) for at least alpha of points.

    A ball B(x, delta) is pure iff the nearest point of another cluster is at distance >= delta, so the
    purity curve is read off one blocked nearest-other-cluster pass instead of a grid of deltas. Past
    2 x `sample` points (None: never) the curve is that of `sample` random rows, each still against all N,
    which costs sample x N pairs instead of N^2 / 2 (the alpha-quantile of 65,536 draws is within about
    0.1 percentile of the pool's). With a mesh, x is sharded over it: k-means runs per shard and each
    curve row meets every shard's rows where they are (N^2 pairs over the shards when all rows are used).
    """
    if not 0.0 < alpha <= 1.0:
        raise ValueError(f"alpha must be in (0, 1], got {alpha}")
    if sample is not None and sample < 1:
        raise ValueError(f"sample must be positive or None, got {sample}")
    n = x.shape[0]
    rows = None
    if sample is not None and n > 2 * sample:
        rows = np.sort(np.asarray(jax.random.choice(jax.random.fold_in(rng, 1), n, (sample,), False)))
    nn_other: Any
    if mesh is None:
        _, labels = kmeans(rng, x, n_classes, kmeans_iters, block)
        nn_other = nearest_other_label_sq_dist(x, labels, block, rows=rows)
    else:
        rep = lambda v: spmd.put(np.asarray(v), mesh, spmd.P())
        _, labels = kmeans_labels(
            x,
            rep(jax.random.key_data(rng)),
            rep(np.int32(n_classes)),
            int(n_classes),
            int(kmeans_iters),
            int(block),
            mesh,
        )
        rows = np.arange(n) if rows is None else rows
        nn_other = _other_label_on_mesh(x, labels, rep(rows.astype(np.int32)), min(block, 2048), mesh)
    nn_other = np.sort(np.sqrt(np.asarray(nn_other, np.float64)))
    n = nn_other.shape[0]
    need = int(np.ceil(alpha * n))
    delta = float(nn_other[n - need])
    if not np.isfinite(delta):
        raise ValueError("k-means found a single cluster; pass delta explicitly or a larger n_classes")
    return delta


def _window(v: jax.Array, s: jax.Array | int, size: int, count: jax.Array | int) -> tuple[jax.Array, jax.Array]:
    """v[s:s+size] as a fixed-size slice (shifted back to fit) and which of its entries are new and below count."""
    start = jnp.minimum(s, v.shape[0] - size)
    pos = start + jnp.arange(size)
    return jax.lax.dynamic_slice_in_dim(v, start, size), (pos >= s) & (pos < count)


def _per_row(x: jax.Array, block: int, fn: Callable[[jax.Array, jax.Array], jax.Array], dtype: Any) -> jax.Array:
    """fn(row block, its first index) over fixed-size row blocks of x, the last shifted back to end at N."""
    n = x.shape[0]
    block = min(block, n)

    def body(b: int, acc: jax.Array) -> jax.Array:
        s = jnp.minimum(b * block, n - block)
        return jax.lax.dynamic_update_slice_in_dim(acc, fn(jax.lax.dynamic_slice_in_dim(x, s, block), s), s, 0)

    return jax.lax.fori_loop(0, -(-n // block), body, jnp.zeros((n,), dtype))


@partial(jax.jit, static_argnames=("block", "mesh"))
def _other_label_on_mesh(x: jax.Array, labels: jax.Array, rows: jax.Array, block: int, mesh: spmd.Mesh) -> jax.Array:
    """For each of the global `rows`, the squared distance to the nearest row of another label, x sharded."""

    def local(x: jax.Array, labels: jax.Array, rows: jax.Array, axis: str | None) -> jax.Array:
        size = min(block, rows.shape[0])

        def body(b: int, out: jax.Array) -> jax.Array:
            rid, _ = _window(rows, b * size, size, rows.shape[0])
            xr, lr = spmd.take(x, rid, axis), spmd.take(labels, rid, axis)

            def against(xb: jax.Array, s: jax.Array) -> jax.Array:  # this shard's rows as columns, per curve row
                lb = jax.lax.dynamic_slice_in_dim(labels, s, xb.shape[0])
                return jnp.where(lr[None, :] != lb[:, None], sq_dist(xb, xr), jnp.inf).min(axis=0)

            n_loc, blk = x.shape[0], min(block, x.shape[0])

            def cols(c: int, best: jax.Array) -> jax.Array:
                s = jnp.minimum(c * blk, n_loc - blk)  # overlap recomputed: a minimum is unchanged
                return jnp.minimum(best, against(jax.lax.dynamic_slice_in_dim(x, s, blk), s))

            best = jax.lax.fori_loop(0, -(-n_loc // blk), cols, jnp.full((size,), jnp.inf, jnp.float32))
            start = jnp.minimum(b * size, rows.shape[0] - size)
            return jax.lax.dynamic_update_slice_in_dim(out, spmd.gmin(best, axis), start, 0)

        return jax.lax.fori_loop(0, -(-rows.shape[0] // size), body, jnp.zeros(rows.shape, jnp.float32))

    return spmd.spmd(local, mesh, (spmd.ROWS, spmd.ROWS, spmd.P()), spmd.P())(x, labels, rows)


def _count_near(
    x: jax.Array, ids: jax.Array, count: jax.Array, r2: jax.Array, block: int, axis: str | None
) -> jax.Array:
    """Per row of this shard, how many of the rows ids[:count] (global, replicated) lie at squared distance < r2.

    The id rows come `block` at a time from the shards holding them; a data-dependent trip count.
    """
    size = min(block, ids.shape[0])

    def body(st: tuple) -> tuple:
        acc, s = st
        cid, valid = _window(ids, s, size, count)
        y = spmd.take(x, cid, axis)
        near = lambda xb, _s: jnp.sum((sq_dist(xb, y) < r2) & valid[None, :], axis=1, dtype=jnp.int32)
        return acc + _per_row(x, block, near, jnp.int32), s + size

    init = (jnp.zeros((x.shape[0],), jnp.int32), jnp.int32(0))
    return jax.lax.while_loop(lambda st: st[1] < count, body, init)[0]


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


def _greedy_local(
    x: jax.Array,
    r2: jax.Array,
    covered: jax.Array,
    gains: jax.Array,
    chosen: jax.Array,
    u: jax.Array,
    budget: int,
    axis: str | None,
) -> jax.Array:
    """`greedy_coverage` on this shard's rows; picks are global indices, the same on every shard.

    On a mesh the newly covered points are drained per shard: each step every shard contributes up to
    chunk / devices of its own and all shards' contributions meet every shard's rows (exact integer counts).
    """
    n = x.shape[0]
    off = spmd.offset(n, axis)
    sqn = jnp.sum(x * x, axis=-1)
    neg = jnp.int32(-1)
    n_dev = 1 if axis is None else jax.lax.axis_size(axis)
    sizes = sorted({max(1, c // n_dev) for c in _CHUNKS})

    def ball(c: jax.Array) -> jax.Array:
        xc, sc = spmd.take(x, c[None], axis)[0], spmd.take(sqn, c[None], axis)[0]
        return sc + sqn - 2.0 * jnp.matmul(x, xc, precision=_HI) < r2

    def chunk_update(size: int) -> Callable[[tuple], tuple]:
        def run(st: tuple) -> tuple:
            pending, gains = st
            (idx,) = jnp.nonzero(pending, size=size, fill_value=0)
            valid = jnp.arange(size) < jnp.sum(pending)
            rows, rsq = spmd.gather(x[idx], axis), spmd.gather(sqn[idx], axis)
            d = sqn[:, None] + rsq[None, :] - 2.0 * jnp.matmul(x, rows.T, precision=_HI)
            drop = jnp.sum((d < r2) & spmd.gather(valid, axis)[None, :], axis=1, dtype=jnp.int32)
            return pending.at[idx].set(False), gains - drop

        return run

    def drain(st: tuple) -> tuple:
        left = lambda t: spmd.gmax(jnp.sum(t[0], dtype=jnp.int32), axis)
        branches: list[Callable[..., Any]] = [chunk_update(size) for size in sizes]

        def step(t: tuple) -> tuple:  # the smallest chunk that takes all pending (or the largest chunk)
            return jax.lax.switch(jnp.searchsorted(jnp.asarray(sizes), jnp.minimum(left(t), sizes[-1])), branches, t)

        return jax.lax.while_loop(lambda t: left(t) > 0, step, st)

    def pick(i: int, state: tuple) -> tuple:
        covered, gains, chosen, picks = state
        c = spmd.first_argmax(jnp.where(chosen, neg, gains), axis)
        free = ~chosen
        n_free = jnp.sum(free, dtype=jnp.int32)
        counts = spmd.gather(n_free[None], axis)
        total = jnp.sum(counts)
        k = jnp.minimum(jnp.floor(u[i] * total).astype(jnp.int32), total - 1)
        ends = jnp.cumsum(counts)
        owner = jnp.searchsorted(ends, k, side="right")
        me = 0 if axis is None else jax.lax.axis_index(axis)
        k_here = k - (ends[me] - counts[me])
        rand = spmd.gsum(jnp.where(me == owner, jnp.argmax(jnp.cumsum(free.astype(jnp.int32)) > k_here) + off, 0), axis)
        c = jnp.where(spmd.take(gains, c[None], axis)[0] > 0, c, rand)
        # the barrier keeps XLA from fusing the ball test into every consumer inside the loops below
        new, gains = jax.lax.optimization_barrier((ball(c) & ~covered, gains))
        _, gains = drain((new, gains))
        loc = jnp.clip(c - off, 0, n - 1)
        chosen = chosen.at[loc].set(chosen[loc] | (c - off == loc))
        return covered | new, gains, chosen, picks.at[i].set(c)

    init = (covered, gains, chosen, jnp.zeros((budget,), jnp.int32))
    _, _, _, picks = jax.lax.fori_loop(0, budget, pick, init)
    return picks


@partial(jax.jit, static_argnames=("budget",))
def greedy_coverage(
    x: jax.Array, r2: jax.Array, covered: jax.Array, gains: jax.Array, chosen: jax.Array, u: jax.Array, budget: int
) -> jax.Array:
    """Greedy picks maximising newly covered points; a random unchosen pick once nothing is left to cover.

    `gains` [N] count each point's uncovered ball members (see `ball_counts`). After a pick, the points it
    newly covers are taken in chunks (sizes from `_CHUNKS`, the smallest that holds what is left) and every
    point's gain drops by the chunk members in its ball: one N x D x chunk product per chunk, so the whole
    run costs one pass over all pairs plus about two passes over the pool per pick, in O(N) memory.
    `u` [budget] are the uniforms of the random picks (the floor(u * n_free)-th unchosen point).
    """
    return _greedy_local(x, r2, covered, gains, chosen, u, budget, None)


# A sharded pool is gathered to the host first: at N = 100k (D = 512) on 8 fake CPU devices that took 73 s
# against 266 s on the shards, where the purity curve meets all N^2 pairs instead of the one-device N^2 / 2
# (benchmarks/sharded_selection.py). `sharded=True` runs on the shards.
ON_MESH = False


@partial(jax.jit, static_argnames=("budget", "block", "mesh"))
def _select(
    x: jax.Array,
    labeled: jax.Array,
    lab_ids: jax.Array,
    n_lab: jax.Array,
    r2: jax.Array,
    u: jax.Array,
    budget: int,
    block: int,
    mesh: spmd.Mesh | None,
) -> jax.Array:
    """Coverage by the labelled set, initial gains and the greedy, in one program of fixed shapes."""
    n_total = x.shape[0]

    def local(
        x: jax.Array,
        labeled: jax.Array,
        lab_ids: jax.Array,
        n_lab: jax.Array,
        r2: jax.Array,
        u: jax.Array,
        axis: str | None,
    ) -> jax.Array:
        covered = _count_near(x, lab_ids, n_lab, r2, block, axis) > 0
        (unc_ids,) = jnp.nonzero(~spmd.gather(covered, axis), size=n_total, fill_value=0)
        n_unc = spmd.gsum(jnp.sum(~covered, dtype=jnp.int32), axis)
        near_uncovered = lambda: _count_near(x, unc_ids, n_unc, r2, block, axis)
        if axis is None:  # all pairs once (N^2 / 2) while most of the pool is uncovered, N x (uncovered) after
            gains = jax.lax.cond(2 * n_unc <= n_total, near_uncovered, lambda: ball_counts(x, ~covered, r2, block))
        else:
            gains = near_uncovered()
        return _greedy_local(x, r2, covered, gains, labeled, u, budget, axis)

    rep = spmd.P()
    return spmd.spmd(local, mesh, (spmd.ROWS, spmd.ROWS) + (rep,) * 4, rep)(x, labeled, lab_ids, n_lab, r2, u)


@partial(jax.jit, static_argnames=("mesh",))
def _normalized(features: jax.Array, mesh: spmd.Mesh | None) -> jax.Array:
    return spmd.spmd(lambda f, axis: l2_normalize(f), mesh, (spmd.ROWS,), spmd.ROWS)(features)


@register("probcover", requires=("features", "logits"))
def select_probcover(
    rng: object,
    pool: Mapping[str, np.ndarray],
    labeled: np.ndarray,
    budget: int,
    delta: float | None = None,
    alpha: float = 0.95,
    n_classes: int | None = None,
    kmeans_iters: int = 20,
    block: int = DEFAULT_BLOCK,
    purity_sample: int | None = PURITY_SAMPLE,
    sharded: bool | None = None,
    **_: object,
) -> np.ndarray:
    """ProbCover picks on L2-normalised features, in greedy order.

    delta defaults to `purity_delta` with n_classes from pool["logits"] (or the `n_classes` option).
    The initial gains count uncovered ball members: over all pairs (N^2 / 2) while most of the pool is
    uncovered, over N x (uncovered) pairs once the labelled set covers at least half of it (and always on a
    mesh, where each shard meets the uncovered rows of all).
    Randomness: k-means from the first half of split(key); once nothing is left to cover, pick i is the
    floor(u[i] * n_free)-th unchosen point with u = jax.random.uniform(second half, (budget,)).
    """
    needs = {"features"} if (delta is not None or n_classes is not None) else {"features", "logits"}
    labeled, _n = check_inputs(pool, labeled, budget, needs)
    if budget == 0:
        return np.zeros((0,), np.int64)
    arrays, mesh = spmd.placed(pool, {"features"}, sharded, ON_MESH)
    key_km, key_rand = jax.random.split(as_key(rng))
    feats = arrays["features"]
    x = _normalized(feats if mesh is not None or isinstance(feats, jax.Array) else np.asarray(feats, np.float32), mesh)
    if delta is None:
        if n_classes is None:
            n_classes = int(np.shape(pool["logits"])[-1])
        delta = purity_delta(key_km, x, n_classes, alpha, kmeans_iters, block, purity_sample, mesh)
    if delta <= 0:
        raise ValueError(f"delta must be positive, got {delta}")
    lab_ids, n_lab = labelled_ids(labeled)
    u = np.asarray(jax.random.uniform(key_rand, (budget,)))
    args = (lab_ids, n_lab, np.float32(delta) ** 2, u)
    if mesh is None:
        out = _select(x, jnp.asarray(labeled), *map(jnp.asarray, args), int(budget), min(block, 2048), None)
    else:
        out = _select(
            x,
            spmd.put(labeled, mesh),
            *(spmd.put(v, mesh, spmd.P()) for v in args),
            int(budget),
            min(block, 2048),
            mesh,
        )
    return np.asarray(out, np.int64)


__all__ = ["purity_delta", "ball_counts", "greedy_coverage", "select_probcover"]
