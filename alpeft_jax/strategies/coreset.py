"""Core-set (Sener & Savarese 2018): k-centre greedy on L2-normalised image features (METHOD 3.5).

The features stay raw on the device; the normalised geometry enters through per-row inverse norms, so no
normalised copy is stored. The greedy is lazy (see `k_center_greedy`): most picks touch only a few rows
instead of streaming the whole N x D matrix, with the same sequence as the eager greedy.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
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


def _min_sq_dist(x: jax.Array, r: jax.Array, sqn: jax.Array, c: jax.Array, csq: jax.Array, block: int) -> jax.Array:
    """Per row of x (normalised by r), the squared distance to the nearest normalised centre row of c [C,D].

    Row blocks of `block` are visited in a device loop; the last block is shifted back to end at N, so
    its overlap is recomputed identically and nothing is padded. A centre with csq = +inf is ignored.
    """
    n = x.shape[0]
    block = min(block, n)

    def body(b: int, md: jax.Array) -> jax.Array:
        s = jnp.minimum(b * block, n - block)
        xb = jax.lax.dynamic_slice_in_dim(x, s, block)
        rb = jax.lax.dynamic_slice_in_dim(r, s, block)
        sb = jax.lax.dynamic_slice_in_dim(sqn, s, block)
        d = sb[:, None] + csq[None, :] - 2.0 * jnp.matmul(xb, c.T, precision=_HI) * rb[:, None]
        return jax.lax.dynamic_update_slice_in_dim(md, jnp.maximum(d, 0.0).min(axis=1), s, 0)

    return jax.lax.fori_loop(0, -(-n // block), body, jnp.zeros((n,), jnp.float32))


@partial(jax.jit, static_argnames=("block",))
def min_sq_dist_to_rows(x: jax.Array, r: jax.Array, sqn: jax.Array, centres: jax.Array, block: int) -> jax.Array:
    """For each normalised row of x, the squared distance to its nearest row x[centres] (normalised)."""
    return _min_sq_dist(x, r, sqn, x[centres] * r[centres][:, None], sqn[centres], block)


@partial(jax.jit, static_argnames=("budget", "top", "chunk", "block", "tries"))
def k_center_greedy(x: jax.Array, r: jax.Array, sqn: jax.Array, min_d: jax.Array, budget: int, top: int = 16,
                    chunk: int = 16, block: int = DEFAULT_BLOCK, tries: int = 4) -> jax.Array:
    """Greedy farthest-first picks: repeatedly take the argmax of min_d and lower min_d by the new centre.

    Distances are between normalised rows x * r (see `unit_norm_factors`); `min_d` holds each point's
    squared distance to the current centres; -inf excludes a point.

    Lazily, as in accelerated k-centre: min_d is kept as an upper bound that is exact for every centre
    below `applied` (and, per row, below `seen`). Each pick refreshes only the `top` largest bounds against
    the centres those rows have not seen; when the best refreshed value beats every bound left outside, it
    is the exact argmax and the N x D matrix is not read at all. After `tries` refreshes without that
    certificate, one blocked pass applies the pending centres to every row, `chunk` centres at a time.
    The sequence is that of the eager greedy.
    """
    n, dim = x.shape
    top = min(top, n)
    wide = 8 * chunk  # centres per step of a refresh (few rows: wide steps, little loop overhead)
    cap = -(-budget // wide) * wide  # centre buffer, a whole number of steps of either width

    def window(cen: jax.Array, csq: jax.Array, s: jax.Array, hi: jax.Array, size: int) -> tuple[jax.Array, jax.Array]:
        """Centres s..s+size-1 (those at or past hi masked by csq = inf), as a fixed-size slice of the buffer."""
        start = jnp.minimum(s, cap - size)  # the last window is shifted back; its overlap was already applied
        ids = start + jnp.arange(size)
        q = jnp.where((ids >= s) & (ids < hi), jax.lax.dynamic_slice_in_dim(csq, start, size), jnp.inf)
        return jax.lax.dynamic_slice_in_dim(cen, start, size), q

    def apply(md: jax.Array, lo: jax.Array, hi: jax.Array, cen: jax.Array, csq: jax.Array,
              dist: Callable[[jax.Array, jax.Array], jax.Array], size: int) -> jax.Array:
        """md lowered by centres lo..hi-1, `size` at a time; dist(c, q) gives the rows' distances to a window."""

        def body(st: tuple) -> tuple:
            m, s = st
            return jnp.minimum(m, dist(*window(cen, csq, s, hi, size))), s + size

        return jax.lax.while_loop(lambda st: st[1] < hi, body, (md, lo))[0]

    def pick(i: int, state: tuple) -> tuple:
        md, picks, cen, csq, seen, applied = state

        def lazy(st: tuple) -> tuple:
            md, seen, tries_left, _, _ = st
            bound, idx = jax.lax.top_k(md, top)
            xs, rs, ss = x[idx], r[idx], sqn[idx]

            def dist(c: jax.Array, q: jax.Array) -> jax.Array:
                d = ss[:, None] + q[None, :] - 2.0 * jnp.matmul(xs, c.T, precision=_HI) * rs[:, None]
                return jnp.maximum(d, 0.0).min(axis=1)

            # rows of idx already hold every centre below max(seen, applied); start from the stalest of them
            new = apply(md[idx], jnp.min(jnp.maximum(seen[idx], applied)), i, cen, csq, dist, wide)
            md, seen = md.at[idx].set(new), seen.at[idx].set(i)
            best = jnp.max(new)
            j = jnp.min(jnp.where(new == best, idx, n))
            # jnp.min, not bound[-1]: slicing the values makes XLA keep a full sort instead of its top-k call.
            return md, seen, tries_left - 1, (best > jnp.min(bound)) | (top == n), j

        # after a pick that needed the full pass, try once only: the data may be one where refreshes rarely certify
        budget_tries = jnp.where(applied == i - 1, 1, tries)
        md, seen, _, certified, j = jax.lax.while_loop(
            lambda st: (~st[3]) & (st[2] > 0), lazy, (md, seen, budget_tries, jnp.bool_(False), jnp.int32(0)))
        md = apply(md, jnp.where(certified, i, applied), i, cen, csq,  # the full pass: zero trips when certified
                   lambda c, q: _min_sq_dist(x, r, sqn, c, q, block), chunk)
        j = jax.lax.cond(certified, lambda m: j, first_argmax, md)
        applied = jnp.where(certified, applied, i)
        return (md.at[j].set(-jnp.inf), picks.at[i].set(j), cen.at[i].set(x[j] * r[j]), csq.at[i].set(sqn[j]),
                seen, applied)

    init = (min_d, jnp.zeros((budget,), jnp.int32), jnp.zeros((cap, dim), jnp.float32),
            jnp.full((cap,), jnp.inf, jnp.float32), jnp.zeros((n,), jnp.int32), jnp.int32(0))
    return jax.lax.fori_loop(0, budget, pick, init)[1]


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
    picks = (np.asarray(k_center_greedy(x, r, sqn, md, int(budget), block=block), np.int64) if budget
             else np.zeros(0, np.int64))
    return np.concatenate([np.asarray(first, np.int64), picks])
