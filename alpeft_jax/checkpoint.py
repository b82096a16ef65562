"""What a run keeps in its workdir, and the order in which it is written, so a kill at any moment loses little.

    DIR/config.json        the run's config (a resume with another config is refused, naming the fields)
    DIR/al_state.json      the AL record: round, phase, labelled pool rows with their labels, pending selection,
                           per-round results. Written atomically (temp file + rename) after every phase change.
    DIR/ckpt/<round>/      Orbax: trainable tree, optimiser state, rng at the end of each round
    DIR/progress/<step>/   Orbax: the same inside a round every N steps (epoch and batch to resume from)
    DIR/results.jsonl      one row per finished round (rewritten from al_state.json, never appended twice)
    DIR/tensorboard/       TensorBoard events: per-epoch training metrics of each round, per-round results

DIR may be a local folder or a cloud URL (gs://...: every path goes through etils.epath). With several processes,
process 0 writes the JSON files and the events; all processes write the Orbax checkpoints together.

Resume order: read al_state.json; a round in phase "label" re-asks the oracle for the stored selection; a round in
phase "train" restores DIR/progress if it belongs to that round, else starts the round's training afresh; the
model used for selection in round r is DIR/ckpt/<r-1>. Labels are in al_state.json before training starts, so no
kill loses a label, and all randomness derives from (seed, round, epoch), so a resumed run equals an
uninterrupted one.
"""

from __future__ import annotations

import json
import os
import tempfile
from typing import Any

import jax
import numpy as np
import orbax.checkpoint as ocp
from etils import epath


def _as_path(path: str | os.PathLike) -> epath.Path:
    text = str(path)
    return epath.Path(text) if "://" in text else epath.Path(os.path.abspath(text))


def atomic_write(path: str | os.PathLike, text: str) -> None:
    """Write a text file so that readers see the old or the new content, never a torn one (local or cloud path)."""
    target = _as_path(path)
    if "://" in str(target):  # object stores: an object is replaced whole by its upload
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_text(text)
        return
    directory = str(target.parent)
    os.makedirs(directory, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=directory, prefix=".tmp-", suffix=target.name)
    try:
        with os.fdopen(fd, "w") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, str(target))
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def _jsonable(x: Any) -> Any:
    if isinstance(x, dict):
        return {str(k): _jsonable(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [_jsonable(v) for v in x]
    if isinstance(x, np.ndarray):
        return x.tolist()
    if isinstance(x, np.generic):
        return x.item()
    return x


def write_json(path: str | os.PathLike, obj: Any) -> None:
    """Atomically write `obj` as indented JSON."""
    atomic_write(path, json.dumps(_jsonable(obj), indent=1, sort_keys=True) + "\n")


def read_json(path: str | os.PathLike) -> Any:
    """Read a JSON file (local or cloud path), or None if it does not exist."""
    p = _as_path(path)
    if not p.exists():
        return None
    return json.loads(p.read_text())


def _to_savable(tree: Any) -> Any:
    """Typed PRNG keys -> their uint32 data, so Orbax's standard handler can store them."""
    return jax.tree.map(
        lambda x: jax.random.key_data(x) if jnp_is_key(x) else x, tree, is_leaf=jnp_is_key
    )


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
        self.directory = _as_path(directory)
        options = ocp.CheckpointManagerOptions(max_to_keep=max_to_keep, create=True, enable_async_checkpointing=False)
        self.manager = ocp.CheckpointManager(self.directory, options=options)

    def steps(self) -> list[int]:
        """Saved steps, ascending."""
        return sorted(self.manager.all_steps())

    def save(self, step: int, tree: Any, meta: dict[str, Any] | None = None) -> None:
        """Save and wait until the checkpoint is committed on disk."""
        args = ocp.args.Composite(
            tree=ocp.args.StandardSave(_to_savable(tree)), meta=ocp.args.JsonSave(_jsonable(meta or {}))
        )
        self.manager.save(step, args=args, force=True)
        self.manager.wait_until_finished()

    def restore(self, step: int, like: Any) -> tuple[Any, dict[str, Any]]:
        """Restore step `step` into the structure (and dtypes/shardings) of `like`."""
        abstract = jax.tree.map(ocp.utils.to_shape_dtype_struct, _to_savable(like))
        out = self.manager.restore(
            step, args=ocp.args.Composite(tree=ocp.args.StandardRestore(abstract), meta=ocp.args.JsonRestore())
        )
        return _from_savable(out["tree"], like), dict(out["meta"] or {})

    def clear(self) -> None:
        """Delete every saved step."""
        for step in self.steps():
            self.manager.delete(step)

    def close(self) -> None:
        """Release Orbax resources."""
        self.manager.close()
