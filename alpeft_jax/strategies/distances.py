"""Blocked pairwise squared-Euclidean kernels that never build an N x N matrix.

Rows are processed in fixed-size blocks (one compilation per block shape) and the other side is scanned in
fixed-size column blocks inside `jit`, so peak memory is O(block^2 + N) on top of the inputs.
"""

from __future__ import annotations

from collections.abc import Callable
from functools import partial
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

DEFAULT_BLOCK = 4096


def sq_dist(a: jax.Array, b: jax.Array) -> jax.Array:
    """Squared Euclidean distances between the rows of a [M,D] and b [C,D], clamped at 0."""
    d = (
        jnp.sum(a * a, axis=-1)[:, None]
        + jnp.sum(b * b, axis=-1)[None, :]
        - 2.0 * jnp.matmul(a, b.T, precision=jax.lax.Precision.HIGHEST)
    )
    return jnp.maximum(d, 0.0)


def inverse_cdf(weights: jax.Array, u: jax.Array) -> jax.Array:
    """Index drawn with probability proportional to non-negative `weights`, given a uniform u in [0, 1)."""
    cdf = jnp.cumsum(weights)
    j = jnp.searchsorted(cdf, u * cdf[-1], side="right")
    return jnp.minimum(j, weights.shape[0] - 1)


def first_argmax(v: jax.Array) -> jax.Array:
    """Index of the first maximum of a 1-D array (as jnp.argmax, via two plain reductions; no NaN handling)."""
    return jnp.min(jnp.where(v == jnp.max(v), jnp.arange(v.shape[0], dtype=jnp.int32), v.shape[0]))


def inverse_cdf_blocked(weights: jax.Array, u: jax.Array, block: int = 2048) -> jax.Array:
    """As `inverse_cdf`, but one cumulative sum over block totals and one inside the chosen block.

    Never returns an index of zero weight unless all weights are zero.
    """
    n = weights.shape[0]
    if n <= block:
        return inverse_cdf(weights, u)
    wp = _pad_to(weights, block)
    wb = wp.reshape(-1, block)
    ends = jnp.cumsum(wb.sum(axis=1))
    t = u * ends[-1]
    b = jnp.minimum(jnp.searchsorted(ends, t, side="right"), wb.shape[0] - 1)
    row = jax.lax.dynamic_index_in_dim(wb, b, keepdims=False)
    start = jnp.where(b > 0, ends[jnp.maximum(b - 1, 0)], 0.0)
    j = jnp.searchsorted(start + jnp.cumsum(row), t, side="right")
    last_pos = jnp.max(jnp.where(row > 0, jnp.arange(block), 0))
    j = jnp.where(j >= block, last_pos, j)  # rounding put t past this block's end: take its last positive entry
    return jnp.minimum(b * block + j, n - 1)


def _pad_to(x: jax.Array, multiple: int, value: float | int = 0) -> jax.Array:
    n = x.shape[0]
    pad = (-n) % multiple
    if pad == 0:
        return x
    widths = [(0, pad)] + [(0, 0)] * (x.ndim - 1)
    return jnp.pad(x, widths, constant_values=value)


def col_blocks(y: jax.Array, block: int, fill: float | int = 0) -> tuple[jax.Array, jax.Array]:
    """y padded and reshaped to [n_blocks, block, ...] plus a validity mask [n_blocks, block]."""
    y = jnp.asarray(y)
    n = y.shape[0]
    block = max(1, min(block, n))
    yp = _pad_to(y, block, fill)
    valid = jnp.arange(yp.shape[0]) < n
    return yp.reshape(-1, block, *y.shape[1:]), valid.reshape(-1, block)


def map_row_blocks(
    fn: Callable[..., Any], arrays: tuple[jax.Array, ...], block: int = DEFAULT_BLOCK, n: int | None = None
) -> Any:
    """Apply `fn` (jitted, per-row outputs) to fixed-size row blocks of `arrays` and concatenate."""
    n = arrays[0].shape[0] if n is None else n
    block = max(1, min(block, n))
    padded = [_pad_to(jnp.asarray(a), block) for a in arrays]
    outs = []
    for s in range(0, n, block):
        outs.append(fn(*[p[s : s + block] for p in padded]))
    out = jax.tree.map(lambda *xs: jnp.concatenate(xs, axis=0)[:n], *outs)
    return out


