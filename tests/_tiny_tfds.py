"""Tiny real TFDS datasets on disk: array_record shards and dataset_info.json written by TFDS's own
SequentialWriter (no TensorFlow, no download), read back by `tfds.data_source` exactly as prepared datasets are."""

from __future__ import annotations

import io
import os

import numpy as np
from PIL import Image


def png(arr: np.ndarray) -> bytes:
    """PNG bytes of a uint8 image (lossless, so decoded pixels equal `arr`)."""
    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, format="PNG")
    return buf.getvalue()


def image(seed: int, h: int = 12, w: int = 10) -> np.ndarray:
    """A distinct random uint8 RGB image per seed."""
    return np.random.default_rng(seed).integers(0, 256, (h, w, 3), dtype=np.uint8)


def write(data_dir: str, name: str, splits: dict[str, list[dict]]) -> str:
    """Write `splits` ({split: [example dicts with every feature of the builder]}) as TFDS dataset `name`."""
    import tensorflow_datasets as tfds

    builder = tfds.builder(name, data_dir=str(data_dir), file_format="array_record")
    os.makedirs(builder.info.data_dir, exist_ok=True)
    writer = tfds.core.SequentialWriter(ds_info=builder.info, max_examples_per_shard=10_000, file_format="array_record")
    writer.initialize_splits(list(splits))
    writer.add_examples(splits)
    writer.close_splits(list(splits))
    return builder.info.data_dir
