"""Orbax checkpoints of a run's trees (the round's end in DIR/ckpt, resume points in DIR/progress).

The workdir's layout, its JSON files and the resume order are described in `alpeft_jax.workdir`;
`atomic_write`, `read_json` and `write_json` are re-exported from there.
"""

from __future__ import annotations

import os
from typing import Any

import jax
import orbax.checkpoint as ocp

from alpeft_jax.workdir import as_path, atomic_write, jsonable, read_json, write_json

__all__ = ["TreeStore", "atomic_write", "jnp_is_key", "read_json", "write_json"]


def _to_savable(tree: Any) -> Any:
    """Typed PRNG keys -> their uint32 data, so Orbax's standard handler can store them."""
    return jax.tree.map(lambda x: jax.random.key_data(x) if jnp_is_key(x) else x, tree, is_leaf=jnp_is_key)


def jnp_is_key(x: Any) -> bool:
    """Whether x is a typed JAX PRNG key array."""
    return isinstance(x, jax.Array) and jax.dtypes.issubdtype(x.dtype, jax.dtypes.prng_key)


def _from_savable(tree: Any, like: Any) -> Any:
    return jax.tree.map(
        lambda x, ref: jax.random.wrap_key_data(x) if jnp_is_key(ref) else x, tree, like, is_leaf=jnp_is_key
    )


class TreeStore:
    """Orbax checkpoints of one pytree (plus JSON metadata) indexed by an integer step.

    Multi-host: every process calls `save` / `restore` with the same global arrays; Orbax writes each shard
    once and commits the step atomically.
    """

    def __init__(self, directory: str | os.PathLike, max_to_keep: int | None = None) -> None:
        self.directory = as_path(directory)
        options = ocp.CheckpointManagerOptions(max_to_keep=max_to_keep, create=True, enable_async_checkpointing=False)
        self.manager = ocp.CheckpointManager(self.directory, options=options)

    def steps(self) -> list[int]:
        """Saved steps, ascending."""
        return sorted(self.manager.all_steps())

    def save(self, step: int, tree: Any, meta: dict[str, Any] | None = None) -> None:
        """Save and wait until the checkpoint is committed on disk."""
        args = ocp.args.Composite(
            tree=ocp.args.StandardSave(_to_savable(tree)), meta=ocp.args.JsonSave(jsonable(meta or {}))
        )
        self.manager.save(step, args=args, force=True)
        self.manager.wait_until_finished()

    def restore(self, step: int, like: Any = None) -> tuple[Any, dict[str, Any]]:
        """Restore step `step` into the structure (and dtypes/shardings) of `like`; as saved when `like` is None
        (PRNG keys then come back as their uint32 data)."""
        abstract = None if like is None else jax.tree.map(ocp.utils.to_shape_dtype_struct, _to_savable(like))
        out = self.manager.restore(
            step, args=ocp.args.Composite(tree=ocp.args.StandardRestore(abstract), meta=ocp.args.JsonRestore())
        )
        tree = out["tree"] if like is None else _from_savable(out["tree"], like)
        return tree, dict(out["meta"] or {})

    def clear(self) -> None:
        """Delete every saved step."""
        for step in self.steps():
            self.manager.delete(step)

    def close(self) -> None:
        """Release Orbax resources."""
        self.manager.close()
