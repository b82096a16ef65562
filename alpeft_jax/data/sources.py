"""Pool sources: indexable image sets with stable integer ids, labels and class names.

Every source has ``len(source)``, ``source[i] -> dict(image=uint8[H, W, 3], label=int, id=int, path=str|None)``
(grey images expanded to three channels, label -1 when unknown), ``.labels`` (int64[N], read without decoding
images where the format allows), ``.ids`` (int64[N], the stable example ids, position order), ``.class_names``
and ``.name``. Built-in sources number their examples 0..N-1 in a deterministic order (sorted paths for image
folders, file order for CSV manifests and split files, record order for TFDS and IDX files), so the same data
gives the same ids on every machine.

Entry point: ``get_source(name, split, data_dir=None, **options)``:

- ``"fashion_mnist"`` - the four Fashion-MNIST IDX files from the Debian package ``dataset-fashion-mnist``
  (``/usr/share/datasets/fashion-mnist``) or from ``data_dir``; splits ``train`` / ``test``.
- ``"digits"`` - scikit-learn's 8x8 digits, split deterministically (every fifth image is ``test``).
- ``"folder"`` - an image folder ``data_dir/<class>/<image>`` (or ``data_dir/<split>/<class>/<image>``).
- ``"csv"`` - a manifest ``path,label`` (header required; paths relative to the CSV's directory; empty label =
  unlabelled). ``data_dir`` is the CSV file or a directory holding ``<split>.csv``.
- ``"coop:<dataset>"`` (or ``coop=True``) - CoOp's ``split_zhou_*.json`` over the CoOp folder layout under
  ``data_dir`` (e.g. ``dtd/images`` + ``dtd/split_zhou_DescribableTextures.json``), CoOp class names.
- anything else, optionally prefixed ``"tfds:"`` - a prepared TFDS dataset read with ``tfds.data_source``
  (random access, no TensorFlow needed). ``coop_names=True`` maps its class names to CoOp's prompt names.

Unreadable images: image files are decoded lazily, when an example is read. A file that cannot be decoded
raises ``CorruptImageError`` naming the file and how to exclude it (delete or move it out of the folder, or
drop its row from the CSV); nothing is skipped silently, so a labelled image is never lost without notice.
Files listed in a CSV manifest or a CoOp split file that do not exist are reported when the source is
built (``MissingDataError``). Classes with no images are allowed: they keep their index and name.
Missing datasets raise ``MissingDataError`` with the command that gets them.
"""

from __future__ import annotations

import csv
import gzip
import json
import logging
import os
import struct
from collections.abc import Sequence
from typing import Any, Protocol, runtime_checkable

import numpy as np
from PIL import Image, UnidentifiedImageError

from alpeft_jax.data import classnames

__all__ = [
    "Source",
    "MissingDataError",
    "CorruptImageError",
    "ArraySource",
    "FileListSource",
    "TfdsSource",
    "image_folder",
    "csv_manifest",
    "coop_split",
    "fashion_mnist",
    "digits",
    "get_source",
    "read_idx",
    "FASHION_MNIST_DIR",
    "IMAGE_EXTENSIONS",
]

log = logging.getLogger(__name__)

FASHION_MNIST_DIR = "/usr/share/datasets/fashion-mnist"
IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".gif", ".tif", ".tiff", ".webp", ".ppm", ".pgm")


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


def _rgb(arr: np.ndarray) -> np.ndarray:
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


def _check_index(i: Any, n: int) -> int:
    i = int(i)
    if i < 0:
        i += n
    if not 0 <= i < n:
        raise IndexError(f"index {i} out of range for a source of {n} examples")
    return i


# --------------------------------------------------------------------------------------------------------------
# In-memory arrays


class _ListedSource:
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


