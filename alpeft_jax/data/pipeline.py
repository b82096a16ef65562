"""Prefetching input pipelines over a pool source, with fixed batch shapes.

Every batch is ``dict(image=float32[B, S, S, 3], label=int32[B], _id=int32[B], _mask=bool[B])``. The last batch
is padded to ``B`` with zero images, label -1, id -1 and mask False, so a jitted step compiles once.

- ``eval_batches``: the given indices in order, evaluation view (resize shorter side + centre crop). Resume with
  ``start`` (examples already consumed) or ``start_id`` (the id of the first example still to process).
- ``train_batches``: the indices shuffled by ``(seed, epoch)``, training augmentation seeded by
  ``(seed, epoch, example id)``; resume with ``start_batch``. The same arguments give the same batches.
- ``as_arrays``: the evaluation view of a small pool as in-memory arrays.

Decoding and preprocessing run in a grain thread pool (PIL releases the GIL), and finished batches are
prefetched in a background thread while the consumer works on the previous one.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator, Sequence
from typing import Any

import grain
import numpy as np

from alpeft_jax.data import preprocess as pp
from alpeft_jax.data.sources import Source

__all__ = ["Batches", "eval_batches", "train_batches", "epoch_order", "num_batches", "as_arrays"]


def _default_threads() -> int:
    return max(1, min(16, os.cpu_count() or 1))


def num_batches(n: int, batch_size: int, drop_remainder: bool = False) -> int:
    """How many batches ``n`` examples make."""
    return n // batch_size if drop_remainder else -(-n // batch_size)


def _positions(source: Source, indices: Sequence[int] | np.ndarray | None) -> np.ndarray:
    n = len(source)
    idx = np.arange(n, dtype=np.int64) if indices is None else np.asarray(indices, np.int64).reshape(-1)
    if idx.size and (idx.min() < 0 or idx.max() >= n):
        raise IndexError(f"indices must lie in [0, {n}) for source {source.name!r}, got [{idx.min()}, {idx.max()}]")
    return idx


class Batches:
    """An iterable of fixed-shape batches; ``len()`` is the number of batches it yields."""

    def __init__(
        self,
        source: Source,
        order: np.ndarray,
        batch_size: int,
        element_fn: Callable[[int, dict[str, Any]], np.ndarray],
        image_size: int,
        num_threads: int | None,
        prefetch: int,
    ) -> None:
        if batch_size <= 0:
            raise ValueError(f"batch_size must be positive, got {batch_size}")
        self.source, self.batch_size, self.image_size = source, batch_size, image_size
        self.order = order
        pad = (-len(order)) % batch_size
        self._padded = np.concatenate([order, np.full(pad, -1, np.int64)])
        self._fn = element_fn
        self._threads = num_threads or _default_threads()
        self._prefetch = prefetch
        self._ids = np.asarray(source.ids, np.int64)

    def __len__(self) -> int:
        return len(self._padded) // self.batch_size

    def _element(self, pos: int) -> dict[str, Any]:
        pos = int(pos)
        if pos < 0:
            s = self.image_size
            return dict(
                image=np.zeros((s, s, 3), np.float32), label=np.int32(-1), _id=np.int32(-1), _mask=np.bool_(False)
            )
        ex = self.source[pos]
        return dict(
            image=self._fn(pos, ex), label=np.int32(ex["label"]), _id=np.int32(self._ids[pos]), _mask=np.bool_(True)
        )

    def __iter__(self) -> Iterator[dict[str, np.ndarray]]:
        if len(self) == 0:
            return iter(())
        ds = grain.MapDataset.source(self._padded.tolist()).map(self._element)
        read = grain.ReadOptions(num_threads=self._threads, prefetch_buffer_size=max(self.batch_size * 2, 2))
        it = ds.to_iter_dataset(read).batch(self.batch_size, batch_fn=_stack)
        if self._prefetch > 0:
            it = grain.experimental.ThreadPrefetchIterDataset(it, prefetch_buffer_size=self._prefetch)
        return iter(it)


def _stack(items: Sequence[dict[str, Any]]) -> dict[str, np.ndarray]:
    return {k: np.stack([it[k] for it in items]) for k in items[0]}


def eval_batches(
    source: Source,
    indices: Sequence[int] | np.ndarray | None,
    batch_size: int,
    image_size: Any,
    mean: Any = None,
    std: Any = None,
    *,
    start: int = 0,
    start_id: int | None = None,
    num_threads: int | None = None,
    prefetch: int = 2,
) -> Batches:
    """Evaluation-view batches of ``source[indices]`` in order, resumable from ``start`` or ``start_id``."""
    spec = pp.resolve_spec(image_size, mean, std)
    order = _positions(source, indices)
    if start_id is not None:
        hits = np.flatnonzero(np.asarray(source.ids, np.int64)[order] == int(start_id))
        if not hits.size:
            raise ValueError(f"start_id {start_id} is not among the given indices of source {source.name!r}")
        start = int(hits[0])
    if not 0 <= start <= len(order):
        raise ValueError(f"start must lie in [0, {len(order)}], got {start}")
    return Batches(
        source,
        order[start:],
        batch_size,
        lambda pos, ex: pp.eval_image(ex["image"], spec),
        spec.image_size,
        num_threads,
        prefetch,
    )


def epoch_order(indices: Sequence[int] | np.ndarray, seed: int, epoch: int) -> np.ndarray:
    """The indices in the shuffled order of one epoch (depends only on seed and epoch)."""
    idx = np.asarray(indices, np.int64).reshape(-1)
    rng = np.random.default_rng([int(seed) & 0xFFFFFFFF, int(epoch) & 0xFFFFFFFF, 0x5EED])
    return idx[rng.permutation(len(idx))]


def train_batches(
    source: Source,
    indices: Sequence[int] | np.ndarray | None,
    batch_size: int,
    image_size: Any,
    mean: Any = None,
    std: Any = None,
    *,
    seed: int,
    epoch: int,
    start_batch: int = 0,
    drop_remainder: bool = False,
    scale: tuple[float, float] = (0.08, 1.0),
    ratio: tuple[float, float] = (3 / 4, 4 / 3),
    flip: bool = True,
    augment: bool = True,
    num_threads: int | None = None,
    prefetch: int = 2,
) -> Batches:
    """Shuffled, augmented batches for one epoch; the same (seed, epoch) give the same batches."""
    spec = pp.resolve_spec(image_size, mean, std)
    order = epoch_order(_positions(source, indices), seed, epoch)
    if drop_remainder:
        order = order[: num_batches(len(order), batch_size, True) * batch_size]
    if not 0 <= start_batch <= num_batches(len(order), batch_size):
        raise ValueError(f"start_batch {start_batch} is past the {num_batches(len(order), batch_size)} batches")
    ids = np.asarray(source.ids, np.int64)

    def fn(pos: int, ex: dict[str, Any]) -> np.ndarray:
        if not augment:
            return pp.eval_image(ex["image"], spec)
        rng = pp.example_rng(seed, epoch, int(ids[pos]))
        return pp.train_image(ex["image"], spec, rng, scale=scale, ratio=ratio, flip=flip)

    return Batches(source, order[start_batch * batch_size :], batch_size, fn, spec.image_size, num_threads, prefetch)


def as_arrays(
    source: Source,
    indices: Sequence[int] | np.ndarray | None,
    size: int,
    mean: Any = None,
    std: Any = None,
) -> dict[str, np.ndarray]:
    """Evaluation views of a small pool in memory: uint8 pixels, or normalised float32 if mean/std are given."""
    order = _positions(source, indices)
    ids = np.asarray(source.ids, np.int64)
    spec = pp.resolve_spec(size, mean, std) if mean is not None or std is not None else None
    images, labels = [], []
    for pos in order:
        ex = source[int(pos)]
        images.append(pp.eval_image(ex["image"], spec) if spec else pp.eval_pixels(ex["image"], size))
        labels.append(ex["label"])
    shape = (0, size, size, 3)
    dtype = np.float32 if spec else np.uint8
    return dict(
        image=np.stack(images) if images else np.zeros(shape, dtype),
        label=np.asarray(labels, np.int32),
        id=ids[order].astype(np.int32),
    )
