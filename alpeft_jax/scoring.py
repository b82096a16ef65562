"""Pool scoring: stream the pool in fixed-size padded chunks through the adapted model, sharded over devices.

One mesh with a ``data`` axis spans every device (of every process). Each chunk's batch dimension is split
over it; the frozen trees are replicated. Multi-host: each process scores the chunks it owns and the rows are
gathered in example-id order, so every host sees the same pool arrays and selects the same examples. Padding
rows never leave this module.

The frozen prefix (`AdaptedModel.prefix`: image features when the image tower is frozen, the hidden state
below the first adapted block otherwise) is computed once per pool by `FeatureCache` and reused every round,
in memory or, past a memory budget, in a `.npy` file on disk.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterable, Iterator
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from alpeft_jax.models.adapted import AdaptedModel
from alpeft_jax.strategies.learning_loss import LossPredictionHead

Batch = dict[str, Any]


def make_mesh(devices: list[Any] | None = None) -> Mesh:
    """A 1-D mesh with axis `data` over this process's devices (or the given ones)."""
    devices = jax.local_devices() if devices is None else devices
    return Mesh(np.asarray(devices), ("data",))


def _round_up(n: int, m: int) -> int:
    return -(-n // m) * m


class Sharder:
    """Places host batches on the mesh: batch axis split over `data`, the rest replicated."""

    def __init__(self, mesh: Mesh | None = None) -> None:
        self.mesh = make_mesh() if mesh is None else mesh
        self.size = self.mesh.devices.size
        self.batch = NamedSharding(self.mesh, PartitionSpec("data"))
        self.replicated = NamedSharding(self.mesh, PartitionSpec())

    def chunk_size(self, requested: int) -> int:
        """The smallest multiple of the device count at or above `requested`."""
        return _round_up(max(1, requested), self.size)

    def put(self, x: np.ndarray) -> jax.Array:
        """A host array with the batch axis sharded over the mesh."""
        return jax.device_put(x, self.batch)

    def replicate(self, tree: Any) -> Any:
        """A tree replicated on every device of the mesh."""
        return jax.device_put(tree, self.replicated)


def process_share(n: int, process_index: int | None = None, process_count: int | None = None) -> np.ndarray:
    """The contiguous block of pool positions this process scores."""
    p = jax.process_index() if process_index is None else process_index
    c = jax.process_count() if process_count is None else process_count
    bounds = np.linspace(0, n, c + 1).astype(np.int64)
    return np.arange(bounds[p], bounds[p + 1], dtype=np.int64)


def _inputs(batch: Batch) -> np.ndarray:
    return batch["inputs"] if "inputs" in batch else batch["image"]


def _rows_of(batches: Iterable[Batch], positions: np.ndarray) -> Iterator[tuple[np.ndarray, Batch]]:
    """Pair each padded batch with the pool positions of its rows (-1 for padding)."""
    offset = 0
    for batch in batches:
        mask = np.asarray(batch["_mask"], bool)
        pos = np.full(mask.shape[0], -1, np.int64)
        k = int(mask.sum())
        pos[mask] = positions[offset : offset + k]
        offset += k
        yield pos, batch
    if offset != len(positions):
        raise RuntimeError(f"scoring got {offset} rows for {len(positions)} positions; the batches do not match.")


def gather_rows(n: int, pieces: Iterable[tuple[np.ndarray, dict[str, np.ndarray]]]) -> dict[str, np.ndarray]:
    """Assemble per-chunk outputs (row ids, row-first arrays) into arrays of n rows in id order, across processes."""
    ids_all, out = [], {}
    for ids, arrays in pieces:
        keep = ids >= 0
        ids_all.append(ids[keep])
        for k, v in arrays.items():
            out.setdefault(k, []).append(np.asarray(v)[keep])
    ids = np.concatenate(ids_all) if ids_all else np.zeros((0,), np.int64)
    cat = {k: np.concatenate(v) for k, v in out.items()}
    if jax.process_count() > 1:
        from jax.experimental import multihost_utils

        ids, cat = _allgather(multihost_utils, ids, cat)
    order = np.argsort(ids, kind="stable")
    if len(ids) != n or not np.array_equal(ids[order], np.arange(n)):
        raise RuntimeError(f"pool scoring covered {len(np.unique(ids))} of {n} rows; chunks were lost.")
    return {k: v[order] for k, v in cat.items()}


def _allgather(mhu: Any, ids: np.ndarray, arrays: dict[str, np.ndarray]) -> tuple[np.ndarray, dict[str, np.ndarray]]:
    # Processes may own different row counts: pad to the maximum, gather, then drop the padding.
    counts = np.asarray(mhu.process_allgather(np.asarray([len(ids)])))
    m = int(counts.max())
    pad = lambda a: np.concatenate([a, np.zeros((m - a.shape[0], *a.shape[1:]), a.dtype)])
    g_ids = np.asarray(mhu.process_allgather(pad(ids)))
    g = {k: np.asarray(mhu.process_allgather(pad(v))) for k, v in arrays.items()}
    keep = [slice(0, int(c)) for c in counts.reshape(-1)]
    ids = np.concatenate([g_ids[p][keep[p]] for p in range(len(keep))])
    return ids, {k: np.concatenate([v[p][keep[p]] for p in range(len(keep))]) for k, v in g.items()}


class FeatureCache:
    """The frozen-prefix output of every pool example, computed once (in memory, or a .npy memmap on disk)."""

    def __init__(self, array: np.ndarray, kind: str) -> None:
        self.array = array
        self.kind = kind

    def __len__(self) -> int:
        return self.array.shape[0]

    @classmethod
    def build(
        cls,
        model: AdaptedModel,
        batches: Iterable[Batch],
        positions: np.ndarray,
        n: int,
        *,
        sharder: Sharder | None = None,
        memory_budget_bytes: int = 4 << 30,
        path: str | None = None,
        progress: Callable[[int, int], None] | None = None,
    ) -> FeatureCache:
        """Run `model.prefix` over the pool; `batches` hold the preprocessed images of `positions`, in order.

        With `path`, a complete cache already on disk is reused, and one larger than the memory budget is
        written there (as a .npy memmap) instead of held in memory.
        """
        if path and os.path.exists(path):
            arr = np.load(path, mmap_mode="r")
            if arr.shape[0] == n:
                return cls(arr, model.input_kind)
        sharder = sharder or Sharder()
        params = sharder.replicate(model.backbone.params)
        fn = jax.jit(lambda p, x: _prefix_with_params(model, p, x))
        pieces, out, done = [], None, 0
        for pos, batch in _rows_of(batches, positions):
            y = np.asarray(fn(params, sharder.put(_inputs(batch))))
            if jax.process_count() > 1:
                pieces.append((pos, {"x": y}))
                continue
            if out is None:
                nbytes = n * int(np.prod(y.shape[1:])) * y.dtype.itemsize
                if nbytes > memory_budget_bytes and path:
                    os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
                    out = np.lib.format.open_memmap(path + ".tmp", mode="w+", dtype=y.dtype, shape=(n, *y.shape[1:]))
                else:
                    out = np.empty((n, *y.shape[1:]), y.dtype)
            keep = pos >= 0
            out[pos[keep]] = y[keep]
            done += int(keep.sum())
            if progress:
                progress(done, len(positions))
        if pieces:
            out = gather_rows(n, pieces)["x"]
        if out is None:
            raise ValueError("the pool is empty: nothing to cache.")
        if isinstance(out, np.memmap):
            out.flush()
            del out
            os.replace(path + ".tmp", path)
            out = np.load(path, mmap_mode="r")
        elif path:
            os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
            np.save(path + ".tmp.npy", out)
            os.replace(path + ".tmp.npy", path)
        return cls(out, model.input_kind)

    def batches(self, positions: np.ndarray, batch_size: int, labels: np.ndarray | None = None) -> Iterator[Batch]:
        """Fixed-size padded batches {inputs, label, _mask} of the cached rows at `positions`, in order."""
        positions = np.asarray(positions, np.int64)
        for start in range(0, len(positions), batch_size):
            pos = positions[start : start + batch_size]
            k = len(pos)
            x = np.asarray(self.array[pos])
            pad = batch_size - k
            inputs = np.concatenate([x, np.zeros((pad, *x.shape[1:]), x.dtype)]) if pad else x
            lab = np.full(batch_size, -1, np.int32)
            if labels is not None:
                lab[:k] = labels[pos]
            yield {"inputs": inputs, "label": lab, "_mask": np.arange(batch_size) < k}


def _prefix_with_params(model: AdaptedModel, params: Any, images: jax.Array) -> jax.Array:
    bb = model.backbone
    images = jnp.asarray(images, bb.dtype)
    if model.input_kind == "features":
        return bb.model.apply({"params": params}, images, method="encode_image")[0]
    if model.input_kind == "hidden":
        stop = model.cache_block
        return bb.model.apply({"params": params}, images, method=lambda m, x: m.image_blocks(m.image_stem(x), 0, stop))
    return images


class PoolScorer:
    """Scores the pool with the current trainable tree: logits, features, optional MC-dropout logits and loss."""

    def __init__(self, model: AdaptedModel, kind: str, *, chunk_size: int = 256, sharder: Sharder | None = None):
        self.model = model
        self.kind = kind
        self.sharder = sharder or Sharder()
        self.chunk = self.sharder.chunk_size(chunk_size)
        self.traces = 0

        def score(trainable: Any, inputs: jax.Array, rng: jax.Array, mc_samples: int) -> dict[str, jax.Array]:
            self.traces += 1
            logits, aux = model.logits(trainable, inputs, kind)
            out = {"logits": logits, "features": aux["features"]}
            if mc_samples:
                keys = jax.random.split(rng, mc_samples)
                out["mc_logits"] = jax.lax.map(
                    lambda k: model.logits(trainable, inputs, kind, rng=k, train=True)[0], keys
                )
            if "loss_pred" in trainable:
                out["loss_pred"] = LossPredictionHead().apply({"params": trainable["loss_pred"]}, logits)
            return out

        self._score = jax.jit(score, static_argnums=(3,))

    def score(
        self,
        trainable: Any,
        batches: Iterable[Batch],
        positions: np.ndarray,
        n: int,
        *,
        labels: np.ndarray | None = None,
        mc_samples: int = 0,
        rng: jax.Array | None = None,
        progress: Callable[[int, int], None] | None = None,
    ) -> dict[str, np.ndarray]:
        """The pool dict over all n rows; `batches` hold this process's `positions` (images or cached inputs)."""
        trainable = self.sharder.replicate(trainable)
        rng = jax.random.key(0) if rng is None else rng
        pieces, done = [], 0
        for pos, batch in _rows_of(batches, np.asarray(positions, np.int64)):
            x = _inputs(batch)
            if x.shape[0] % self.sharder.size:
                raise ValueError(f"batch of {x.shape[0]} rows does not split over {self.sharder.size} devices.")
            key = jax.random.fold_in(rng, int(pos[0]))
            out = jax.device_get(self._score(trainable, self.sharder.put(x), key, mc_samples))
            if "mc_logits" in out:
                out["mc_logits"] = np.moveaxis(out["mc_logits"], 0, 1)  # rows first while gathering
            pieces.append((pos, out))
            done += int((pos >= 0).sum())
            if progress:
                progress(done, len(positions))
        pool = gather_rows(n, pieces)
        if "mc_logits" in pool:
            pool["mc_logits"] = np.moveaxis(pool["mc_logits"], 1, 0)
        pool["labels"] = np.full((n,), -1, np.int64) if labels is None else np.asarray(labels)
        return pool