@jax.jit
def _min_kernel(xb: jax.Array, yb: jax.Array, yvalid: jax.Array) -> tuple[jax.Array, jax.Array]:
    cb = yb.shape[1]

    def body(carry: tuple, inp: tuple) -> tuple:
        best, arg, off = carry
        yc, vc = inp
        d = jnp.where(vc[None, :], sq_dist(xb, yc), jnp.inf)
        j = jnp.argmin(d, axis=1)
        m = jnp.take_along_axis(d, j[:, None], axis=1)[:, 0]
        upd = m < best
        return (jnp.where(upd, m, best), jnp.where(upd, j + off, arg), off + cb), None

    init = (jnp.full((xb.shape[0],), jnp.inf, jnp.float32), jnp.zeros((xb.shape[0],), jnp.int32), 0)
    (best, arg, _), _ = jax.lax.scan(body, init, (yb, yvalid))
    return best, arg


def min_sq_dist(x: jax.Array, y: jax.Array, block: int = DEFAULT_BLOCK) -> tuple[jax.Array, jax.Array]:
    """For each row of x, the squared distance to its nearest row of y and that row's index."""
    x = jnp.asarray(x, jnp.float32)
    if y.shape[0] == 0:
        return jnp.full((x.shape[0],), jnp.inf, jnp.float32), jnp.zeros((x.shape[0],), jnp.int32)
    yb, yv = col_blocks(jnp.asarray(y, jnp.float32), block)
    return map_row_blocks(lambda xb: _min_kernel(xb, yb, yv), (x,), block)


def fold_block_pairs(
    x: jax.Array,
    side: Any,
    block: int,
    init: jax.Array,
    fold: Callable[[jax.Array, Any, Any], tuple[jax.Array, jax.Array]],
    combine: Callable[[jax.Array, jax.Array], jax.Array],
) -> jax.Array:
    """Fold every block pair (I, J), I <= J, of x's rows into a per-row accumulator, in one device loop.

    x [nb * block, D] and the per-row pytree `side` are already padded to whole blocks. For each pair,
    fold(d, side_I, side_J) maps the squared distances d [block, block] to contributions for the rows of I
    and of J, merged into `init` with `combine`; on the diagonal (I == J) only the first is used. So each
    distance block serves both sides and peak memory is O(N + block^2): no N x N matrix, no edge list.
    """
    nb = x.shape[0] // block
    sqn = jnp.sum(x * x, axis=-1)
    bi, bj = np.triu_indices(nb)
    pairs = jnp.asarray(np.stack([bi, bj], 1), jnp.int32)
    rows_of = lambda a, s: jax.tree.map(lambda t: jax.lax.dynamic_slice_in_dim(t, s, block), a)

    def body(p: int, acc: jax.Array) -> jax.Array:
        i, j = pairs[p, 0] * block, pairs[p, 1] * block
        xi, xj, si, sj = rows_of(x, i), rows_of(x, j), rows_of(sqn, i), rows_of(sqn, j)
        d = si[:, None] + sj[None, :] - 2.0 * jnp.matmul(xi, xj.T, precision=jax.lax.Precision.HIGHEST)
        to_i, to_j = fold(d, rows_of(side, i), rows_of(side, j))
        acc = jax.lax.dynamic_update_slice_in_dim(acc, combine(rows_of(acc, i), to_i), i, 0)
        aj = rows_of(acc, j)
        return jax.lax.dynamic_update_slice_in_dim(acc, jnp.where(i == j, aj, combine(aj, to_j)), j, 0)

    return jax.lax.fori_loop(0, pairs.shape[0], body, init)


@partial(jax.jit, static_argnames=("block",))
def _other_label_sym(x: jax.Array, labels: jax.Array, block: int) -> jax.Array:
    n = x.shape[0]
    xp = _pad_to(x, block)
    side = (_pad_to(labels, block, -1), jnp.arange(xp.shape[0]) < n)

    def fold(d: jax.Array, side_i: tuple, side_j: tuple) -> tuple[jax.Array, jax.Array]:
        (li, vi), (lj, vj) = side_i, side_j
        d = jnp.where((li[:, None] != lj[None, :]) & vi[:, None] & vj[None, :], jnp.maximum(d, 0.0), jnp.inf)
        return d.min(axis=1), d.min(axis=0)

    init = jnp.full((xp.shape[0],), jnp.inf, jnp.float32)
    return fold_block_pairs(xp, side, block, init, fold, jnp.minimum)[:n]


