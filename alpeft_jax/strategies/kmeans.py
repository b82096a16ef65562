"""K-means in JAX: k-means++ initialisation and blocked Lloyd iterations (no N x k matrix at once)."""

from __future__ import annotations

from functools import partial

import jax
import jax.numpy as jnp
import numpy as np

from alpeft_jax.strategies.distances import DEFAULT_BLOCK, inverse_cdf, min_sq_dist


@partial(jax.jit, static_argnames=("k",))
def kmeans_pp_init(x: jax.Array, first: jax.Array, u: jax.Array, k: int) -> jax.Array:
    """Indices of k seeds: `first`, then each drawn prop. to squared distance to the nearest seed (u[i])."""
    sqn = jnp.sum(x * x, axis=-1)

    def dist_to(j: jax.Array) -> jax.Array:
        return jnp.maximum(sqn + sqn[j] - 2.0 * jnp.matmul(x, x[j], precision=jax.lax.Precision.HIGHEST), 0.0)

    d2 = dist_to(first)
    picks = jnp.zeros((k,), jnp.int32).at[0].set(first)

    def body(i: int, state: tuple) -> tuple:
        d2, picks = state
        w = jnp.where(d2.sum() > 0, d2, jnp.ones_like(d2))
        j = inverse_cdf(w, u[i])
        return jnp.minimum(d2, dist_to(j)), picks.at[i].set(j)

    _, picks = jax.lax.fori_loop(1, k, body, (d2, picks))
    return picks


@partial(jax.jit, static_argnames=("k",))
def _update(x: jax.Array, assign: jax.Array, centres: jax.Array, k: int) -> jax.Array:
    sums = jax.ops.segment_sum(x, assign, num_segments=k)
    counts = jax.ops.segment_sum(jnp.ones((x.shape[0],), jnp.float32), assign, num_segments=k)
    return jnp.where(counts[:, None] > 0, sums / jnp.maximum(counts, 1.0)[:, None], centres)


def kmeans(rng: jax.Array, x: jax.Array, k: int, iters: int = 20,
           block: int = DEFAULT_BLOCK) -> tuple[jax.Array, np.ndarray]:
    """Lloyd's k-means from k-means++ seeds; returns (centres [k,D], labels [N]). Stops early when stable."""
    x = jnp.asarray(x, jnp.float32)
    n = x.shape[0]
    if not 1 <= k <= n:
        raise ValueError(f"k-means needs 1 <= n_clusters <= n_points, got {k} clusters for {n} points")
    k1, k2 = jax.random.split(rng)
    first = jax.random.randint(k1, (), 0, n)
    centres = x[kmeans_pp_init(x, first, jax.random.uniform(k2, (k,)), k)]
    _, assign = min_sq_dist(x, centres, block)
    for _ in range(iters):
        centres = _update(x, assign, centres, k)
        _, new = min_sq_dist(x, centres, block)
        if bool(jnp.all(new == assign)):
            break
        assign = new
    return centres, np.asarray(assign, np.int64)
