"""Strategy device code that runs on one device or on pool rows sharded over a mesh's `data` axis.

Pool arrays arrive as NumPy arrays or as global `jax.Array`s sharded on their example axis over `data`
(`NamedSharding(mesh, P("data"))`; `mc_logits` [T,N,K] on axis 1). Device code is written per shard: it sees
its own rows (all rows when there is no mesh) and reaches the other shards only through the helpers below,
which reduce to the single-device computation when `axis` is None. `spmd` runs such a function under
`jax.shard_map` on the pool's mesh, or as is; results come back replicated, so every process of a multi-host
run ends with the same selected ids.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from functools import partial
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

AXIS = "data"
ROWS = P(AXIS)


def example_axis(key: str) -> int:
    """The axis of pool[key] that indexes examples (1 for mc_logits [T,N,K], else 0)."""
    return 1 if key == "mc_logits" else 0


def row_spec(key: str) -> P:
    """The PartitionSpec of pool[key] sharded on its example axis."""
    return P(None, AXIS) if key == "mc_logits" else ROWS


def _spread(arr: Any) -> bool:
    return isinstance(arr, jax.Array) and len(arr.sharding.device_set) > 1


def _mesh_of(key: str, arr: Any) -> Mesh | None:
    if not _spread(arr) or arr.is_fully_replicated:  # a replicated array is used like a host one
        return None
    sharding = arr.sharding
    ax = example_axis(key)
    spec = tuple(sharding.spec) if isinstance(sharding, NamedSharding) else ()
    spec = spec + (None,) * (arr.ndim - len(spec))
    want = tuple(AXIS if i == ax else None for i in range(arr.ndim))
    norm = tuple(s[0] if isinstance(s, tuple) and len(s) == 1 else s for s in spec)
    if not isinstance(sharding, NamedSharding) or norm != want:
        raise ValueError(
            f"pool[{key!r}] is spread over {len(sharding.device_set)} devices as {sharding}; selection "
            f"needs NamedSharding(mesh, P{want}) (examples split over the mesh axis {AXIS!r}) "
            "or a host array"
        )
    return sharding.mesh if isinstance(sharding.mesh, Mesh) else None


def pool_mesh(pool: Mapping[str, Any], keys: Any) -> Mesh | None:
    """The mesh sharding the pool arrays `keys` over `data`, or None when all are host or one-device arrays."""
    meshes = {k: m for k in sorted(keys) if (m := _mesh_of(k, pool[k])) is not None}
    if len(set(meshes.values())) > 1:
        raise ValueError(f"pool arrays {sorted(meshes)} live on different meshes; put them on one mesh")
    return next(iter(meshes.values()), None)


def to_host(x: Any) -> np.ndarray:
    """x as a NumPy array on this host: every shard, from every process of a multi-host run."""
    if isinstance(x, jax.Array) and not x.is_fully_addressable and not x.is_fully_replicated:
        from jax.experimental import multihost_utils

        return np.asarray(multihost_utils.process_allgather(x, tiled=True))
    return np.asarray(x)


def put(x: np.typing.ArrayLike, mesh: Mesh, spec: P = ROWS) -> jax.Array:
    """A host array (the same on every process) as a global array on `mesh` with `spec`."""
    x = np.asarray(x)
    x = x.astype(jax.dtypes.canonicalize_dtype(x.dtype), copy=False)
    return jax.make_array_from_callback(x.shape, NamedSharding(mesh, spec), lambda idx: x[idx])


def placed(
    pool: Mapping[str, Any], keys: Any, sharded: bool | None, default: bool
) -> tuple[dict[str, Any], Mesh | None]:
    """The pool arrays `keys` where the strategy runs, and the mesh (None: on one device, from host arrays).

    Sharded pools stay on their mesh when `sharded` (None: the strategy's measured `default`) is true and
    are gathered to host NumPy arrays otherwise; host and one-device arrays are returned as they are.
    """
    keys = sorted(keys)  # one order on every process: a multi-host gather is a collective
    mesh = pool_mesh(pool, keys)
    if mesh is None:  # a copy on every device of several is taken from the host, not computed on each
        return {k: to_host(pool[k]) if _spread(pool[k]) else pool[k] for k in keys}, None
    if not (default if sharded is None else sharded):
        return {k: to_host(pool[k]) for k in keys}, None
    out = {}
    for k in keys:
        arr = pool[k]
        out[k] = arr if isinstance(arr, jax.Array) and _mesh_of(k, arr) is not None else put(arr, mesh, row_spec(k))
    if any(np.shape(v)[example_axis(k)] % mesh.shape[AXIS] for k, v in out.items()):
        raise ValueError(f"pool rows do not split evenly over the {mesh.shape[AXIS]} devices of {AXIS!r}")
    return out, mesh


def spmd(fn: Callable[..., Any], mesh: Mesh | None, in_specs: tuple, out_specs: Any) -> Callable[..., Any]:
    """fn(..., axis=...) on the pool's shards under shard_map over `mesh`, or on whole arrays when mesh is None."""
    if mesh is None:
        return partial(fn, axis=None)
    return jax.shard_map(partial(fn, axis=AXIS), mesh=mesh, in_specs=in_specs, out_specs=out_specs, check_vma=False)


# ------------------------------------------------------------------------ per-shard helpers (axis None: identity)
def offset(n_local: int, axis: str | None) -> jax.Array:
    """Global index of this shard's first row."""
    return jnp.int32(0) if axis is None else jax.lax.axis_index(axis).astype(jnp.int32) * n_local


def gmax(v: jax.Array | float, axis: str | None) -> jax.Array:
    """Maximum over shards."""
    return jnp.asarray(v) if axis is None else jax.lax.pmax(v, axis)


def gmin(v: jax.Array, axis: str | None) -> jax.Array:
    """Minimum over shards."""
    return v if axis is None else jax.lax.pmin(v, axis)


def gsum(v: jax.Array, axis: str | None) -> jax.Array:
    """Sum over shards."""
    return v if axis is None else jax.lax.psum(v, axis)


def gather(v: jax.Array, axis: str | None) -> jax.Array:
    """Every shard's v concatenated along axis 0 in shard (= row) order."""
    return v if axis is None else jax.lax.all_gather(v, axis, tiled=True)


def first_argmax(v: jax.Array, axis: str | None, n_total: int | None = None) -> jax.Array:
    """Global index of the first maximum of the rows' values v (no NaN handling), the same on every shard."""
    n = v.shape[0]
    big = jnp.int32(np.iinfo(np.int32).max if n_total is None else n_total)
    m = gmax(jnp.max(v), axis)
    local = jnp.min(jnp.where(v == m, jnp.arange(n, dtype=jnp.int32), big))
    return gmin(jnp.where(local < big, local + offset(n, axis), big), axis)


def take(x: jax.Array, idx: jax.Array, axis: str | None) -> jax.Array:
    """x[idx] for global row indices idx (replicated), on every shard; out-of-range indices give zeros.

    Each shard contributes the rows it holds and a sum over shards assembles them (exact: one term is non-zero).
    """
    n = x.shape[0]
    loc = idx - offset(n, axis)
    mine = (loc >= 0) & (loc < n)
    rows = x[jnp.clip(loc, 0, n - 1)]
    mask = mine.reshape(mine.shape + (1,) * (rows.ndim - mine.ndim))
    return gsum(jnp.where(mask, rows, jnp.zeros((), rows.dtype)), axis)


def top_k(scores: jax.Array, k: int, axis: str | None) -> jax.Array:
    """Global indices of the k largest scores over all shards, best first, lower index first on ties."""
    kk = min(k, scores.shape[0])
    v, i = jax.lax.top_k(scores, kk)
    if axis is None:
        return i
    v, i = gather(v, axis), gather(i + offset(scores.shape[0], axis), axis)  # shard order = index order
    return i[jax.lax.top_k(v, k)[1]]


__all__ = [
    "AXIS",
    "pool_mesh",
    "placed",
    "put",
    "to_host",
    "spmd",
    "offset",
    "gmax",
    "gmin",
    "gsum",
    "gather",
    "first_argmax",
    "take",
    "top_k",
]
