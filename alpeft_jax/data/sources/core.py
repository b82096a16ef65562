"""What every source is: the `Source` protocol, its errors, and the pieces sources of all kinds share."""

from __future__ import annotations

import dataclasses
import hashlib
import os
from collections.abc import Iterable, Sequence
from typing import Any, Protocol, runtime_checkable

import numpy as np

__all__ = [
    "Source",
    "MissingDataError",
    "CorruptImageError",
    "SourceInfo",
    "ListedSource",
    "SubsetSource",
    "rgb",
    "check_index",
    "digest",
    "files_fingerprint",
    "array_fingerprint",
    "fingerprint_of",
]


class MissingDataError(FileNotFoundError):
    """The requested data is not on this machine; the message says how to get it."""


class CorruptImageError(ValueError):
    """An image file exists but cannot be decoded; the message names it and how to exclude it."""


@runtime_checkable
class Source(Protocol):
    """An indexable pool of images with stable integer ids."""

    name: str

    @property
    def class_names(self) -> list[str]:
        """Class names, indexed by label."""
        ...

    @property
    def labels(self) -> np.ndarray:
        """int64[N] labels (-1 = unknown), without decoding images."""
        ...

    @property
    def ids(self) -> np.ndarray:
        """int64[N] stable example ids."""
        ...

    def __len__(self) -> int: ...

    def __getitem__(self, i: int) -> dict[str, Any]: ...

    def fingerprint(self) -> str:
        """A cheap hash of the images this source reads (file list with sizes and modification times, dataset
        name, version and split, or the pixel array): it changes when the images do. Caches are keyed on it."""
        ...


def digest(*parts: Any) -> str:
    """A short stable hash of the parts' text."""
    h = hashlib.sha1()
    for p in parts:
        h.update(str(p).encode())
        h.update(b"\0")
    return h.hexdigest()[:16]


def files_fingerprint(paths: Sequence[str]) -> str:
    """A hash of image files' paths, sizes and modification times (a missing file counts as such)."""
    h = hashlib.sha1()
    for p in paths:
        try:
            st = os.stat(p)
            h.update(f"{p}\0{st.st_size}\0{st.st_mtime_ns}\n".encode())
        except OSError:
            h.update(f"{p}\0missing\n".encode())
    return h.hexdigest()[:16]


def array_fingerprint(*arrays: np.ndarray) -> str:
    """A hash of arrays' shapes, dtypes and bytes."""
    h = hashlib.sha1()
    for a in arrays:
        a = np.ascontiguousarray(a)
        h.update(f"{a.shape}{a.dtype}".encode())
        h.update(a.tobytes() if a.dtype.hasobject else a.view(np.uint8).reshape(-1).data)
    return h.hexdigest()[:16]


def fingerprint_of(source: Any) -> str:
    """`source.fingerprint()`; for a source without one, a hash of its name, size and ids and the pixels of a few
    examples (a cache over it is still told apart from one over other data)."""
    fn = getattr(source, "fingerprint", None)
    if callable(fn):
        return str(fn())
    n = len(source)
    picks: Iterable[int] = sorted({0, n // 2, n - 1}) if n else []
    pixels = [np.asarray(source[i]["image"]) for i in picks]
    return digest(
        type(source).__name__, getattr(source, "name", ""), n, array_fingerprint(np.asarray(source.ids), *pixels)
    )


@dataclasses.dataclass(frozen=True)
class SourceInfo:
    """What a split spec holds, read from metadata: example count, class count and (where read) class names."""

    size: int
    num_classes: int
    class_names: tuple[str, ...] = dataclasses.field(default=(), compare=False)


def rgb(arr: np.ndarray) -> np.ndarray:
    """uint8[H, W, 3] from a grey or RGB uint8 array."""
    arr = np.asarray(arr)
    if arr.ndim == 3 and arr.shape[-1] == 1:
        arr = arr[..., 0]
    if arr.ndim == 2:
        return np.repeat(arr[..., None], 3, axis=-1)
    if arr.ndim == 3 and arr.shape[-1] == 4:
        return np.ascontiguousarray(arr[..., :3])
    if arr.ndim != 3 or arr.shape[-1] != 3:
        raise ValueError(f"expected an image of shape [H, W], [H, W, 1] or [H, W, 3], got {arr.shape}")
    return arr


def check_index(i: Any, n: int) -> int:
    """i as a position in [0, n) (negative counts from the end); IndexError outside."""
    i = int(i)
    if i < 0:
        i += n
    if not 0 <= i < n:
        raise IndexError(f"index {i} out of range for a source of {n} examples")
    return i


class ListedSource:
    """Shared accessors of sources whose labels, ids and class names are held in memory."""

    class_names_: list[str]
    labels_: np.ndarray
    ids_: np.ndarray

    @property
    def class_names(self) -> list[str]:
        """Class names, indexed by label."""
        return self.class_names_

    @property
    def labels(self) -> np.ndarray:
        """int64[N] labels (-1 = unknown or unlabelled)."""
        return self.labels_

    @property
    def ids(self) -> np.ndarray:
        """int64[N] stable example ids."""
        return self.ids_


class SubsetSource:
    """The rows `positions` of another source, keeping its ids, labels and class names."""

    def __init__(self, source: Source, positions: np.ndarray, name: str) -> None:
        self.source = source
        self.positions = np.asarray(positions, np.int64)
        self.name = name

    @property
    def class_names(self) -> list[str]:
        """The underlying source's class names."""
        return self.source.class_names

    @property
    def labels(self) -> np.ndarray:
        """int64[N] labels of the rows."""
        return np.asarray(self.source.labels, np.int64)[self.positions]

    @property
    def ids(self) -> np.ndarray:
        """int64[N] the rows' ids in the underlying source."""
        return np.asarray(self.source.ids, np.int64)[self.positions]

    def __len__(self) -> int:
        return len(self.positions)

    def __getitem__(self, i: int) -> dict[str, Any]:
        return self.source[int(self.positions[check_index(i, len(self))])]

    def fingerprint(self) -> str:
        """The underlying source's fingerprint and the rows taken."""
        return digest(fingerprint_of(self.source), array_fingerprint(self.positions))