class ArraySource(_ListedSource):
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
        if self.labels_.shape != (n,) or self.ids_.shape != (n,):
            raise ValueError(f"labels and ids must have shape ({n},), got {self.labels_.shape}, {self.ids_.shape}")
        if len(np.unique(self.ids_)) != n:
            raise ValueError("ArraySource ids must be unique")
        if n and (self.labels_.max() >= len(self.class_names_) or self.labels_.min() < -1):
            k = len(self.class_names_)
            raise ValueError(f"labels must lie in [-1, {k - 1}] for {k} classes")

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, i: int) -> dict[str, Any]:
        i = _check_index(i, len(self))
        return dict(image=_rgb(self.images[i]), label=int(self.labels_[i]), id=int(self.ids_[i]), path=None)


# --------------------------------------------------------------------------------------------------------------
# Image files: folders, CSV manifests, CoOp split files


class FileListSource(_ListedSource):
    """Images stored as files, listed with labels; decoded lazily with PIL."""

    def __init__(
        self,
        paths: Sequence[str],
        labels: np.ndarray | Sequence[int],
        class_names: Sequence[str],
        name: str = "files",
        exclude_hint: str = "delete or move the file out of the dataset",
    ) -> None:
        self.paths = list(paths)
        self.labels_ = np.asarray(labels, np.int64).reshape(len(self.paths))
        self.class_names_ = list(class_names)
        self.name = name
        self.exclude_hint = exclude_hint
        self.ids_ = np.arange(len(self.paths), dtype=np.int64)

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, i: int) -> dict[str, Any]:
        i = _check_index(i, len(self))
        path = self.paths[i]
        return dict(image=load_image(path, self.exclude_hint), label=int(self.labels_[i]), id=int(self.ids_[i]),
                    path=path)


def load_image(path: str, exclude_hint: str = "delete or move the file out of the dataset") -> np.ndarray:
    """Decode an image file to uint8[H, W, 3]; a clear error for unreadable files."""
    try:
        with Image.open(path) as im:
            im.load()
            rgb = im if im.mode == "RGB" else im.convert("RGB")
            return np.asarray(rgb, dtype=np.uint8)
    except FileNotFoundError:
        raise MissingDataError(f"image file {path} does not exist; restore it or {exclude_hint}") from None
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as e:
        raise CorruptImageError(f"cannot decode image {path} ({type(e).__name__}: {e}); {exclude_hint}") from None


def _is_image(name: str) -> bool:
    return name.lower().endswith(IMAGE_EXTENSIONS) and not name.startswith(".")


def image_folder(root: str, class_names: Sequence[str] | None = None, name: str | None = None) -> FileListSource:
    """Images under ``root/<class>/`` (sorted); class names = sorted sub-folders or the given list."""
    if not os.path.isdir(root):
        raise MissingDataError(f"image folder {root} does not exist; expected {root}/<class>/<image files>")
    folders = sorted(d for d in os.listdir(root) if os.path.isdir(os.path.join(root, d)) and not d.startswith("."))
    if class_names is None:
        class_names = folders
    else:
        class_names = list(class_names)
        unknown = sorted(set(folders) - set(class_names))
        if unknown:
            raise ValueError(f"folders {unknown} under {root} are not in the class list; add them to the classes")
    if not class_names:
        raise MissingDataError(f"no class folders under {root}; expected {root}/<class>/<image files>")
    paths, labels = [], []
    for label, cls in enumerate(class_names):
        folder = os.path.join(root, cls)
        if not os.path.isdir(folder):
            continue  # an empty class: it keeps its index and name
        found = sorted(os.path.relpath(os.path.join(d, f), folder) for d, _, files in os.walk(folder)
                       for f in files if _is_image(f))
        paths.extend(os.path.join(folder, f) for f in found)
        labels.extend([label] * len(found))
    counts = np.bincount(np.asarray(labels, np.int64), minlength=len(class_names)) if labels else np.zeros(
        len(class_names), np.int64)
    empty = [c for c, k in zip(class_names, counts, strict=True) if k == 0]
    log.info("image folder %s: %d images in %d classes (%d empty: %s)", root, len(paths), len(class_names),
             len(empty), empty[:10])
    return FileListSource(paths, np.asarray(labels, np.int64), list(class_names), name=name or f"folder:{root}",
                          exclude_hint="delete or move the file out of the image folder")


