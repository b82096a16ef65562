"""What the model reads for one split, chosen once per run: cached frozen-prefix rows or decoded images.

`SplitInputs.batches(rows, batch_size, ...)` yields fixed-shape batches of *this process's block* of each global
batch (`alpeft_jax.parallel`): ``{"inputs", "label", "pos", "_mask"}`` where ``pos`` is the row's position in the
split (-1 for padding) and ``label`` is ``labels[pos]`` (-1 where unknown or padded). Every process walks the same
global order and loads only its own rows; `Sharder.put` joins them into global arrays.

The order of a training epoch (`epoch_rows`) depends only on (seed, epoch), and image augmentation on
(seed, epoch, example id), so a resumed or re-sharded run sees the same batches.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import numpy as np

from alpeft_jax import data
from alpeft_jax.data import preprocess as pp
from alpeft_jax.parallel import Sharder
from alpeft_jax.scoring import FeatureCache

Batch = dict[str, np.ndarray]


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
    ) -> None:
        self.source = source
        self.positions = np.asarray(positions, np.int64)
        self.sharder = sharder
        self.cache = cache
        self.spec = pp.resolve_spec(image_size, mean, std)
        self.num_threads = num_threads
        self._ids = np.asarray(source.ids, np.int64)

    @property
    def kind(self) -> str:
        """"images", or the kind of the cached prefix."""
        return "images" if self.cache is None else self.cache.kind

    def __len__(self) -> int:
        return len(self.positions)

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
    ) -> Iterator[Batch]:
        """This process's block of each global batch of `rows` (in the given order), `batch_size` rows per batch.

        `labels` has one entry per row of the split; `augment=(seed, epoch)` applies the training augmentation
        (images only; cached inputs are never augmented).
        """
        local = self.local_rows(rows, batch_size)
        if not local:
            return
        label_of = None if labels is None else np.asarray(labels, np.int64)
        if self.cache is not None:
            loaded: Iterator[np.ndarray] = (self._cached(r) for r in local)
        else:
            loaded = self._images(local, augment)
        for r, x in zip(local, loaded):
            valid = r >= 0
            lab = np.full(len(r), -1, np.int32)
            if label_of is not None:
                lab[valid] = label_of[r[valid]]
            yield {"inputs": x, "label": lab, "pos": r, "_mask": valid}

    def _cached(self, r: np.ndarray) -> np.ndarray:
        valid = r >= 0
        x = np.asarray(self.cache.array[np.where(valid, r, 0)])
        if not valid.all():
            x = x.copy()
            x[~valid] = 0
        return x

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
