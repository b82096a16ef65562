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


def padded_chunks(n: int, chunk: int, process_index: int = 0, process_count: int = 1) -> Iterator[np.ndarray]:
    """Index arrays of `chunk` rows over range(n), padded with -1; chunk c goes to process c % process_count."""
    for c, start in enumerate(range(0, max(n, 1), chunk)):
        if c % process_count != process_index:
            continue
        idx = np.arange(start, min(start + chunk, n))
        yield np.concatenate([idx, -np.ones(chunk - len(idx), np.int64)])


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
        images: Callable[[np.ndarray], np.ndarray],
        n: int,
        *,
        chunk_size: int = 256,
        sharder: Sharder | None = None,
        memory_budget_bytes: int = 4 << 30,
        path: str | None = None,
        progress: Callable[[int, int], None] | None = None,
    ) -> FeatureCache:
        """Run `model.prefix` over rows 0..n-1; `images(idx)` returns preprocessed images for row ids `idx`."""
        sharder = sharder or Sharder()
        chunk = sharder.chunk_size(chunk_size)
        params = sharder.replicate(model.backbone.params)
        fn = jax.jit(lambda p, x: _prefix_with_params(model, p, x))
        if path and os.path.exists(path):
            arr = np.load(path, mmap_mode="r")
            if arr.shape[0] == n:
                return cls(arr, model.input_kind)
        out: np.ndarray | None = None
        done = 0
        for idx in padded_chunks(n, chunk):
            safe = np.where(idx >= 0, idx, idx[0])
            y = np.asarray(fn(params, sharder.put(images(safe))))
            if out is None:
                nbytes = n * int(np.prod(y.shape[1:])) * y.dtype.itemsize
                if nbytes > memory_budget_bytes and path:
                    os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
                    out = np.lib.format.open_memmap(path + ".tmp", mode="w+", dtype=y.dtype, shape=(n, *y.shape[1:]))
                else:
                    out = np.empty((n, *y.shape[1:]), y.dtype)
            keep = idx >= 0
            out[idx[keep]] = y[keep]
            done += int(keep.sum())
            if progress:
                progress(done, n)
        assert out is not None
        if isinstance(out, np.memmap):
            out.flush()
            os.replace(path + ".tmp", path)
            out = np.load(path, mmap_mode="r")
        return cls(out, model.input_kind)

    def rows(self, idx: np.ndarray) -> np.ndarray:
        """The cached inputs for row ids `idx` (−1 rows filled with row 0)."""
        return np.asarray(self.array[np.where(idx >= 0, idx, 0)])


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
                from alpeft_jax.strategies.learning_loss import predict_loss

                out["loss_pred"] = predict_loss(trainable["loss_pred"], logits)
            return out

        self._score = jax.jit(score, static_argnums=(3,))

    def score(
        self,
        trainable: Any,
        rows: Callable[[np.ndarray], np.ndarray],
        n: int,
        *,
        labels: np.ndarray | None = None,
        mc_samples: int = 0,
        rng: jax.Array | None = None,
        progress: Callable[[int, int], None] | None = None,
    ) -> dict[str, np.ndarray]:
        """The pool dict over rows 0..n-1; `rows(idx)` returns the model inputs (images or cached prefix)."""
        trainable = self.sharder.replicate(trainable)
        rng = jax.random.key(0) if rng is None else rng
        pieces, done = [], 0
        for c, idx in enumerate(padded_chunks(n, self.chunk, jax.process_index(), jax.process_count())):
            safe = np.where(idx >= 0, idx, idx[idx >= 0][0] if (idx >= 0).any() else 0)
            out = self._score(trainable, self.sharder.put(rows(safe)), jax.random.fold_in(rng, c), mc_samples)
            out = jax.device_get(out)
            if "mc_logits" in out:
                out["mc_logits"] = np.moveaxis(out["mc_logits"], 0, 1)  # rows first while gathering
            pieces.append((idx, out))
            done += int((idx >= 0).sum())
            if progress:
                progress(done, n)
        pool = gather_rows(n, pieces)
        if "mc_logits" in pool:
            pool["mc_logits"] = np.moveaxis(pool["mc_logits"], 1, 0)
        pool["labels"] = np.full((n,), -1, np.int64) if labels is None else np.asarray(labels)
        return pool