def csv_manifest(csv_path: str, class_names: Sequence[str] | None = None, name: str | None = None) -> FileListSource:
    """Images listed in a CSV with header ``path,label``; empty label = unlabelled, paths relative to the CSV."""
    if not os.path.isfile(csv_path):
        raise MissingDataError(f"CSV manifest {csv_path} does not exist")
    base = os.path.dirname(os.path.abspath(csv_path))
    with open(csv_path, newline="", encoding="utf-8") as f:
        reader = csv.DictReader(f)
        if reader.fieldnames is None or "path" not in reader.fieldnames or "label" not in reader.fieldnames:
            raise ValueError(f"CSV manifest {csv_path} needs a header row with columns 'path' and 'label', "
                             f"got {reader.fieldnames}")
        rows = [(r["path"].strip(), (r["label"] or "").strip()) for r in reader]
    if class_names is None:
        class_names = sorted({lab for _, lab in rows if lab})
    class_names = list(class_names)
    index = {c: k for k, c in enumerate(class_names)}
    paths, labels, missing, unknown = [], [], [], []
    for line, (p, lab) in enumerate(rows, start=2):
        full = p if os.path.isabs(p) else os.path.join(base, p)
        if not os.path.isfile(full):
            missing.append(f"line {line}: {p}")
        if lab and lab not in index:
            unknown.append(f"line {line}: {lab!r}")
        paths.append(full)
        labels.append(index.get(lab, -1) if lab else -1)
    if missing:
        raise MissingDataError(f"{len(missing)} file(s) listed in {csv_path} do not exist ({'; '.join(missing[:5])}"
                               f"{' ...' if len(missing) > 5 else ''}); fix the paths or drop those rows")
    if unknown:
        raise ValueError(f"{len(unknown)} label(s) in {csv_path} are not in the class list ({'; '.join(unknown[:5])})"
                         "; add them to the classes or fix the rows")
    return FileListSource(paths, np.asarray(labels, np.int64), class_names, name=name or f"csv:{csv_path}",
                          exclude_hint=f"drop its row from {csv_path}")


def coop_split(image_dir: str, split_file: str, split: str, dataset: str | None = None) -> FileListSource:
    """One split of a CoOp ``split_zhou_*.json`` file ({split: [[path, label, classname], ...]}) over image_dir."""
    if not os.path.isfile(split_file):
        raise MissingDataError(f"CoOp split file {split_file} does not exist; download it from the CoOp "
                               "DATASETS.md links into the dataset folder")
    with open(split_file, encoding="utf-8") as f:
        splits = json.load(f)
    if split not in splits:
        raise ValueError(f"split {split!r} not in {split_file}; available: {sorted(splits)}")
    names: dict[int, str] = {}
    for part in splits.values():
        for _, label, cname in part:
            names.setdefault(int(label), cname)
    n_cls = max(names) + 1 if names else 0
    raw = [names.get(k, f"class_{k}") for k in range(n_cls)]
    class_names = classnames.coop_names(dataset, raw) if dataset else raw
    entries = splits[split]
    paths = [os.path.join(image_dir, p) for p, _, _ in entries]
    missing = [p for p in paths if not os.path.isfile(p)]
    if missing:
        raise MissingDataError(f"{len(missing)} of {len(paths)} images of {split_file} [{split}] are missing under "
                               f"{image_dir} (first: {missing[0]}); unpack the dataset images there")
    labels = np.asarray([int(lab) for _, lab, _ in entries], np.int64)
    return FileListSource(paths, labels, class_names, name=f"coop:{dataset or split_file}:{split}",
                          exclude_hint=f"drop its entry from {split_file}")


# --------------------------------------------------------------------------------------------------------------
# Fashion-MNIST (IDX files) and scikit-learn digits


