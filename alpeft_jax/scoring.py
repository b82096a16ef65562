"""Pool scoring: stream the pool in fixed-size padded chunks through the adapted model, sharded over devices.

Each process builds a 1-D mesh (axis ``data``) over its own devices. Every chunk's batch dimension is split
over it; the trainable tree is replicated. Multi-host: each process scores the block of pool positions it
owns (`process_share`) and the rows are gathered in pool-position order (`gather_rows`), so every host sees
the same pool arrays and selects the same examples. Padding rows never leave this module, and no call of
the model sees more than one chunk of rows, whatever the size of the incoming batches.

MC-dropout draws a key per (sample, pool position), so the samples of a row do not depend on how the pool
was chunked, sharded or split over processes.

The frozen prefix (`AdaptedModel.prefix`: image features when the image tower is frozen, the hidden state
below the first adapted block otherwise) is computed once per pool by `FeatureCache` and reused every round,
in memory or, past a memory budget, in a `.npy` file on disk.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Iterable, Iterator
from typing import Any

import jax
import jax.numpy as jnp
import ml_dtypes
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from alpeft_jax.models.adapted import AdaptedModel
from alpeft_jax.models.heads import LossPredictionHead

Batch = dict[str, Any]
_BF16 = np.dtype(ml_dtypes.bfloat16)


def make_mesh(devices: list[Any] | None = None) -> Mesh:
    """A 1-D mesh with axis `data` over this process's devices (or the given ones)."""
    devices = jax.local_devices() if devices is None else list(devices)
    if not devices:
        raise ValueError("make_mesh needs at least one device.")
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
        return _round_up(max(1, int(requested)), self.size)

    def put(self, x: np.ndarray) -> jax.Array:
        """A host array with the batch axis sharded over the mesh."""
        if x.shape[0] % self.size:
            raise ValueError(f"batch of {x.shape[0]} rows does not split over {self.size} devices; "
                             f"use a batch size that is a multiple of {self.size} (Sharder.chunk_size).")
        return jax.device_put(x, self.batch)

    def replicate(self, tree: Any) -> Any:
        """A tree replicated on every device of the mesh."""
        return jax.device_put(tree, self.replicated)


