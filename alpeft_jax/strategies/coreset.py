"""Core-set (Sener & Savarese 2018): k-centre greedy on L2-normalised image features (METHOD 3.5)."""

from __future__ import annotations

from collections.abc import Mapping
from functools import partial

import jax
import jax.numpy as jnp
import numpy as np

from alpeft_jax.strategies.base import as_key, check_inputs, l2_normalize, register
from alpeft_jax.strategies.distances import DEFAULT_BLOCK, min_sq_dist, sq_dist


@partial(jax.jit, static_argnames=("budget",))
def k_center_greedy(x: jax.Array, min_d: jax.Array, budget: int) -> jax.Array:
    """Greedy farthest-first picks: repeatedly take argmax of min_d and lower min_d by the new centre.

    `min_d` holds each point's squared distance to the current centres; -inf excludes a point.
    """

    sqn = jnp.sum(x * x, axis=-1)

    def body(i: int, state: tuple) -> tuple:
        md, picks = state
        j = jnp.argmax(md)
        picks = picks.at[i].set(j)
        d = jnp.maximum(sqn + sqn[j] - 2.0 * jnp.matmul(x, x[j], precision=jax.lax.Precision.HIGHEST), 0.0)
        md = jnp.minimum(md, d).at[j].set(-jnp.inf)
        return md, picks

    _, picks = jax.lax.fori_loop(0, budget, body, (min_d, jnp.zeros((budget,), jnp.int32)))
    return picks


@register("coreset", requires=("features",))
def select_coreset(rng: object, pool: Mapping[str, np.ndarray], labeled: np.ndarray, budget: int,
                   block: int = DEFAULT_BLOCK, **_: object) -> np.ndarray:
    """Farthest-first unlabelled points from the labelled set, in greedy order.

    With no labelled example the first centre is a uniformly random unlabelled point.
    """
    labeled, n = check_inputs(pool, labeled, budget, {"features"})
    if budget == 0:
        return np.zeros((0,), np.int64)
    x = l2_normalize(pool["features"])
    lab = np.flatnonzero(labeled)
    first: list[int] = []
    if lab.size:
        md, _ = min_sq_dist(x, x[lab], block)
    else:
        unl = np.flatnonzero(~labeled)
        j0 = int(unl[int(jax.random.randint(as_key(rng), (), 0, unl.size))])
        first = [j0]
        md = sq_dist(x, x[j0][None, :])[:, 0]
        labeled = labeled.copy()
        labeled[j0] = True
        budget -= 1
    md = jnp.where(jnp.asarray(labeled), -jnp.inf, md)
    picks = np.asarray(k_center_greedy(x, md, int(budget)), np.int64) if budget else np.zeros(0, np.int64)
    return np.concatenate([np.asarray(first, np.int64), picks])