def read_idx(path: str) -> np.ndarray:
    """Parse an IDX file (optionally gzipped) into a NumPy array."""
    opener = gzip.open if path.endswith(".gz") else open
    with opener(path, "rb") as f:
        data = f.read()
    if len(data) < 4 or data[0] != 0 or data[1] != 0:
        raise ValueError(f"{path} is not an IDX file (bad magic number)")
    dtypes = {0x08: np.uint8, 0x09: np.int8, 0x0B: ">i2", 0x0C: ">i4", 0x0D: ">f4", 0x0E: ">f8"}
    code, ndim = data[2], data[3]
    if code not in dtypes:
        raise ValueError(f"{path}: unknown IDX data type 0x{code:02x}")
    shape = struct.unpack(f">{ndim}I", data[4 : 4 + 4 * ndim])
    arr = np.frombuffer(data, dtype=np.dtype(dtypes[code]), offset=4 + 4 * ndim)
    if arr.size != int(np.prod(shape)):
        raise ValueError(f"{path}: expected {int(np.prod(shape))} values for shape {shape}, found {arr.size}")
    return arr.reshape(shape)


def fashion_mnist(split: str = "train", data_dir: str | None = None) -> ArraySource:
    """Fashion-MNIST from IDX files (Debian ``dataset-fashion-mnist`` or a directory with the same four files)."""
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
    images, labels = read_idx(files[0]), read_idx(files[1])
    if len(images) != len(labels):
        raise ValueError(f"{files[0]} has {len(images)} images but {files[1]} has {len(labels)} labels")
    return ArraySource(images, labels.astype(np.int64), classnames.class_names("fashion_mnist"),
                       name=f"fashion_mnist:{split}")


def digits(split: str = "train") -> ArraySource:
    """scikit-learn's 8x8 digits as uint8 images; every fifth image (index % 5 == 4) is the test split."""
    if split not in ("train", "test", "all"):
        raise ValueError(f"digits split must be 'train', 'test' or 'all', got {split!r}")
    from sklearn.datasets import load_digits

    d = load_digits()
    images = np.round(d.images * (255.0 / 16.0)).astype(np.uint8)
    idx = np.arange(len(images))
    keep = idx if split == "all" else idx[(idx % 5 == 4) == (split == "test")]
    return ArraySource(images[keep], d.target[keep].astype(np.int64), [str(k) for k in range(10)],
                       name=f"digits:{split}", ids=keep)


# --------------------------------------------------------------------------------------------------------------
# TFDS


_TFDS_PATH_KEYS = ("file_name", "filename", "image/file_name", "image/filename", "id")


