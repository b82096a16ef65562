"""K-means in JAX: k-means++ initialisation and Lloyd iterations in one device program.

The program has fixed shapes for a run: centres live in a buffer of `k_cap` rows of which the first k (data)
are used, and distances to them are taken `CENTRE_CHUNK` centres at a time with a data-dependent trip count,
so a cluster count that changes between rounds compiles nothing new. Rows may be sharded over a mesh: each
shard assigns its own rows and the centre sums meet in one all-reduce per iteration.
"""

from __future__ import annotations

from functools import partial

import jax
import jax.numpy as jnp
import numpy as np

from alpeft_jax.strategies import spmd
from alpeft_jax.strategies.distances import DEFAULT_BLOCK, inverse_cdf, sq_dist

CENTRE_CHUNK = 128
_HI = jax.lax.Precision.HIGHEST


def nearest_centre(x: jax.Array, centres: jax.Array, k: jax.Array, block: int) -> tuple[jax.Array, jax.Array]:
    """Per row of x, the squared distance to the nearest of centres[:k] and its index (the first on ties).

    Rows go `block` at a time (the last block shifted back to end at N), centres min(CENTRE_CHUNK, k_cap)
    at a time, ceil(k / chunk) chunks.
    """
    n, k_cap = x.shape[0], centres.shape[0]
    block, chunk = min(block, n), min(CENTRE_CHUNK, k_cap)

    def rows(b: int, acc: tuple) -> tuple:
        s = jnp.minimum(b * block, n - block)
        xb = jax.lax.dynamic_slice_in_dim(x, s, block)

        def cols(st: tuple) -> tuple:
            best, arg, c = st
            start = jnp.minimum(c, k_cap - chunk)  # shifted back: the overlap is never a strictly smaller distance
            ids = start + jnp.arange(chunk)
            d = jnp.where(ids[None, :] < k, sq_dist(xb, jax.lax.dynamic_slice_in_dim(centres, start, chunk)), jnp.inf)
            j = jnp.argmin(d, axis=1)
            m = jnp.take_along_axis(d, j[:, None], axis=1)[:, 0]
            upd = m < best
            return jnp.where(upd, m, best), jnp.where(upd, j.astype(jnp.int32) + start, arg), c + chunk

        init = (jnp.full((block,), jnp.inf, jnp.float32), jnp.zeros((block,), jnp.int32), jnp.int32(0))
        best, arg, _ = jax.lax.while_loop(lambda st: st[2] < k, cols, init)
        return (
            jax.lax.dynamic_update_slice_in_dim(acc[0], best, s, 0),
            jax.lax.dynamic_update_slice_in_dim(acc[1], arg, s, 0),
        )

    init = (jnp.zeros((n,), jnp.float32), jnp.zeros((n,), jnp.int32))
    return jax.lax.fori_loop(0, -(-n // block), rows, init)


def _seeds(x: jax.Array, first: jax.Array, u: jax.Array, k: jax.Array, k_cap: int, axis: str | None) -> jax.Array:
    """k-means++ seeds (global row ids [k_cap], the first k used): `first`, then prop. to D^2 at u[i]."""
    sqn = jnp.sum(x * x, axis=-1)

    def dist_to(j: jax.Array) -> jax.Array:
        xj, sj = spmd.take(x, j[None], axis)[0], spmd.take(sqn, j[None], axis)[0]
        return jnp.maximum(sqn + sj - 2.0 * jnp.matmul(x, xj, precision=_HI), 0.0)

    def body(i: int, state: tuple) -> tuple:
        d2, picks = state
        w = jnp.where(spmd.gsum(d2.sum(), axis) > 0, d2, jnp.ones_like(d2))
        j = inverse_cdf(spmd.gather(w, axis), u[i])  # the N weights, summed in the single-device order
        return jnp.minimum(d2, dist_to(j)), picks.at[i].set(j)

    picks = jnp.zeros((k_cap,), jnp.int32).at[0].set(first)
    return jax.lax.fori_loop(1, k, body, (dist_to(first), picks))[1]


def lloyd(
    x: jax.Array, key: jax.Array, k: jax.Array, n_total: int, k_cap: int, iters: int, block: int, axis: str | None
) -> tuple[jax.Array, jax.Array]:
    """Lloyd's k-means on this shard's rows from k-means++ seeds; (centres [k_cap,D], this shard's labels).

    Stops after `iters` updates or once an update changes no label. Randomness (key: a PRNG key or its
    uint32 data): k1, k2 = split(key); first seed randint(k1, (), 0, n_total), uniforms uniform(k2, (k_cap,))
    (the first k used).
    """
    if not jnp.issubdtype(key.dtype, jax.dtypes.prng_key):
        key = jax.random.wrap_key_data(key)
    k1, k2 = jax.random.split(key)
    first = jax.random.randint(k1, (), 0, n_total)
    seeds = _seeds(x, first, jax.random.uniform(k2, (k_cap,)), k, k_cap, axis)
    centres = spmd.take(x, seeds, axis)
    _, assign = nearest_centre(x, centres, k, block)

    def update(centres: jax.Array, assign: jax.Array) -> jax.Array:
        sums = spmd.gsum(jax.ops.segment_sum(x, assign, num_segments=k_cap), axis)
        counts = spmd.gsum(jax.ops.segment_sum(jnp.ones((x.shape[0],), jnp.float32), assign, num_segments=k_cap), axis)
        return jnp.where(counts[:, None] > 0, sums / jnp.maximum(counts, 1.0)[:, None], centres)

    def step(st: tuple) -> tuple:
        it, centres, assign, _ = st
        centres = update(centres, assign)
        _, new = nearest_centre(x, centres, k, block)
        return it + 1, centres, new, spmd.gsum(jnp.sum(new != assign), axis) == 0

    cond = lambda st: (st[0] < iters) & ~st[3]
    _, centres, assign, _ = jax.lax.while_loop(cond, step, (jnp.int32(0), centres, assign, jnp.bool_(False)))
    return centres, assign


@partial(jax.jit, static_argnames=("k_cap", "iters", "block", "mesh"))
def kmeans_labels(
    x: jax.Array, key: jax.Array, k: jax.Array, k_cap: int, iters: int, block: int, mesh: spmd.Mesh | None
) -> tuple[jax.Array, jax.Array]:
    """(centres [k_cap,D], labels [N]) of `lloyd`; with a mesh, x and the labels are sharded over `data`."""
    n_total = x.shape[0]
    local = lambda x, key, k, axis: lloyd(x, key, k, n_total, k_cap, iters, block, axis)
    return spmd.spmd(local, mesh, (spmd.ROWS, spmd.P(), spmd.P()), (spmd.P(), spmd.ROWS))(x, key, k)


def kmeans(
    rng: jax.Array, x: jax.Array, k: int, iters: int = 20, block: int = DEFAULT_BLOCK
) -> tuple[jax.Array, np.ndarray]:
    """Lloyd's k-means from k-means++ seeds; returns (centres [k,D], labels [N]). Stops early when stable."""
    x = jnp.asarray(x, jnp.float32)
    n = x.shape[0]
    if not 1 <= k <= n:
        raise ValueError(f"k-means needs 1 <= n_clusters <= n_points, got {k} clusters for {n} points")
    centres, labels = kmeans_labels(x, rng, jnp.int32(k), int(k), int(iters), int(block), None)
    return centres, np.asarray(labels, np.int64)