@jax.jit
def _other_label_kernel(xb: jax.Array, lb: jax.Array, yb: jax.Array, lyb: jax.Array, yvalid: jax.Array) -> jax.Array:
    def body(best: jax.Array, inp: tuple) -> tuple:
        yc, lc, vc = inp
        d = jnp.where(vc[None, :] & (lc[None, :] != lb[:, None]), sq_dist(xb, yc), jnp.inf)
        return jnp.minimum(best, d.min(axis=1)), None

    best, _ = jax.lax.scan(body, jnp.full((xb.shape[0],), jnp.inf, jnp.float32), (yb, lyb, yvalid))
    return best


def nearest_other_label_sq_dist(
    x: jax.Array, labels: jax.Array | np.ndarray, block: int = DEFAULT_BLOCK, rows: np.ndarray | None = None
) -> jax.Array:
    """For each row (or each of `rows`), the squared distance to the nearest row with another label (inf if none).

    All rows: one device loop over block pairs (I, J) with I <= J; each distance block serves both sides.
    A subset of rows: each row block scans every column block, so the cost is len(rows) x N pairs.
    """
    x = jnp.asarray(x, jnp.float32)
    labels = jnp.asarray(labels, jnp.int32)
    blk = max(1, min(block, 2048, x.shape[0]))
    if rows is None:
        return _other_label_sym(x, labels, blk)
    idx = jnp.asarray(rows, jnp.int32)
    yb, yv = col_blocks(x, blk)
    lyb, _ = col_blocks(labels, blk, -1)
    return map_row_blocks(lambda xb, lb: _other_label_kernel(xb, lb, yb, lyb, yv), (x[idx], labels[idx]), blk)


@partial(jax.jit, static_argnames=("k",))
def _knn_kernel(xb: jax.Array, yb: jax.Array, yvalid: jax.Array, k: int) -> jax.Array:
    def body(best: jax.Array, inp: tuple) -> tuple:
        yc, vc = inp
        d = jnp.where(vc[None, :], sq_dist(xb, yc), jnp.inf)
        both = jnp.concatenate([best, d], axis=1)
        neg, _ = jax.lax.top_k(-both, k)
        return -neg, None

    init = jnp.full((xb.shape[0], k), jnp.inf, jnp.float32)
    best, _ = jax.lax.scan(body, init, (yb, yvalid))
    return best