def process_share(n: int, process_index: int | None = None, process_count: int | None = None) -> np.ndarray:
    """The contiguous block of pool positions this process scores."""
    p = jax.process_index() if process_index is None else int(process_index)
    c = jax.process_count() if process_count is None else int(process_count)
    if n < 0 or c < 1 or not 0 <= p < c:
        raise ValueError(f"process_share needs n >= 0 and 0 <= process_index < process_count, got n={n}, "
                         f"process_index={p}, process_count={c}.")
    bounds = [(n * i) // c for i in range(c + 1)]  # exact integer split; sizes differ by at most one
    return np.arange(bounds[p], bounds[p + 1], dtype=np.int64)


def _inputs(batch: Batch) -> np.ndarray:
    if "inputs" in batch:
        return batch["inputs"]
    if "image" in batch:
        return batch["image"]
    raise KeyError(f"a scoring batch needs 'inputs' or 'image', got keys {sorted(batch)}.")


def _rows_of(batches: Iterable[Batch], positions: np.ndarray) -> Iterator[tuple[np.ndarray, Batch]]:
    """Pair each padded batch with the pool positions of its rows (-1 for padding)."""
    offset = 0
    for batch in batches:
        mask = np.asarray(batch["_mask"], bool).reshape(-1)
        k = int(mask.sum())
        if offset + k > len(positions):
            raise ValueError(f"the batches hold more than the {len(positions)} rows of `positions`; pass the "
                             "positions the batches were made from, in the same order.")
        pos = np.full(mask.shape[0], -1, np.int64)
        pos[mask] = positions[offset : offset + k]
        offset += k
        yield pos, batch
    if offset != len(positions):
        raise ValueError(f"the batches hold {offset} rows but `positions` has {len(positions)}; pass the "
                         "positions the batches were made from, in the same order.")


def _chunks(
    rows: Iterable[tuple[np.ndarray, Batch]], chunk: int | None, multiple: int
) -> Iterator[tuple[np.ndarray, Any]]:
    """Split each batch into pieces of at most `chunk` rows (None: whole batches), padded to a multiple of `multiple`.

    Pieces that hold only padding are dropped.
    """
    for pos, batch in rows:
        x = _inputs(batch)
        if x.shape[0] != pos.shape[0]:
            raise ValueError(f"a batch has {x.shape[0]} input rows but a mask of {pos.shape[0]}.")
        step = chunk or max(1, pos.shape[0])
        for start in range(0, pos.shape[0], step):
            p, xs = pos[start : start + step], x[start : start + step]
            if not (p >= 0).any():
                continue
            pad = _round_up(p.shape[0], multiple) - p.shape[0]
            if pad:
                p = np.concatenate([p, np.full(pad, -1, np.int64)])
                xs = np.concatenate([np.asarray(xs), np.zeros((pad, *xs.shape[1:]), xs.dtype)])
            yield p, xs


def gather_rows(n: int, pieces: Iterable[tuple[np.ndarray, dict[str, np.ndarray]]]) -> dict[str, np.ndarray]:
    """Assemble per-chunk outputs (row ids, row-first arrays) into arrays of n rows in id order, across processes."""
    ids_all, out = [], {}
    for ids, arrays in pieces:
        ids = np.asarray(ids, np.int64).reshape(-1)
        keep = ids >= 0
        ids_all.append(ids[keep])
        for k, v in arrays.items():
            v = np.asarray(v)
            if v.shape[0] != ids.shape[0]:
                raise ValueError(f"gather_rows: '{k}' has {v.shape[0]} rows for {ids.shape[0]} ids.")
            out.setdefault(k, []).append(v[keep])
    ids = np.concatenate(ids_all) if ids_all else np.zeros((0,), np.int64)
    cat = {k: np.concatenate(v) for k, v in out.items()}
    if jax.process_count() > 1:
        from jax.experimental import multihost_utils

        ids, cat = _allgather(multihost_utils, ids, cat)
    order = np.argsort(ids, kind="stable")
    if len(ids) != n or not np.array_equal(ids[order], np.arange(n)):
        seen = np.unique(ids)
        missing = np.setdiff1d(np.arange(n), seen)
        raise RuntimeError(
            f"pool scoring covered {len(seen)} of {n} rows ({len(ids) - len(seen)} duplicated, first missing "
            f"{missing[:5].tolist()}); the batches must hold every pool position exactly once."
        )
    return {k: v[order] for k, v in cat.items()}


_SCHEMA_BYTES = 4096


def _schema(arrays: dict[str, np.ndarray]) -> np.ndarray:
    """The keys, dtypes and trailing shapes of `arrays` as a fixed-size byte vector (for an allgather)."""
    text = json.dumps({k: [np.dtype(v.dtype).name, list(v.shape[1:])] for k, v in sorted(arrays.items())})
    raw = text.encode()
    if len(raw) > _SCHEMA_BYTES:
        raise ValueError(f"gather_rows: {len(arrays)} output arrays describe in {len(raw)} bytes, over "
                         f"{_SCHEMA_BYTES}; return fewer outputs per row.")
    return np.frombuffer(raw.ljust(_SCHEMA_BYTES, b" "), np.uint8)


def _allgather(mhu: Any, ids: np.ndarray, arrays: dict[str, np.ndarray]) -> tuple[np.ndarray, dict[str, np.ndarray]]:
    """All processes' rows, each process's block in process order.

    Processes may own different row counts, none at all included: counts and the array layout are gathered
    first (a process without rows takes the layout of one with rows), then every array is padded to the
    largest count, gathered, and unpadded.
    """
    counts = np.asarray(mhu.process_allgather(np.asarray([len(ids)]))).reshape(-1)
    schemas = np.asarray(mhu.process_allgather(_schema(arrays))).reshape(len(counts), _SCHEMA_BYTES)
    layouts = [json.loads(s.tobytes().decode()) for s, c in zip(schemas, counts) if c > 0]
    layout = layouts[0] if layouts else {}
    if any(other != layout for other in layouts):  # every process sees every layout: all stop here, none hangs
        raise RuntimeError(f"gather_rows: processes produced different output arrays ({layouts}); run the same "
                           "code and config on every host.")
    if len(ids) == 0:
        arrays = {k: np.zeros((0, *shape), np.dtype(dt)) for k, (dt, shape) in layout.items()}
    m = int(counts.max())
    pad = lambda a: np.concatenate([a, np.zeros((m - a.shape[0], *a.shape[1:]), a.dtype)])
    g_ids = np.asarray(mhu.process_allgather(pad(ids)))
    g = {k: np.asarray(mhu.process_allgather(pad(v))) for k, v in sorted(arrays.items())}
    ids = np.concatenate([g_ids[p][: int(c)] for p, c in enumerate(counts)])
    return ids, {k: np.concatenate([v[p][: int(c)] for p, c in enumerate(counts)]) for k, v in g.items()}


def _to_disk(a: np.ndarray) -> np.ndarray:
    # .npy has no bfloat16: store its bits as uint16 (a prefix is always floating point, so this is unambiguous).
    return a.view(np.uint16) if a.dtype == _BF16 else a


def _from_disk(a: np.ndarray) -> np.ndarray:
    return a.view(_BF16) if a.dtype == np.uint16 else a


def _tmp(path: str) -> str:
    return f"{path}.{jax.process_index()}.{os.getpid()}.tmp"


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
        chunk_size: int | None = None,
    ) -> FeatureCache:
        """Run `model.prefix` over the pool; `batches` hold the preprocessed images of `positions`, in order.

        With `path`, a complete cache already on disk is reused, and one larger than the memory budget is
        written there (as a .npy memmap) instead of held in memory. The model sees at most `chunk_size` rows
        (rounded up to the device count) per call; None: the size of the incoming batches.
        """
        if path and os.path.exists(path):
            arr = _from_disk(np.load(path, mmap_mode="r"))
            if arr.shape[0] == n and arr.ndim >= 2:
                return cls(arr, model.input_kind)
        sharder = sharder or Sharder()
        positions = np.asarray(positions, np.int64)
        params = sharder.replicate(model.backbone.params)
        fn = jax.jit(lambda p, x: _prefix_with_params(model, p, x))
        multi = jax.process_count() > 1
        pieces, out, done, tmp, disk = [], None, 0, None, None

        def collect(pos: np.ndarray, y_dev: jax.Array) -> None:
            nonlocal out, done, tmp, disk
            y = np.asarray(y_dev)
            if multi:
                pieces.append((pos, {"x": y}))
                return
            if out is None:
                nbytes = n * int(np.prod(y.shape[1:])) * y.dtype.itemsize
                if nbytes > memory_budget_bytes and path:
                    os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
                    tmp = _tmp(path)
                    disk = np.lib.format.open_memmap(tmp, mode="w+", dtype=_to_disk(y[:0]).dtype,
                                                     shape=(n, *y.shape[1:]))
                    out = _from_disk(disk)
                else:
                    out = np.empty((n, *y.shape[1:]), y.dtype)
            keep = pos >= 0
            out[pos[keep]] = y[keep]
            done += int(keep.sum())
            if progress:
                progress(done, len(positions))

        pending = None
        chunk = sharder.chunk_size(chunk_size) if chunk_size else None
        try:
            for pos, x in _chunks(_rows_of(batches, positions), chunk, sharder.size):
                y = fn(params, sharder.put(x))  # dispatched asynchronously; the previous chunk is copied meanwhile
                if pending is not None:
                    collect(*pending)
                pending = (pos, y)
            if pending is not None:
                collect(*pending)
        except BaseException:
            if tmp is not None and os.path.exists(tmp):
                os.remove(tmp)  # never leave a partial cache behind
            raise
        if multi:
            out = gather_rows(n, pieces).get("x")
        if out is None:
            raise ValueError("the pool is empty: nothing to cache.")
        if disk is not None:
            disk.flush()
            del out, disk
            os.replace(tmp, path)
            out = _from_disk(np.load(path, mmap_mode="r"))
        elif path:
            os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
            tmp = _tmp(path)
            with open(tmp, "wb") as f:
                np.save(f, _to_disk(out))
            os.replace(tmp, path)
        return cls(out, model.input_kind)

    def batches(self, positions: np.ndarray, batch_size: int, labels: np.ndarray | None = None) -> Iterator[Batch]:
        """Fixed-size padded batches {inputs, label, _mask} of the cached rows at `positions`, in order."""
        positions = np.asarray(positions, np.int64).reshape(-1)
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}.")
        if positions.size and (positions.min() < 0 or positions.max() >= len(self)):
            raise IndexError(f"cache positions must lie in [0, {len(self)}), got [{positions.min()}, "
                             f"{positions.max()}].")
        if labels is not None and len(labels) != len(self):
            raise ValueError(f"labels must have one entry per cached row ({len(self)}), got {len(labels)}.")
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
    # The frozen params travel as a jit argument rather than a closed-over constant.
    return model.prefix(images, params=params)


