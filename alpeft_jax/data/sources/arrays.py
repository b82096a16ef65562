"""Data held as arrays: in-memory images, Fashion-MNIST's IDX files and scikit-learn's digits."""

from __future__ import annotations

import gzip
import os
import struct
from collections.abc import Sequence
from typing import Any

import numpy as np

from alpeft_jax.data import classnames
from alpeft_jax.data.sources.core import ListedSource, MissingDataError, array_fingerprint, check_index, rgb
from alpeft_jax.data.sources.registry import Counts, Kind, Request, register

__all__ = ["ArraySource", "read_idx", "fashion_mnist", "digits", "FASHION_MNIST_DIR"]

FASHION_MNIST_DIR = "/usr/share/datasets/fashion-mnist"
DIGITS_SIZE = 1797  # images in scikit-learn's digits
DIGITS_SPLITS = ("train", "test", "all")
_DIGITS_CLASSES = [str(k) for k in range(10)]


class ArraySource(ListedSource):
    """In-memory images (uint8[N, H, W] or [N, H, W, C]) with labels and class names."""

    def __init__(
        self,
        images: np.ndarray,
        labels: np.ndarray | Sequence[int] | None,
        class_names: Sequence[str],
        name: str = "arrays",
        ids: np.ndarray | Sequence[int] | None = None,
    ) -> None:
        self.images = np.asarray(images)
        self.name = name
        if self.images.dtype != np.uint8:
            raise ValueError(f"ArraySource images must be uint8 pixels, got {self.images.dtype}; scale and cast")
        if self.images.ndim not in (3, 4):
            raise ValueError(f"ArraySource images must be [N, H, W] or [N, H, W, C], got {self.images.shape}")
        n = len(self.images)
        self.labels_ = (np.full(n, -1) if labels is None else np.asarray(labels)).astype(np.int64)
        self.ids_ = np.arange(n, dtype=np.int64) if ids is None else np.asarray(ids, np.int64)
        self.class_names_ = list(class_names)
        self._fingerprint: str | None = None
        if self.labels_.shape != (n,) or self.ids_.shape != (n,):
            raise ValueError(f"labels and ids must have shape ({n},), got {self.labels_.shape}, {self.ids_.shape}")
        if len(np.unique(self.ids_)) != n:
            raise ValueError("ArraySource ids must be unique")
        if n and (self.labels_.max() >= len(self.class_names_) or self.labels_.min() < -1):
            k = len(self.class_names_)
            raise ValueError(f"labels must lie in [-1, {k - 1}] for {k} classes")

    def __len__(self) -> int:
        return len(self.images)

    def fingerprint(self) -> str:
        """A hash of the pixel array (computed once)."""
        if self._fingerprint is None:
            self._fingerprint = array_fingerprint(self.images)
        return self._fingerprint

    def __getitem__(self, i: int) -> dict[str, Any]:
        i = check_index(i, len(self))
        return dict(image=rgb(self.images[i]), label=int(self.labels_[i]), id=int(self.ids_[i]), path=None)


# --------------------------------------------------------------------------------------------------------------
# Fashion-MNIST (IDX files)


def read_idx(path: str) -> np.ndarray:
    """Parse an IDX file (optionally gzipped) into a NumPy array."""
    opener = gzip.open if path.endswith(".gz") else open
    with opener(path, "rb") as f:
        data = f.read()
    if len(data) < 4 or data[0] != 0 or data[1] != 0:
        raise ValueError(f"{path} is not an IDX file (bad magic number)")
    dtypes: dict[int, Any] = {0x08: np.uint8, 0x09: np.int8, 0x0B: ">i2", 0x0C: ">i4", 0x0D: ">f4", 0x0E: ">f8"}
    code, ndim = data[2], data[3]
    if code not in dtypes:
        raise ValueError(f"{path}: unknown IDX data type 0x{code:02x}")
    shape = struct.unpack(f">{ndim}I", data[4 : 4 + 4 * ndim])
    arr = np.frombuffer(data, dtype=np.dtype(dtypes[code]), offset=4 + 4 * ndim)
    if arr.size != int(np.prod(shape)):
        raise ValueError(f"{path}: expected {int(np.prod(shape))} values for shape {shape}, found {arr.size}")
    return arr.reshape(shape)