class TfdsSource:
    """A prepared TFDS image-classification split, read with ``tfds.data_source`` (random access, no TF)."""

    def __init__(
        self,
        name: str,
        split: str,
        data_dir: str | None = None,
        image_key: str = "image",
        label_key: str = "label",
        coop_names: bool = False,
    ) -> None:
        import tensorflow_datasets as tfds
        from tensorflow_datasets.core.registered import DatasetNotFoundError

        self.name = f"{name}:{split}"
        self.image_key, self.label_key = image_key, label_key
        try:
            builder = tfds.builder(name, data_dir=data_dir)
        except DatasetNotFoundError:
            raise MissingDataError(f"TFDS has no dataset named {name!r}; check the name (e.g. 'dtd', "
                                   "'eurosat/rgb', 'oxford_flowers102')") from None
        where = data_dir or "~/tensorflow_datasets"
        how = (f"build it once with `tfds build {name} --data_dir {where} --file_format array_record` (needs "
               "TensorFlow and the raw download) or point --config.data.dir at a directory that holds it")
        try:
            self._ds = tfds.data_source(name, split=split, data_dir=data_dir, download=False)
        except Exception as e:  # noqa: BLE001 - TFDS raises many types for "not there / wrong format"
            first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
            raise MissingDataError(f"TFDS dataset {name!r} split {split!r} is not available as array_record "
                                   f"under {where} ({first}); {how}") from None
        features = builder.info.features
        if image_key not in features or label_key not in features:
            raise ValueError(f"TFDS dataset {name!r} has features {list(features)}; pass image_key= and "
                             f"label_key= naming the image and the class label")
        self._names = list(features[label_key].names)
        if coop_names:
            self._names = classnames.coop_names(name, self._names)
        self._path_key = next((k for k in _TFDS_PATH_KEYS if k in features), None)
        self._labels: np.ndarray | None = None

    @property
    def class_names(self) -> list[str]:
        """Class names from the builder's label feature."""
        return self._names

    @property
    def labels(self) -> np.ndarray:
        """int64[N] labels (one pass over the records on first use, then cached)."""
        if self._labels is None:
            self._labels = np.asarray([int(self._ds[i][self.label_key]) for i in range(len(self._ds))], np.int64)
        return self._labels

    @property
    def ids(self) -> np.ndarray:
        """int64[N] example ids (record positions in the split)."""
        return np.arange(len(self._ds), dtype=np.int64)

    def __len__(self) -> int:
        return len(self._ds)

    def __getitem__(self, i: int) -> dict[str, Any]:
        i = _check_index(i, len(self))
        ex = self._ds[i]
        path = ex.get(self._path_key) if self._path_key else None
        if isinstance(path, bytes):
            path = path.decode("utf-8", "replace")
        elif path is not None and not isinstance(path, str):
            path = str(path)
        return dict(image=_rgb(np.asarray(ex[self.image_key], np.uint8)), label=int(ex[self.label_key]), id=i,
                    path=path)


# --------------------------------------------------------------------------------------------------------------
# Entry point


def _split_dir(data_dir: str, split: str | None) -> str:
    if split and os.path.isdir(os.path.join(data_dir, split)):
        return os.path.join(data_dir, split)
    return data_dir


def get_source(name: str, split: str = "train", data_dir: str | None = None, **options: Any) -> Source:
    """Open a pool source by name (see the module docstring for the names and options)."""
    key = name.strip()
    low = key.lower().replace("-", "_")
    classes = options.pop("classes", None)
    if isinstance(classes, str):
        classes = [c.strip() for c in classes.split(",") if c.strip()]
    if low in ("fashion_mnist", "fmnist"):
        src: Source = fashion_mnist(split, data_dir)
    elif low in ("digits", "sklearn_digits"):
        src = digits(split)
    elif low == "folder":
        if not data_dir:
            raise ValueError("an image-folder source needs data_dir (--config.data.dir) = the folder root")
        src = image_folder(_split_dir(data_dir, split), classes)
    elif low == "csv":
        if not data_dir:
            raise ValueError("a CSV source needs data_dir (--config.data.dir): the CSV file or a folder with "
                             "<split>.csv")
        path = os.path.join(data_dir, f"{split}.csv") if os.path.isdir(data_dir) else data_dir
        src = csv_manifest(path, classes)
    elif low.startswith("coop:") or options.pop("coop", False):
        dataset = key.split(":", 1)[1] if low.startswith("coop:") else key
        info = classnames.dataset_info(dataset)
        if "coop" not in info:
            raise ValueError(f"no CoOp layout known for {dataset!r}; known: {', '.join(classnames.known_datasets())}")
        if not data_dir:
            raise ValueError("a CoOp split source needs data_dir (--config.data.dir) = the CoOp DATA root")
        c = info["coop"]
        src = coop_split(os.path.normpath(os.path.join(data_dir, c["dir"], c["images"])),
                         os.path.join(data_dir, c["dir"], c["split_file"]), split, dataset)
    else:
        tfds_name = key.split(":", 1)[1] if low.startswith("tfds:") else key
        src = TfdsSource(tfds_name, split, data_dir, **options)
        options = {}
    if classes is not None and low not in ("folder", "csv"):
        raise ValueError(f"a class list applies to image folders and CSV manifests only; {name!r} brings its own")
    if options:
        raise ValueError(f"unknown options {sorted(options)} for source {name!r}")
    return src
