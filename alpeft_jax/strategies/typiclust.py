"""TypiClust (Hacohen et al. 2022): the most typical point of the largest uncovered k-means clusters."""

from __future__ import annotations

from collections.abc import Mapping
from functools import partial

import jax
import jax.numpy as jnp
import numpy as np

from alpeft_jax.strategies import spmd
from alpeft_jax.strategies.base import as_key, check_inputs, l2_normalize, register
from alpeft_jax.strategies.distances import DEFAULT_BLOCK, sq_dist
from alpeft_jax.strategies.kmeans import lloyd


def cluster_order(sizes: np.ndarray, existing: np.ndarray, min_cluster_size: int) -> np.ndarray:
    """Clusters larger than min_cluster_size, fewest labelled members first, then largest, then lowest id."""
    ids = np.flatnonzero(sizes > min_cluster_size)
    return ids[np.lexsort((ids, -sizes[ids], existing[ids]))]


# A sharded pool is gathered to the host first: at N = 1M (D = 512, budget 100) on 8 fake CPU devices that took
# 212 s against 244 s on the shards (benchmarks/sharded_selection.py); k-means dominates both. `sharded=True`
# runs on the shards (the centre sums then add up in another order, which can move a few k-means labels).
ON_MESH = False
CANDIDATES = 8  # most typical rows (by float32 neighbour sums) whose typicality the host finishes in float64
_ROWS = 512  # most member rows per block of the within-cluster k-NN


