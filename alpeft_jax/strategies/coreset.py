"""Core-set (Sener & Savarese 2018): k-centre greedy on L2-normalised image features (METHOD 3.5).

The features stay raw on the device; the normalised geometry enters through per-row inverse norms, so each
greedy pick reads the N x D matrix once (one matrix-vector product) and no normalised copy is stored.
"""

from __future__ import annotations

from collections.abc import Mapping
from functools import partial

import jax
import jax.numpy as jnp
import numpy as np

from alpeft_jax.strategies.base import as_key, check_inputs, register
from alpeft_jax.strategies.distances import DEFAULT_BLOCK, first_argmax

_HI = jax.lax.Precision.HIGHEST


def device_features(features: np.ndarray | jax.Array) -> jax.Array:
    """The [N,D] features as one float32 device array (no copy when already one)."""
    if isinstance(features, jax.Array) and features.dtype == jnp.float32:
        return features
    x = np.asarray(features, np.float32) if not isinstance(features, jax.Array) else features
    if x.ndim != 2:
        raise ValueError(f"pool['features'] must be [N,D], got shape {x.shape}")
    return jnp.asarray(x, jnp.float32)


@jax.jit
def unit_norm_factors(x: jax.Array) -> tuple[jax.Array, jax.Array]:
    """Per-row inverse norms r (x * r is the L2-normalised row) and the squared norms of x * r."""
    r = 1.0 / jnp.maximum(jnp.sqrt(jnp.sum(x * x, axis=-1)), 1e-12)
    return r, jnp.sum(jnp.square(x * r[:, None]), axis=-1)


def _dist_to_row(x: jax.Array, r: jax.Array, sqn: jax.Array, j: jax.Array) -> jax.Array:
    """Squared distances of every normalised row to normalised row j (one N x D matrix-vector product)."""
    dot = jnp.matmul(x, x[j], precision=_HI) * (r * r[j])
    return jnp.maximum(sqn + sqn[j] - 2.0 * dot, 0.0)


@partial(jax.jit, static_argnames=("block",))
def min_sq_dist_to_rows(x: jax.Array, r: jax.Array, sqn: jax.Array, centres: jax.Array, block: int) -> jax.Array:
    """For each normalised row of x, the squared distance to its nearest row x[centres] (normalised).

    Row blocks of `block` are visited in a device loop; the last block is shifted back to end at N, so
    its overlap is recomputed identically and nothing is padded.
    """
    n = x.shape[0]
    block = min(block, n)
    c = x[centres] * r[centres][:, None]
    csq = sqn[centres]

    def body(b: int, md: jax.Array) -> jax.Array:
        s = jnp.minimum(b * block, n - block)
        xb = jax.lax.dynamic_slice_in_dim(x, s, block)
        rb = jax.lax.dynamic_slice_in_dim(r, s, block)
        sb = jax.lax.dynamic_slice_in_dim(sqn, s, block)
        d = sb[:, None] + csq[None, :] - 2.0 * jnp.matmul(xb, c.T, precision=_HI) * rb[:, None]
        return jax.lax.dynamic_update_slice_in_dim(md, jnp.maximum(d, 0.0).min(axis=1), s, 0)

    return jax.lax.fori_loop(0, -(-n // block), body, jnp.zeros((n,), jnp.float32))


@partial(jax.jit, static_argnames=("budget",))
def k_center_greedy(x: jax.Array, r: jax.Array, sqn: jax.Array, min_d: jax.Array, budget: int) -> jax.Array:
    """Greedy farthest-first picks: repeatedly take argmax of min_d and lower min_d by the new centre.

    Distances are between normalised rows x * r (see `unit_norm_factors`); `min_d` holds each point's
    squared distance to the current centres; -inf excludes a point.
    """

    def body(i: int, state: tuple) -> tuple:
        md, picks = state
        j = first_argmax(md)
        md = jnp.minimum(md, _dist_to_row(x, r, sqn, j)).at[j].set(-jnp.inf)
        return md, picks.at[i].set(j)

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
    x = device_features(pool["features"])
    r, sqn = unit_norm_factors(x)
    lab = np.flatnonzero(labeled)
    first: list[int] = []
    if lab.size == 0:
        unl = np.flatnonzero(~labeled)
        j0 = int(unl[int(jax.random.randint(as_key(rng), (), 0, unl.size))])
        first, lab = [j0], np.asarray([j0])
        labeled = labeled.copy()
        labeled[j0] = True
        budget -= 1
    md = jnp.zeros((n,), jnp.float32)
    for s in range(0, lab.size, block):  # labelled centres in chunks of `block` columns
        chunk = lab[s:s + block]
        size = min(block, 1 << (chunk.size - 1).bit_length())  # a few compiled shapes; repeats change no minimum
        chunk = jnp.asarray(np.concatenate([chunk, np.full(size - chunk.size, chunk[0])]), jnp.int32)
        mc = min_sq_dist_to_rows(x, r, sqn, chunk, block)
        md = mc if s == 0 else jnp.minimum(md, mc)
    md = jnp.where(jnp.asarray(labeled), -jnp.inf, md)
    picks = np.asarray(k_center_greedy(x, r, sqn, md, int(budget)), np.int64) if budget else np.zeros(0, np.int64)
    return np.concatenate([np.asarray(first, np.int64), picks])