def _fashion_files(split: str, data_dir: str | None) -> tuple[str, str]:
    """(images, labels) IDX files of a Fashion-MNIST split; ValueError for other splits, MissingDataError."""
    prefix = {"train": "train", "test": "t10k", "t10k": "t10k"}.get(split)
    if prefix is None:
        raise ValueError(f"Fashion-MNIST split must be 'train' or 'test', got {split!r}")
    d = data_dir or FASHION_MNIST_DIR
    files = []
    for kind in ("images-idx3", "labels-idx1"):
        cands = [os.path.join(d, f"{prefix}-{kind}-ubyte{ext}") for ext in (".gz", "")]
        found = next((c for c in cands if os.path.isfile(c)), None)
        if found is None:
            raise MissingDataError(
                f"Fashion-MNIST file {cands[0]} not found: `apt-get install dataset-fashion-mnist` (installs to "
                f"{FASHION_MNIST_DIR}) or pass data_dir / --config.data.dir holding {prefix}-{kind}-ubyte.gz"
            )
        files.append(found)
    return files[0], files[1]


def _open_fashion(split: str, files: tuple[str, str]) -> ArraySource:
    images, labels = read_idx(files[0]), read_idx(files[1])
    if len(images) != len(labels):
        raise ValueError(f"{files[0]} has {len(images)} images but {files[1]} has {len(labels)} labels")
    return ArraySource(
        images, labels.astype(np.int64), classnames.class_names("fashion_mnist"), name=f"fashion_mnist:{split}"
    )


def fashion_mnist(split: str = "train", data_dir: str | None = None) -> ArraySource:
    """Fashion-MNIST from IDX files (Debian ``dataset-fashion-mnist`` or a directory with the same four files)."""
    return _open_fashion(split, _fashion_files(split, data_dir))


@register
class FashionMnist(Kind[tuple[str, str]]):
    """Fashion-MNIST's four IDX files: splits train and test."""

    name = "fashion_mnist"
    title = "Fashion-MNIST"
    aliases = ("fashion_mnist", "fmnist")

    def locate(self, request: Request) -> tuple[str, str]:
        return _fashion_files(request.base, request.data_dir)

    def open(self, request: Request, found: tuple[str, str]) -> ArraySource:
        return _open_fashion(request.base, found)

    def inspect(self, request: Request, found: tuple[str, str]) -> Counts:
        """The count from the labels file's header."""
        with (gzip.open if found[1].endswith(".gz") else open)(found[1], "rb") as f:
            n = struct.unpack(">I", f.read(8)[4:8])[0]
        return Counts({request.base: n}, classnames.class_names("fashion_mnist"))


# --------------------------------------------------------------------------------------------------------------
# scikit-learn digits


def _check_digits_split(split: str) -> str:
    if split not in DIGITS_SPLITS:
        raise ValueError(f"digits split must be 'train', 'test' or 'all', got {split!r}")
    return split


def _digits_rows(split: str, n: int) -> np.ndarray:
    """Positions of a digits split among n images: every fifth (index % 5 == 4) is test."""
    _check_digits_split(split)
    idx = np.arange(n)
    return idx if split == "all" else idx[(idx % 5 == 4) == (split == "test")]


def digits(split: str = "train") -> ArraySource:
    """scikit-learn's 8x8 digits as uint8 images; every fifth image (index % 5 == 4) is the test split."""
    _check_digits_split(split)
    from sklearn.datasets import load_digits

    d = load_digits()
    images = np.round(d.images * (255.0 / 16.0)).astype(np.uint8)
    keep = _digits_rows(split, len(images))
    return ArraySource(images[keep], d.target[keep].astype(np.int64), _DIGITS_CLASSES, name=f"digits:{split}", ids=keep)


@register
class Digits(Kind[str]):
    """scikit-learn's digits (bundled with it): splits train, test and all."""

    name = "digits"
    title = "scikit-learn digits"
    aliases = ("digits", "sklearn_digits")

    def locate(self, request: Request) -> str:
        return _check_digits_split(request.base)

    def open(self, request: Request, found: str) -> ArraySource:
        return digits(found)

    def inspect(self, request: Request, found: str) -> Counts:
        """The split's size by the same rule that picks its rows."""
        return Counts({found: len(_digits_rows(found, DIGITS_SIZE))}, _DIGITS_CLASSES)