def member_block(n: int, k_cap: int) -> int:
    """Rows per block of the within-cluster k-NN: a power of two near twice the mean cluster size, 32 to 512.

    Fixed for a run (N and the k-means buffer are), so picks compile once; blocks sized to the clusters keep
    a pick from computing 512 x 512 distances for a cluster of twenty (10k rows, 500 clusters: ~27 ms -> ~3 ms).
    """
    want = -(-2 * n // max(k_cap, 1))
    return int(min(_ROWS, max(32, 1 << (want - 1).bit_length())))


@partial(jax.jit, static_argnames=("k_cap", "iters", "block", "normalize", "mesh"))
def _clusters(
    features: jax.Array,
    labeled: jax.Array,
    key: jax.Array,
    k: jax.Array,
    k_cap: int,
    iters: int,
    block: int,
    normalize: bool,
    mesh: spmd.Mesh | None,
) -> tuple:
    """(features to cluster, cluster of each unlabelled row (-1: labelled) [N] replicated, sizes, labelled counts)."""
    n_total = features.shape[0]

    def local(f: jax.Array, lab: jax.Array, key: jax.Array, k: jax.Array, axis: str | None) -> tuple:
        x = l2_normalize(f) if normalize else f.astype(jnp.float32)
        _, assign = lloyd(x, key, k, n_total, k_cap, iters, block, axis)
        sizes = spmd.gsum(jnp.bincount(assign, length=k_cap), axis)
        existing = spmd.gsum(jnp.bincount(jnp.where(lab, assign, k_cap), length=k_cap + 1)[:k_cap], axis)
        return x, spmd.gather(jnp.where(lab, -1, assign), axis), sizes, existing

    rep = spmd.P()
    return spmd.spmd(local, mesh, (spmd.ROWS, spmd.ROWS, rep, rep), (spmd.ROWS, rep, rep, rep))(
        features, labeled, key, k
    )


def _typical_local(
    x: jax.Array, members: jax.Array, c: jax.Array, k: jax.Array, k_max: int, block: int, axis: str | None
) -> tuple[jax.Array, jax.Array]:
    """The CANDIDATES most typical members of cluster c (global ids, -1 if fewer) and their neighbour distances.

    Typicality is within the members (members == c): each member's k nearest other members by squared
    distance; the k_max + 1 smallest distances (self first) are kept per row, the row's float32 sum of
    entries 1..k ranks it. Member rows go `_ROWS` at a time to every shard, each shard scans its own
    members and the shards' nearest lists merge, so a shard computes its share of the m x m distances.
    """
    n_total, n = members.shape[0], x.shape[0]
    kk = k_max + 1
    rows, cols = min(block, _ROWS, n_total), min(block, _ROWS, n)
    ids_all = jnp.nonzero(members == c, size=n_total, fill_value=0)[0]
    m = jnp.sum(members == c, dtype=jnp.int32)
    mine = jax.lax.dynamic_slice_in_dim(members, spmd.offset(n, axis), n) == c
    ids_mine = jnp.nonzero(mine, size=n, fill_value=0)[0]
    m_mine = jnp.sum(mine, dtype=jnp.int32)

    def window(v: jax.Array, s: jax.Array, size: int, count: jax.Array) -> tuple[jax.Array, jax.Array]:
        start = jnp.minimum(s, v.shape[0] - size)  # shifted back: positions before s were done already
        pos = start + jnp.arange(size)
        return jax.lax.dynamic_slice_in_dim(v, start, size), (pos >= s) & (pos < count)

    def row_block(st: tuple) -> tuple:
        s, cand_s, cand_id, cand_d = st
        rid, rvalid = window(ids_all, s, rows, m)
        xr = spmd.take(x, rid, axis)

        def col_block(ct: tuple) -> tuple:
            t, best = ct
            cid, cvalid = window(ids_mine, t, cols, m_mine)
            d = jnp.where(cvalid[None, :], sq_dist(xr, x[cid]), jnp.inf)
            return t + cols, -jax.lax.top_k(-jnp.concatenate([best, d], axis=1), kk)[0]

        best = jax.lax.while_loop(
            lambda ct: ct[0] < m_mine, col_block, (jnp.int32(0), jnp.full((rows, kk), jnp.inf, jnp.float32))
        )[1]
        if axis is not None:  # every shard's nearest lists for these rows, then the kk nearest of their union
            both = jax.lax.all_gather(best, axis, axis=1, tiled=True)
            best = -jax.lax.top_k(-both, kk)[0]
        j = jnp.arange(kk)
        score = jnp.where(rvalid, jnp.sum(jnp.where((j >= 1) & (j <= k), best, 0.0), axis=1), jnp.inf)
        # stable top-k: earlier (lower-id) rows stay first among equal sums
        _, sel = jax.lax.top_k(-jnp.concatenate([cand_s, score]), CANDIDATES)
        return (
            s + rows,
            jnp.concatenate([cand_s, score])[sel],
            jnp.concatenate([cand_id, rid])[sel],
            jnp.concatenate([cand_d, best])[sel],
        )

    init = (
        jnp.int32(0),
        jnp.full((CANDIDATES,), jnp.inf, jnp.float32),
        jnp.zeros((CANDIDATES,), jnp.int32),
        jnp.zeros((CANDIDATES, kk), jnp.float32),
    )
    _, cand_s, cand_id, cand_d = jax.lax.while_loop(lambda st: st[0] < m, row_block, init)
    return jnp.where(cand_s < jnp.inf, cand_id, -1), cand_d


@partial(jax.jit, static_argnames=("k_max", "block", "mesh"))
def _typical(
    x: jax.Array, members: jax.Array, c: jax.Array, k: jax.Array, k_max: int, block: int, mesh: spmd.Mesh | None
) -> tuple[jax.Array, jax.Array]:
    local = lambda x, members, c, k, axis: _typical_local(x, members, c, k, k_max, block, axis)
    rep = spmd.P()
    return spmd.spmd(local, mesh, (spmd.ROWS, rep, rep, rep), (rep, rep))(x, members, c, k)


@jax.jit
def _drop(members: jax.Array, idx: jax.Array) -> jax.Array:
    return members.at[idx].set(-2)


def most_typical(ids: np.ndarray, dists: np.ndarray, k: int) -> int:
    """The candidate of max typicality 1 / (mean of its k nearest squared distances + 1e-5), lowest id on ties.

    As the reference code (faiss L2): the mean is over the float32 distances in float64.
    """
    ok = ids >= 0
    ids, dists = ids[ok], dists[ok]
    order = np.argsort(ids)
    ids, dists = ids[order], dists[order]
    if k == 0:  # a lone member
        return int(ids[0])
    typ = 1.0 / (np.asarray(dists[:, 1 : k + 1], np.float64).mean(axis=1) + 1e-5)
    return int(ids[np.argmax(typ)])


@register("typiclust", requires=("features",))
def select_typiclust(
    rng: object,
    pool: Mapping[str, np.ndarray],
    labeled: np.ndarray,
    budget: int,
    k_nn: int = 20,
    max_clusters: int | None = 500,
    min_cluster_size: int = 5,
    kmeans_iters: int = 20,
    normalize: bool = True,
    block: int = DEFAULT_BLOCK,
    sharded: bool | None = None,
    **_: object,
) -> np.ndarray:
    """Round-robin over clusters (by `cluster_order`), each time the unlabelled member of max typicality.

    n_clusters = |labeled| + budget, capped at `max_clusters` (500 in the reference code; None = no cap).
    Typicality is recomputed within the cluster's remaining unlabelled, unselected members with
    k = min(k_nn, size // 2). If no listed cluster has members left, a uniformly random unlabelled point.
    The k-means buffer holds min(max_clusters, N) centres, so rounds compile nothing new; without a cap it
    grows in powers of two.
    """
    labeled, n = check_inputs(pool, labeled, budget, {"features"})
    if budget == 0:
        return np.zeros((0,), np.int64)
    arrays, mesh = spmd.placed(pool, {"features"}, sharded, ON_MESH)
    n_clusters = int(labeled.sum()) + budget
    if max_clusters is not None:
        n_clusters = min(n_clusters, max_clusters)
    n_clusters = min(n_clusters, n)
    k_cap = min(n, max_clusters) if max_clusters is not None else min(n, 1 << (n_clusters - 1).bit_length())
    rows = min(int(block), member_block(n, k_cap))
    k_km, k_rand = jax.random.split(as_key(rng))
    feats = arrays["features"]
    lab = jnp.asarray(labeled) if mesh is None else spmd.put(labeled, mesh)
    rep = (lambda v: v) if mesh is None else (lambda v: spmd.put(np.asarray(v), mesh, spmd.P()))
    if mesh is None and not isinstance(feats, jax.Array):
        feats = np.asarray(feats, np.float32)
    x, members, sizes, existing = _clusters(
        feats,
        lab,
        rep(jax.random.key_data(k_km)),
        rep(np.int32(n_clusters)),
        k_cap,
        int(kmeans_iters),
        int(block),
        bool(normalize),
        mesh,
    )
    sizes, existing = np.asarray(sizes, np.int64), np.asarray(existing, np.int64)
    order = cluster_order(sizes, existing, min_cluster_size)
    left = sizes - existing  # unlabelled, unselected members per cluster
    gen = np.random.default_rng(np.asarray(jax.random.randint(k_rand, (2,), 0, 2**31 - 1), np.uint64))
    taken = labeled.copy()
    picks: list[int] = []
    for i in range(budget):
        c = next(
            (order[(i + step) % order.size] for step in range(order.size) if left[order[(i + step) % order.size]] > 0),
            None,
        )
        if c is not None:
            k = min(k_nn, int(left[c]) // 2)
            ids, dists = _typical(x, members, rep(np.int32(c)), rep(np.int32(k)), int(k_nn), rows, mesh)
            idx = most_typical(np.asarray(ids), np.asarray(dists), k)
            left[c] -= 1
        else:
            free = np.flatnonzero(~taken)
            idx = int(free[gen.integers(free.size)])
        members = _drop(members, rep(np.int32(idx)))
        taken[idx] = True
        picks.append(idx)
    return np.asarray(picks, np.int64)