class PoolScorer:
    """Scores the pool with the current trainable tree: logits, features, optional MC-dropout logits and loss."""

    def __init__(
        self, model: AdaptedModel, kind: str, *, chunk_size: int = 256, sharder: Sharder | None = None
    ) -> None:
        if kind not in ("images", model.input_kind):
            raise ValueError(f"this model scores inputs of kind 'images' or {model.input_kind!r}, not {kind!r}.")
        self.model = model
        self.kind = kind
        self.sharder = sharder or Sharder()
        self.chunk = self.sharder.chunk_size(chunk_size)
        self.traces = 0

        def score(
            trainable: Any, inputs: jax.Array, pos: jax.Array, rng: jax.Array, mc_samples: int
        ) -> dict[str, jax.Array]:
            self.traces += 1
            logits, aux = model.logits(trainable, inputs, kind)
            out = {"logits": logits, "features": aux["features"]}
            if mc_samples:
                rows = jnp.maximum(pos, 0)

                def one(x: jax.Array, key: jax.Array) -> jax.Array:
                    return model.logits(trainable, x[None], kind, rng=key, train=True)[0][0]

                def sample(key: jax.Array) -> jax.Array:
                    row_keys = jax.vmap(lambda p: jax.random.fold_in(key, p))(rows)
                    return jax.vmap(one)(inputs, row_keys)

                out["mc_logits"] = jnp.moveaxis(jax.lax.map(sample, jax.random.split(rng, mc_samples)), 0, 1)
            if "loss_pred" in trainable:
                out["loss_pred"] = LossPredictionHead().apply({"params": trainable["loss_pred"]}, logits)
            return out

        self._score = jax.jit(score, static_argnums=(4,))

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
        """The pool dict over all n rows; `batches` hold this process's `positions` (images or cached inputs).

        Keys: logits [n,K], features [n,D], labels [n], mc_logits [T,n,K] with `mc_samples` = T > 0, and
        loss_pred [n] when the trainable tree has a `loss_pred` head.
        """
        if labels is not None and len(labels) != n:
            raise ValueError(f"labels must have one entry per pool row ({n}), got {len(labels)}.")
        if mc_samples < 0:
            raise ValueError(f"mc_samples must be >= 0, got {mc_samples}.")
        trainable = self.sharder.replicate(trainable)
        rng = jax.random.key(0) if rng is None else rng
        positions = np.asarray(positions, np.int64)
        pieces, done = [], 0

        def collect(pos: np.ndarray, out_dev: dict[str, jax.Array]) -> None:
            nonlocal done
            pieces.append((pos, jax.device_get(out_dev)))
            done += int((pos >= 0).sum())
            if progress:
                progress(done, len(positions))

        pending = None
        for pos, x in _chunks(_rows_of(batches, positions), self.chunk, self.sharder.size):
            out = self._score(trainable, self.sharder.put(x), self.sharder.put(pos.astype(np.int32)), rng,
                              int(mc_samples))
            if pending is not None:
                collect(*pending)  # copy the previous chunk back while this one runs
            pending = (pos, out)
        if pending is not None:
            collect(*pending)
        pool = gather_rows(n, pieces)
        if "mc_logits" in pool:
            pool["mc_logits"] = np.moveaxis(pool["mc_logits"], 1, 0)
        pool["labels"] = np.full((n,), -1, np.int64) if labels is None else np.asarray(labels)
        return pool
