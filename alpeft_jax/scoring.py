"""Pool scoring: stream the pool in fixed-size padded chunks through the adapted model, sharded over devices.

Chunks are global batches on the mesh of every device of every process (`alpeft_jax.parallel`): each process
loads its block of the chunk's rows, the model runs on the whole chunk, and the outputs come back whole to every
process (`Sharder.to_host`), placed by pool position, so every host sees the same pool arrays and selects the same
examples. Padding rows never leave this module, and no call of the model sees more than one chunk of rows,
whatever the size of the incoming batches.

MC-dropout draws a key per (sample, pool position), so the samples of a row do not depend on how the pool
was chunked, sharded or split over processes.

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
import ml_dtypes
import numpy as np
from etils import epath

from alpeft_jax.batch import Batch
from alpeft_jax.models.adapted import AdaptedModel, InputKind
from alpeft_jax.models.heads import LossPredictionHead
from alpeft_jax.parallel import Sharder, is_leader, make_mesh, round_up
from alpeft_jax.workdir import is_local

__all__ = ["FeatureCache", "PoolScorer", "Sharder", "make_mesh"]

_BF16 = np.dtype(ml_dtypes.bfloat16)


def _is_global(x: Any) -> bool:
    return isinstance(x, jax.Array) and not x.is_fully_addressable


def _chunks(batches: Iterable[Batch[Any]], chunk: int | None, sharder: Sharder) -> Iterator[tuple[Any, Any]]:
    """(pool positions, inputs) as global arrays of at most `chunk` rows, padded to the device count (pos -1).

    Each batch carries its rows' pool positions in "pos" (-1 for padding). With several processes every batch is
    this process's block of a global batch (as `alpeft_jax.inputs` makes them) and is used as it is.
    """
    for batch in batches:
        x = batch["inputs"]
        if _is_global(x):
            yield batch["pos"], x
            continue
        pos = np.asarray(batch["pos"], np.int64).reshape(-1)
        if x.shape[0] != pos.shape[0]:
            raise ValueError(f"a batch has {x.shape[0]} input rows but {pos.shape[0]} positions.")
        if sharder.multiprocess:
            yield sharder.put(pos), sharder.put(np.asarray(x))
            continue
        step = chunk or max(1, pos.shape[0])
        for start in range(0, pos.shape[0], step):
            p, xs = pos[start : start + step], x[start : start + step]
            if not (p >= 0).any():
                continue
            pad = round_up(p.shape[0], sharder.size) - p.shape[0]
            if pad:
                p = np.concatenate([p, np.full(pad, -1, np.int64)])
                xs = np.concatenate([np.asarray(xs), np.zeros((pad, *xs.shape[1:]), xs.dtype)])
            yield sharder.put(p), sharder.put(np.asarray(xs))


def _assemble_into(out: dict[str, np.ndarray], n: int, pos: np.ndarray, arrays: dict[str, np.ndarray]) -> None:
    """Place the valid rows (pos >= 0) of row-first arrays into arrays of n rows (created on first use)."""
    pos = np.asarray(pos, np.int64).reshape(-1)
    keep = pos >= 0
    if keep.any() and pos[keep].max() >= n:
        raise ValueError(f"pool position {int(pos[keep].max())} is outside the pool of {n} rows.")
    for k, v in arrays.items():
        v = np.asarray(v)
        if k not in out:
            out[k] = np.empty((n, *v.shape[1:]), v.dtype)
        out[k][pos[keep]] = v[keep]


def _assemble(
    n: int, pieces: Iterable[tuple[np.ndarray, dict[str, np.ndarray]]], out: dict[str, np.ndarray] | None = None
) -> dict[str, np.ndarray]:
    """Per-chunk outputs (pool positions, row-first arrays) placed into arrays of n rows; every row exactly once."""
    out = {} if out is None else out
    seen = np.zeros(n, np.int64)
    for pos, arrays in pieces:
        pos = np.asarray(pos, np.int64).reshape(-1)
        _assemble_into(out, n, pos, arrays)  # first: it rejects positions outside the pool
        np.add.at(seen, pos[pos >= 0], 1)
    if not np.all(seen == 1):
        missing = np.flatnonzero(seen == 0)
        raise RuntimeError(
            f"pool scoring covered {int((seen > 0).sum())} of {n} rows ({int((seen > 1).sum())} more than once, first "
            f"missing {missing[:5].tolist()}); the batches must hold every pool position exactly once."
        )
    return out


def _to_disk(a: np.ndarray) -> np.ndarray:
    # .npy has no bfloat16: store its bits as uint16 (a prefix is always floating point, so this is unambiguous).
    return a.view(np.uint16) if a.dtype == _BF16 else a


def _from_disk(a: np.ndarray) -> np.ndarray:
    return a.view(_BF16) if a.dtype == np.uint16 else a


def _tmp(path: str) -> str:
    return f"{path}.{jax.process_index()}.{os.getpid()}.tmp"


def _load(path: str) -> np.ndarray | None:
    """A saved cache: memory-mapped when local, read whole from a cloud path; None when absent."""
    if is_local(path):
        return _from_disk(np.load(path, mmap_mode="r")) if os.path.exists(path) else None
    p = epath.Path(path)
    if not p.exists():
        return None
    with p.open("rb") as f:
        return _from_disk(np.load(f))


def _save(path: str, array: np.ndarray) -> None:
    """Write a cache so that readers see all of it or nothing (temp file + rename)."""
    p = epath.Path(path)
    p.parent.mkdir(parents=True, exist_ok=True)
    tmp = epath.Path(_tmp(str(path)))
    with tmp.open("wb") as f:
        np.save(f, _to_disk(array))
    tmp.rename(p)


class FeatureCache:
    """The frozen-prefix output of every pool example, computed once (in memory, or a .npy memmap on disk)."""

    def __init__(self, array: np.ndarray, kind: InputKind) -> None:
        self.array = array
        self.kind = kind

    def __len__(self) -> int:
        return self.array.shape[0]

    @classmethod
    def build(
        cls,
        model: AdaptedModel,
        batches: Iterable[Batch[Any]],
        n: int,
        *,
        sharder: Sharder | None = None,
        memory_budget_bytes: int = 4 << 30,
        path: str | None = None,
        progress: Callable[[int, int], None] | None = None,
        chunk_size: int | None = None,
    ) -> FeatureCache:
        """Run `model.prefix` over the pool, whole on every process; `batches` hold the preprocessed images.

        Every pool position is in exactly one batch's "pos" (see `_chunks`). With
        `path`, a complete cache already there is reused, and a new one is saved there by process 0; one larger than
        the memory budget is written (as a .npy memmap; local paths only) instead of held in memory. The model sees
        at most `chunk_size` rows (rounded up to the device count) per call; None: the size of the incoming batches.
        """
        path = str(path) if path else None
        if path:
            arr = _load(path)
            if arr is not None and arr.shape[0] == n and arr.ndim >= 2:
                return cls(arr, model.input_kind)
        sharder = sharder or Sharder()
        params = sharder.replicate(model.backbone.params)
        fn = jax.jit(lambda p, x: _prefix_with_params(model, p, x))
        leader = is_leader()
        state: dict[str, Any] = {"out": None, "disk": None, "tmp": None, "done": 0, "keep": True}

        def collect(pos_dev: jax.Array, y_dev: jax.Array) -> None:
            pos, y = sharder.to_host((pos_dev, y_dev))
            if state["out"] is None:
                nbytes = n * int(np.prod(y.shape[1:])) * y.dtype.itemsize
                if nbytes > memory_budget_bytes and path and is_local(path):
                    if leader:
                        os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
                        state["tmp"] = _tmp(path)
                        state["disk"] = np.lib.format.open_memmap(
                            state["tmp"], mode="w+", dtype=_to_disk(y[:0]).dtype, shape=(n, *y.shape[1:])
                        )
                        state["out"] = {"x": _from_disk(state["disk"])}
                    else:
                        state["keep"] = False  # the others open process 0's file once it is complete
                        state["out"] = {}
                else:
                    state["out"] = {}
            keep = pos >= 0
            state["done"] += int(keep.sum())
            if state["keep"]:
                _assemble_into(state["out"], n, pos, {"x": y})
            if progress:
                progress(state["done"], n)

        pending = None
        chunk = sharder.global_size(chunk_size) if chunk_size else None
        try:
            for pos, x in _chunks(batches, chunk, sharder):
                y = fn(params, x)  # dispatched asynchronously; the previous chunk is copied meanwhile
                if pending is not None:
                    collect(*pending)
                pending = (pos, y)
            if pending is not None:
                collect(*pending)
        except BaseException:
            if state["tmp"] is not None and os.path.exists(state["tmp"]):
                os.remove(state["tmp"])  # never leave a partial cache behind
            raise
        if state["out"] is None:
            raise ValueError("the pool is empty: nothing to cache.")
        if state["done"] != n:
            raise RuntimeError(
                f"the prefix cache covered {state['done']} of {n} rows; the batches must hold every "
                "pool position exactly once."
            )
        if state["disk"] is not None and path:  # a disk cache is only made where there is a path
            state["disk"].flush()
            state["out"], state["disk"] = None, None
            os.replace(state["tmp"], path)
        elif state["keep"] and path and leader:
            _save(path, state["out"]["x"])
        if sharder.multiprocess:
            from alpeft_jax.parallel import barrier

            barrier(f"feature cache {path}")
        if (state["out"] is None or not state["keep"]) and path:  # on disk: process 0 wrote it
            array = _load(path)
            if array is None:
                raise RuntimeError(
                    f"the prefix cache {path} was not written; check that every process sees the "
                    "same cache directory (scoring.cache_dir)."
                )
            return cls(array, model.input_kind)
        return cls(state["out"]["x"], model.input_kind)


def _prefix_with_params(model: AdaptedModel, params: Any, images: jax.Array) -> jax.Array:
    # The frozen params travel as a jit argument rather than a closed-over constant.
    return model.prefix(images, params=params)


class PoolScorer:
    """Scores the pool with the current trainable tree: logits, features, optional MC-dropout logits and loss."""

    def __init__(
        self, model: AdaptedModel, kind: InputKind, *, chunk_size: int = 256, sharder: Sharder | None = None
    ) -> None:
        if kind not in ("images", model.input_kind):
            raise ValueError(f"this model scores inputs of kind 'images' or {model.input_kind!r}, not {kind!r}.")
        self.model = model
        self.kind = kind
        self.sharder = sharder or Sharder()
        self.chunk = self.sharder.global_size(chunk_size)
        self.traces = 0

        def score(
            trainable: Any, inputs: jax.Array, pos: jax.Array, rng: jax.Array, mc_samples: int
        ) -> dict[str, jax.Array]:
            self.traces += 1
            logits, aux = model.logits(trainable, inputs, kind)
            out: dict[str, Any] = {"logits": logits, "features": aux["features"]}
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
        batches: Iterable[Batch[Any]],
        n: int,
        *,
        labels: np.ndarray | None = None,
        mc_samples: int = 0,
        rng: jax.Array | None = None,
        progress: Callable[[int, int], None] | None = None,
    ) -> dict[str, np.ndarray]:
        """The pool dict over all n rows, whole on every process (batches: see `_chunks`; images or cached inputs).

        Keys: logits [n,K], features [n,D], labels [n], mc_logits [T,n,K] with `mc_samples` = T > 0, and
        loss_pred [n] when the trainable tree has a `loss_pred` head.
        """
        if labels is not None and len(labels) != n:
            raise ValueError(f"labels must have one entry per pool row ({n}), got {len(labels)}.")
        if mc_samples < 0:
            raise ValueError(f"mc_samples must be >= 0, got {mc_samples}.")
        trainable = self.sharder.replicate(trainable)
        rng = self.sharder.replicate(jax.random.key(0) if rng is None else rng)
        pieces, done = [], 0

        def collect(pos: jax.Array, out_dev: dict[str, jax.Array]) -> None:
            nonlocal done
            pos_h, out_h = self.sharder.to_host((pos, out_dev))
            pieces.append((pos_h, out_h))
            done += int((pos_h >= 0).sum())
            if progress:
                progress(done, n)

        pending = None
        for pos, x in _chunks(batches, self.chunk, self.sharder):
            out = self._score(trainable, x, pos.astype(jnp.int32), rng, int(mc_samples))
            if pending is not None:
                collect(*pending)  # copy the previous chunk back while this one runs
            pending = (pos, out)
        if pending is not None:
            collect(*pending)
        pool = _assemble(n, pieces)
        if "mc_logits" in pool:
            pool["mc_logits"] = np.moveaxis(pool["mc_logits"], 1, 0)
        pool["labels"] = np.full((n,), -1, np.int64) if labels is None else np.asarray(labels)
        return pool
