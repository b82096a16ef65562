"""What the model reads for one split, chosen once per run: cached frozen-prefix rows or decoded images.

`SplitInputs` is a split of a source (row i is ``source[positions[i]]``) with the kind of input the model reads
from it. `SplitInputs.batches(rows, batch_size, ...)` yields fixed-shape `Batch`es (`alpeft_jax.batch`) of *this
process's block* of each global batch (`alpeft_jax.parallel`), where ``pos`` is the row's position in the split
(-1 for padding) and ``label`` is ``labels[pos]`` (-1 where unknown or padded). Every process walks the same global
order and loads only its own rows; `Sharder.put` joins them into global arrays.

`RunInputs` holds a run's pool and test splits (a run without a test set has none) and the input-kind policy:
which kind scoring, evaluation and training read (`choose_kinds`), and the frozen-prefix caches, built on first use
and kept on disk.

The order of a training epoch (`epoch_rows`) depends only on (seed, epoch), and image augmentation on
(seed, epoch, example id), so a resumed or re-sharded run sees the same batches.
"""

from __future__ import annotations

import copy
import hashlib
import json
import time
from collections.abc import Iterator
from typing import Any

import numpy as np
from absl import logging
from etils import epath

from alpeft_jax import data
from alpeft_jax.batch import Batch
from alpeft_jax.data import preprocess as pp
from alpeft_jax.data.splits import subset  # noqa: F401 - where the driver reads it
from alpeft_jax.metrics import bar
from alpeft_jax.models.adapted import AdaptedModel, InputKind
from alpeft_jax.parallel import Sharder
from alpeft_jax.scoring import FeatureCache