def knn_sq_dist(x: jax.Array, k: int, block: int = DEFAULT_BLOCK, k_max: int | None = None) -> jax.Array:
    """Squared distances [N,k] from each row of x to its k nearest other rows, ascending (self dropped).

    Rows are padded to a power-of-two bucket (masked out) and the kernel keeps `k_max` (>= k) neighbours,
    so many differently sized inputs and k share a few compilations.
    """
    x = jnp.asarray(x, jnp.float32)
    n = x.shape[0]
    if not 1 <= k <= n - 1:
        raise ValueError(f"k={k} nearest neighbours need 1 <= k <= n-1 with n={n}")
    n_pad = max(64, 1 << (n - 1).bit_length())
    blk = min(block, n_pad)
    n_pad = -(-n_pad // blk) * blk
    xp = _pad_to(x, n_pad)
    valid = (jnp.arange(n_pad) < n).reshape(-1, blk)
    yb = xp.reshape(-1, blk, x.shape[1])
    kk = max(k, k_max or k)
    # k+1 smallest include the point itself (distance 0); drop the smallest one.
    d = map_row_blocks(lambda xb: _knn_kernel(xb, yb, valid, kk + 1), (xp,), blk)
    return d[:n, 1 : k + 1]


@jax.jit
def _ball_count_kernel(xb: jax.Array, yb: jax.Array, yvalid: jax.Array, r2: jax.Array) -> jax.Array:
    def body(count: jax.Array, inp: tuple) -> tuple:
        yc, vc = inp
        return count + jnp.sum((sq_dist(xb, yc) < r2) & vc[None, :], axis=1, dtype=jnp.int32), None

    count, _ = jax.lax.scan(body, jnp.zeros((xb.shape[0],), jnp.int32), (yb, yvalid))
    return count


def count_within(x: jax.Array, y: jax.Array, radius_sq: float | jax.Array, block: int = DEFAULT_BLOCK) -> jax.Array:
    """For each row of x, how many rows of y lie at squared distance < radius_sq (len(x) x len(y) pairs)."""
    x = jnp.asarray(x, jnp.float32)
    if y.shape[0] == 0:
        return jnp.zeros((x.shape[0],), jnp.int32)
    yb, yv = col_blocks(jnp.asarray(y, jnp.float32), block)
    r2 = jnp.asarray(radius_sq, jnp.float32)
    return map_row_blocks(lambda xb: _ball_count_kernel(xb, yb, yv, r2), (x,), block)


@jax.jit
def _ball_mask(xb: jax.Array, yc: jax.Array, r2: jax.Array, n_rows: jax.Array, n_cols: jax.Array) -> jax.Array:
    m = sq_dist(xb, yc) < r2
    return m & (jnp.arange(xb.shape[0]) < n_rows)[:, None] & (jnp.arange(yc.shape[0]) < n_cols)[None, :]


@jax.jit
def _ball_count(xb: jax.Array, yc: jax.Array, r2: jax.Array, n_rows: jax.Array, n_cols: jax.Array) -> jax.Array:
    m = sq_dist(xb, yc) < r2
    m &= (jnp.arange(xb.shape[0]) < n_rows)[:, None] & (jnp.arange(yc.shape[0]) < n_cols)[None, :]
    return m.sum()


@partial(jax.jit, static_argnames=("size",))
def _ball_edges(
    xb: jax.Array, yc: jax.Array, r2: jax.Array, n_rows: jax.Array, n_cols: jax.Array, size: int
) -> tuple[jax.Array, jax.Array]:
    m = sq_dist(xb, yc) < r2
    m &= (jnp.arange(xb.shape[0]) < n_rows)[:, None] & (jnp.arange(yc.shape[0]) < n_cols)[None, :]
    i, j = jnp.nonzero(m, size=size, fill_value=0)
    return i, j


def radius_graph(
    x: jax.Array, radius: float, block: int = DEFAULT_BLOCK, device_compaction: bool | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """CSR adjacency (indptr, indices) of pairs with Euclidean distance < radius, self included.

    On an accelerator each block pair is counted, then compacted on device to a power-of-two bucket, so only
    the edges travel to the host; on CPU the block mask is compacted with NumPy.
    """
    x = jnp.asarray(x, jnp.float32)
    n = x.shape[0]
    block = max(1, min(block, n))
    xp = _pad_to(x, block)
    r2 = jnp.float32(radius) ** 2
    on_cpu = jax.default_backend() == "cpu" if device_compaction is None else not device_compaction
    indptr = np.zeros(n + 1, np.int64)
    parts = []
    for s in range(0, n, block):
        xb = xp[s : s + block]
        rows: list[np.ndarray] = []
        cols: list[np.ndarray] = []
        for t in range(0, n, block):
            yc = xp[t : t + block]
            nr, nc = jnp.int32(min(block, n - s)), jnp.int32(min(block, n - t))
            if on_cpu:  # host memory is device memory: np.nonzero on the mask is the cheapest compaction
                i, j = np.nonzero(np.asarray(_ball_mask(xb, yc, r2, nr, nc)))
            else:
                cnt = int(_ball_count(xb, yc, r2, nr, nc))
                if cnt == 0:
                    continue
                i, j = (np.asarray(a)[:cnt] for a in _ball_edges(xb, yc, r2, nr, nc, 1 << (cnt - 1).bit_length()))
            rows.append(i)
            cols.append(j.astype(np.int64) + t)
        if not rows:
            parts.append(np.zeros(0, np.int64))
            continue
        r = np.concatenate(rows)
        order = np.argsort(r, kind="stable")  # row-major within each column block, blocks in order
        parts.append(np.concatenate(cols)[order])
        counts = np.bincount(r, minlength=min(block, n - s))
        indptr[s + 1 : s + 1 + counts.shape[0]] = counts
    np.cumsum(indptr, out=indptr)
    return indptr, np.concatenate(parts)