def epoch_rows(rows: np.ndarray, batch_size: int, seed: int, epoch: int, drop_last: bool) -> np.ndarray:
    """The rows of one training epoch in their shuffled order (the last partial batch dropped when asked)."""
    order = data.epoch_order(np.asarray(rows, np.int64), seed, epoch)
    if drop_last and len(order) >= batch_size:
        order = order[: (len(order) // batch_size) * batch_size]
    return order


class SplitInputs:
    """Batches of one split's rows for the model: from a `FeatureCache`, or images decoded and preprocessed."""

    def __init__(
        self,
        source: Any,
        positions: np.ndarray,
        sharder: Sharder,
        *,
        cache: FeatureCache | None = None,
        image_size: int = 224,
        mean: Any = None,
        std: Any = None,
        num_threads: int | None = None,
        resize_ratio: float = 1.0,
        crop: str = "round",
    ) -> None:
        self.source = source
        self.positions = np.asarray(positions, np.int64)
        self.sharder = sharder
        self.cache = cache
        self.spec = pp.resolve_spec(image_size, mean, std, resize_ratio=resize_ratio, crop=crop)
        self.num_threads = num_threads
        self._ids = np.asarray(source.ids, np.int64)

    @property
    def kind(self) -> InputKind:
        """ "images", or the kind of the cached prefix."""
        return "images" if self.cache is None else self.cache.kind

    def __len__(self) -> int:
        return len(self.positions)

    @property
    def labels(self) -> np.ndarray:
        """The dataset's labels of the rows."""
        return np.asarray(self.source.labels, np.int64)[self.positions]

    def ids(self, rows: np.ndarray) -> list[int]:
        """Stable dataset ids of rows."""
        return [int(i) for i in self._ids[self.positions[np.asarray(rows, np.int64)]]]

    def with_cache(self, cache: FeatureCache) -> SplitInputs:
        """The same rows read from a frozen-prefix cache of them (row i of the cache is row i of the split)."""
        if len(cache) != len(self):
            raise ValueError(f"the cache has {len(cache)} rows, the split {len(self)}.")
        out = copy.copy(self)
        out.cache = cache
        return out

    def local_rows(self, rows: np.ndarray, batch_size: int) -> list[np.ndarray]:
        """This process's rows of each global batch of `rows` (-1 for padding), in order."""
        return [self.sharder.local_slice(g) for g in self.sharder.global_batches(np.asarray(rows), batch_size)]

    def batches(
        self,
        rows: np.ndarray,
        batch_size: int,
        *,
        labels: np.ndarray | None = None,
        augment: tuple[int, int] | None = None,
    ) -> Iterator[Batch[np.ndarray]]:
        """This process's block of each global batch of `rows` (in the given order), `batch_size` rows per batch.

        `labels` has one entry per row of the split; `augment=(seed, epoch)` applies the training augmentation
        (images only; cached inputs are never augmented).
        """
        rows = np.asarray(rows, np.int64).reshape(-1)
        if rows.size and (rows.min() < 0 or rows.max() >= len(self)):
            raise IndexError(
                f"rows must lie in [0, {len(self)}) (positions in the split), got [{rows.min()}, {rows.max()}]."
            )
        local = self.local_rows(rows, batch_size)
        if not local:
            return
        label_of = None if labels is None else np.asarray(labels, np.int64)
        if self.cache is not None:
            loaded: Iterator[np.ndarray] = (_cached_rows(self.cache, r) for r in local)
        else:
            loaded = self._images(local, augment)
        for r, x in zip(local, loaded):
            valid = r >= 0
            lab = np.full(len(r), -1, np.int32)
            if label_of is not None:
                lab[valid] = label_of[r[valid]]
            yield {"inputs": x, "label": lab, "pos": r, "_mask": valid}

    def _images(self, local: list[np.ndarray], augment: tuple[int, int] | None) -> Iterator[np.ndarray]:
        order = np.concatenate(local)
        src = np.where(order >= 0, self.positions[np.maximum(order, 0)], -1)
        spec, ids = self.spec, self._ids

        def fn(pos: int, ex: dict[str, Any]) -> np.ndarray:
            if augment is None:
                return pp.eval_image(ex["image"], spec)
            return pp.train_image(ex["image"], spec, pp.example_rng(augment[0], augment[1], int(ids[pos])))

        batches = data.Batches(self.source, src, len(local[0]), fn, spec.image_size, self.num_threads, prefetch=2)
        for b in batches:
            yield b["image"]


def _cached_rows(cache: FeatureCache, r: np.ndarray) -> np.ndarray:
    """Rows `r` of a cache, zeros where r is -1 (padding)."""
    valid = r >= 0
    x = np.asarray(cache.array[np.where(valid, r, 0)])
    if not valid.all():
        x = x.copy()
        x[~valid] = 0
    return x


# -- the input-kind policy and the prefix caches of a run ---------------------------------------------------------
def choose_kinds(model_kind: InputKind, cache: bool, augment: bool) -> tuple[InputKind, InputKind]:
    """(kind read by scoring and evaluation, kind read by training) for a model whose prefix is `model_kind`.

    With `cache`, scoring and evaluation read the cached prefix (unless there is none: "images"); training reads it
    too, unless it augments images.
    """
    use_cache = cache and model_kind != "images"
    eval_kind: InputKind = model_kind if use_cache else "images"
    train_kind: InputKind = "images" if (augment or not use_cache) else eval_kind
    return eval_kind, train_kind


def fingerprint(*parts: Any) -> str:
    """A short stable hash of the parts' text (names a cache file after what it was computed from)."""
    return hashlib.sha1(json.dumps([str(p) for p in parts]).encode()).hexdigest()[:12]


class RunInputs:
    """A run's pool and test splits, read as the kinds `choose_kinds` picks; prefix caches built on first use.

    A cache is a file ``<which>_<fingerprint>.npy`` in `cache_dir`, named after what it holds: `cache_key` (the
    backbone's weights identity and dtype, where the prefix ends), the split's source fingerprint (its files with
    sizes and modification times, or the TFDS build, or the pixel array), the preprocessing (image size, mean,
    std) and the split's rows. Runs on the same content share it; changed images or weights give a new cache.
    """

    def __init__(
        self,
        model: AdaptedModel,
        pool: SplitInputs,
        test: SplitInputs | None,
        *,
        cache: bool,
        augment: bool,
        cache_dir: epath.Path,
        cache_key: tuple[Any, ...],
        chunk_size: int,
        memory_budget_bytes: int,
    ) -> None:
        self.model = model
        self.splits = {"pool": pool} if test is None else {"pool": pool, "test": test}
        self.eval_kind, self.train_kind = choose_kinds(model.input_kind, cache, augment)
        self.cache_dir, self.cache_key = cache_dir, cache_key
        self.chunk_size, self.memory_budget_bytes = chunk_size, memory_budget_bytes
        self._cached: dict[str, SplitInputs] = {}

    def get(self, which: str, for_training: bool = False) -> SplitInputs:
        """The inputs of the pool or the test split that evaluation and scoring (or training) read."""
        kind = self.train_kind if for_training else self.eval_kind
        images = self.splits[which]
        if kind == "images":
            return images
        if which not in self._cached:
            self._cached[which] = images.with_cache(self._build(images, which))
        return self._cached[which]

    def _build(self, images: SplitInputs, which: str) -> FeatureCache:
        model = self.model
        key = fingerprint(
            *self.cache_key,
            which,
            data.fingerprint_of(images.source),  # the images themselves: files, sizes, times (or array, TFDS build)
            images.spec,  # image size, mean, std
            hashlib.sha1(images.positions.tobytes()).hexdigest(),
        )
        path = self.cache_dir / f"{which}_{key}.npy"
        chunk = images.sharder.global_size(self.chunk_size)
        n = len(images)
        t0 = time.time()
        with bar(f"caching {which} {model.input_kind}", n, "img") as progress:
            cache = FeatureCache.build(
                model,
                images.batches(np.arange(n), chunk),
                n,
                sharder=images.sharder,
                memory_budget_bytes=self.memory_budget_bytes,
                path=str(path),
                progress=lambda done, total: progress.update(done - progress.n),
            )
        logging.info(
            "%s cache %s %s ready in %.1fs (%s)", which, model.input_kind, cache.array.shape, time.time() - t0, path
        )
        return cache
