"""Pool sources: indexable image sets with stable integer ids, labels and class names.

Every source has ``len(source)``, ``source[i] -> dict(image=uint8[H, W, 3], label=int, id=int, path=str|None)``
(grey images expanded to three channels, label -1 when unknown), ``.labels`` (int64[N], read without decoding
images where the format allows), ``.ids`` (int64[N], the stable example ids, position order), ``.class_names``
and ``.name``. Built-in sources number their examples 0..N-1 in a deterministic order (sorted paths for image
folders, file order for CSV manifests and split files, record order for TFDS and IDX files), so the same data
gives the same ids on every machine.

Entry point: ``get_source(name, split, data_dir=None, split_file=None, **options)``; ``split`` is a split name
or a TFDS-style slice (``train[:80%]``, ``train[80%:]``; ``data.splits``):

- ``"fashion_mnist"`` - the four Fashion-MNIST IDX files from the Debian package ``dataset-fashion-mnist``
  (``/usr/share/datasets/fashion-mnist``) or from ``data_dir``; splits ``train`` / ``test``.
- ``"digits"`` - scikit-learn's 8x8 digits, split deterministically (every fifth image is ``test``).
- ``"folder"`` - an image folder ``data_dir/<class>/<image>`` (or ``data_dir/<split>/<class>/<image>``).
- ``"csv"`` - a manifest ``path,label`` (header required; paths relative to the CSV's directory; empty label =
  unlabelled). ``data_dir`` is the CSV file or a directory holding ``<split>.csv``.
- ``"coop:<dataset>"`` (or ``coop=True``) - the CoOp folder layout under the DATA root ``data_dir``: CoOp's
  ``split_zhou_*.json`` (e.g. ``dtd/images`` + ``dtd/split_zhou_DescribableTextures.json``; ``split_file``
  overrides it) or, for FGVC-Aircraft, ``fgvc_aircraft/images_variant_<split>.txt``; CoOp class names.
- anything else, optionally prefixed ``"tfds:"`` - a prepared TFDS dataset read with ``tfds.data_source``
  (random access, no TensorFlow needed). ``coop_names=True`` maps its class names to CoOp's prompt names.
  With ``split_file`` (a CoOp ``split_zhou_*.json``, relative paths looked up in the TFDS data directory),
  the split file's lists are applied to the TFDS records by file name: CoOp's split without a second copy
  of the images.

Slices cut a split's record order (TFDS: the order TFDS shuffled the records into when it built them); image
folders and CSV manifests, listed class by class, are cut from a fixed shuffle (seed 0) of that order, so
``train[:80%]`` and ``train[80%:]`` are disjoint and both hold every class. ``inspect_source`` gives a split's
size and class count from metadata alone (no image decoded), for the pre-flight checks.

Unreadable images: image files are decoded lazily, when an example is read. A file that cannot be decoded
raises ``CorruptImageError`` naming the file and how to exclude it (delete or move it out of the folder, or
drop its row from the CSV); nothing is skipped silently, so a labelled image is never lost without notice.
Files listed in a CSV manifest or a CoOp split file that do not exist are reported when the source is
built (``MissingDataError``). Classes with no images are allowed: they keep their index and name.
Missing datasets raise ``MissingDataError`` with the command that gets them.
"""

from __future__ import annotations

import csv
import dataclasses
import functools
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
from alpeft_jax.data import splits as splits_lib

__all__ = [
    "Source",
    "MissingDataError",
    "CorruptImageError",
    "ArraySource",
    "FileListSource",
    "TfdsSource",
    "TfdsSplitFileSource",
    "SubsetSource",
    "SourceInfo",
    "image_folder",
    "csv_manifest",
    "coop_split",
    "coop_aircraft",
    "inspect_source",
    "tfds_data_dir",
    "tfds_problem",
    "split_file_path",
    "missing_split_file",
    "source_kind",
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


def missing_split_file(split_file: str, dataset: str | None = None) -> str:
    """The message for an absent CoOp split file: where to download it and where to put it."""
    coop = classnames.dataset_info(dataset).get("coop", {}) if dataset else {}
    url = coop.get("split_url") if coop.get("split_file") == os.path.basename(split_file) else None
    where = f"from {url} (CoOp DATASETS.md)" if url else "from the links in CoOp's DATASETS.md"
    return (f"CoOp split file {split_file} does not exist; download {os.path.basename(split_file)} {where} into "
            f"{os.path.dirname(split_file) or '.'}, or pass --config.data.split_file=PATH")


def _read_coop_json(split_file: str, split: str, dataset: str | None = None) -> tuple[list[list[Any]], list[str]]:
    """The entries of one split of a CoOp ``split_zhou_*.json`` and the class names over all its splits."""
    if not os.path.isfile(split_file):
        raise MissingDataError(missing_split_file(split_file, dataset))
    with open(split_file, encoding="utf-8") as f:
        splits = json.load(f)
    if not isinstance(splits, dict) or split not in splits:
        have = sorted(splits) if isinstance(splits, dict) else []
        raise ValueError(f"split {split!r} not in {split_file}; available: {have}")
    names: dict[int, str] = {}
    for part in splits.values():
        for _, label, cname in part:
            names.setdefault(int(label), cname)
    n_cls = max(names) + 1 if names else 0
    return splits[split], [names.get(k, f"class_{k}") for k in range(n_cls)]


def coop_split(image_dir: str, split_file: str, split: str, dataset: str | None = None) -> FileListSource:
    """One split of a CoOp ``split_zhou_*.json`` file ({split: [[path, label, classname], ...]}) over image_dir."""
    entries, raw = _read_coop_json(split_file, split, dataset)
    class_names = classnames.coop_names(dataset, raw) if dataset else raw
    paths = [os.path.join(image_dir, p) for p, _, _ in entries]
    missing = [p for p in paths if not os.path.isfile(p)]
    if missing:
        raise MissingDataError(f"{len(missing)} of {len(paths)} images of {split_file} [{split}] are missing under "
                               f"{image_dir} (first: {missing[0]}); unpack the dataset images there")
    labels = np.asarray([int(lab) for _, lab, _ in entries], np.int64)
    return FileListSource(paths, labels, class_names, name=f"coop:{dataset or split_file}:{split}",
                          exclude_hint=f"drop its entry from {split_file}")


_AIRCRAFT_SPLITS = {"train": "train", "val": "val", "validation": "val", "test": "test"}


def _read_variant_list(root: str, split: str) -> tuple[list[tuple[str, str]], list[str]]:
    """(image id, variant) rows of FGVC-Aircraft's images_variant_<split>.txt and the variants.txt class list."""
    if split not in _AIRCRAFT_SPLITS:
        raise ValueError(f"FGVC-Aircraft split must be one of train, val, test; got {split!r}")
    lists = [os.path.join(root, "variants.txt"), os.path.join(root, f"images_variant_{_AIRCRAFT_SPLITS[split]}.txt")]
    for path in lists:
        if not os.path.isfile(path):
            raise MissingDataError(f"{path} does not exist; unpack fgvc-aircraft-2013b.tar.gz and move its data/ "
                                   f"folder to {root} (CoOp DATASETS.md, FGVCAircraft)")
    with open(lists[0], encoding="utf-8") as f:
        variants = [line.strip() for line in f if line.strip()]
    with open(lists[1], encoding="utf-8") as f:
        rows = [tuple(line.strip().split(" ", 1)) for line in f if line.strip()]
    bad = [r for r in rows if len(r) != 2 or r[1] not in variants]
    if bad:
        raise ValueError(f"{lists[1]}: {len(bad)} line(s) are not '<image id> <variant from variants.txt>' "
                         f"(first: {' '.join(bad[0])!r}); restore the file from the archive")
    return [(r[0], r[1]) for r in rows], variants


def coop_aircraft(root: str, split: str) -> FileListSource:
    """FGVC-Aircraft as CoOp reads it: ``images_variant_<split>.txt`` rows over ``root/images/<id>.jpg``."""
    rows, variants = _read_variant_list(root, split)
    index = {v: k for k, v in enumerate(variants)}
    paths = [os.path.join(root, "images", f"{image_id}.jpg") for image_id, _ in rows]
    missing = [p for p in paths if not os.path.isfile(p)]
    if missing:
        raise MissingDataError(f"{len(missing)} of {len(paths)} images of FGVC-Aircraft [{split}] are missing "
                               f"(first: {missing[0]}); unpack the archive's data/images there")
    labels = np.asarray([index[v] for _, v in rows], np.int64)
    return FileListSource(paths, labels, variants, name=f"coop:fgvc_aircraft:{split}",
                          exclude_hint=f"drop its line from {root}/images_variant_{_AIRCRAFT_SPLITS[split]}.txt")


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


def tfds_data_dir(data_dir: str | None) -> str:
    """The TFDS data directory a source reads: data_dir, else $TFDS_DATA_DIR, else ~/tensorflow_datasets."""
    return os.path.expanduser(data_dir or os.environ.get("TFDS_DATA_DIR") or "~/tensorflow_datasets")


def _tfds_builder(name: str, data_dir: str | None) -> Any:
    import tensorflow_datasets as tfds
    from tensorflow_datasets.core.registered import DatasetNotFoundError

    try:
        return tfds.builder(name, data_dir=data_dir)
    except DatasetNotFoundError:
        raise MissingDataError(f"TFDS has no dataset named {name!r}; check the name (e.g. 'dtd', "
                               "'eurosat/rgb', 'oxford_flowers102')") from None


def _tfds_how(name: str, data_dir: str | None) -> str:
    return (f"build it once with `tfds build {name} --data_dir {data_dir or '~/tensorflow_datasets'} --file_format "
            "array_record` (needs TensorFlow and the raw download) or point --config.data.dir at a directory "
            "that holds it")


def tfds_problem(name: str, data_dir: str | None) -> str | None:
    """Why a TFDS dataset cannot be read here (unknown, not prepared, not array_record), from metadata; else None."""
    try:
        builder = _tfds_builder(name, data_dir)
    except MissingDataError as e:
        return str(e)
    info = builder.info
    if not list(info.splits):
        return (f"TFDS dataset {name!r} is not prepared under {data_dir or '~/tensorflow_datasets'}; "
                f"{_tfds_how(name, data_dir)}")
    if "array_record" not in str(info.file_format).lower():
        return (f"TFDS dataset {name!r} under {builder.data_dir} is stored as {info.file_format}, not array_record; "
                f"{_tfds_how(name, data_dir)}")
    return None


def _open_split(name: str, split: str, data_dir: str | None, skip_images: bool = False) -> Any:
    """`tfds.data_source` over one whole split; with skip_images the image features stay encoded bytes."""
    import tensorflow_datasets as tfds

    decoders = None
    if skip_images:
        features = _tfds_builder(name, data_dir).info.features
        decoders = {k: tfds.decode.SkipDecoding() for k, f in features.items()
                    if isinstance(f, tfds.features.Image)}
    try:
        return tfds.data_source(name, split=split, data_dir=data_dir, download=False, decoders=decoders)
    except Exception as e:  # noqa: BLE001 - TFDS raises many types for "not there / wrong format"
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        where = data_dir or "~/tensorflow_datasets"
        raise MissingDataError(f"TFDS dataset {name!r} split {split!r} is not available as array_record under "
                               f"{where} ({first}); {_tfds_how(name, data_dir)}") from None


def _read_fields(name: str, split: str, data_dir: str | None, keys: Sequence[str]) -> list[dict[str, Any]]:
    """The given non-image features of every record of a split, read without decoding the images."""
    ds = _open_split(name, split, data_dir, skip_images=True)
    try:
        if len(ds):
            ds[0]
    except Exception:  # noqa: BLE001 - mocked sources re-encode skipped images, which needs TensorFlow
        ds = _open_split(name, split, data_dir)
    out: list[dict[str, Any]] = []
    for start in range(0, len(ds), 1024):
        keys_here = list(range(start, min(start + 1024, len(ds))))
        try:
            rows = ds.__getitems__(keys_here)  # one batched read
        except Exception:  # noqa: BLE001 - mocked sources implement only single reads
            rows = [ds[i] for i in keys_here]
        out.extend({k: ex[k] for k in keys} for ex in rows)
    return out


def _text(value: Any) -> str:
    return value.decode("utf-8", "replace") if isinstance(value, bytes) else str(value)


def _check_tfds_splits(builder: Any, name: str, parts: Sequence[splits_lib.SplitPart]) -> None:
    available = list(builder.info.splits)
    missing = [p.name for p in parts if available and p.name not in available]
    if missing:
        raise ValueError(f"TFDS dataset {name!r} has no split {missing[0]!r} (its splits: {', '.join(available)}); "
                         "cut one, e.g. 'train[:80%]' and 'train[80%:]'")


class TfdsSource:
    """A prepared TFDS image-classification split spec, read with ``tfds.data_source`` (random access, no TF).

    ``split`` may slice and join splits (``train[:80%]``, ``train+validation``; see ``data.splits``). Example
    ids are record positions in their split (offset by the sizes of the splits before it in a union), so the
    same record has the same id in ``train`` and in ``train[80%:]``.
    """

    def __init__(
        self,
        name: str,
        split: str,
        data_dir: str | None = None,
        image_key: str = "image",
        label_key: str = "label",
        coop_names: bool = False,
    ) -> None:
        self.name = f"{name}:{split}"
        self.image_key, self.label_key = image_key, label_key
        self._tfds_name, self._data_dir = name, data_dir
        builder = _tfds_builder(name, data_dir)
        parts = splits_lib.parse(split)
        _check_tfds_splits(builder, name, parts)
        self._splits: dict[str, Any] = {}
        offsets: dict[str, int] = {}
        which, pos, ids = [], [], []
        for part in parts:
            if part.name not in self._splits:
                offsets[part.name] = sum(len(ds) for ds in self._splits.values())
                self._splits[part.name] = _open_split(name, part.name, data_dir)
            p = splits_lib.positions(part, len(self._splits[part.name]))
            which.append(np.full(len(p), list(self._splits).index(part.name), np.int64))
            pos.append(p)
            ids.append(offsets[part.name] + p)
        self._bases = list(self._splits)
        self._which, self._pos, self._ids = (np.concatenate(a) for a in (which, pos, ids))
        if len(np.unique(self._ids)) != len(self._ids):
            raise ValueError(f"split {split!r} of {name!r} reads some records twice; make its parts disjoint")
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
        """int64[N] labels (one pass over the records, images left encoded, on first use; then cached)."""
        if self._labels is None:
            per_split = {s: np.asarray([int(r[self.label_key]) for r in _read_fields(
                self._tfds_name, s, self._data_dir, [self.label_key])], np.int64) for s in self._bases}
            self._labels = np.empty(len(self._pos), np.int64)
            for k, s in enumerate(self._bases):
                sel = self._which == k
                self._labels[sel] = per_split[s][self._pos[sel]]
        return self._labels

    @property
    def ids(self) -> np.ndarray:
        """int64[N] example ids (record positions in their split)."""
        return self._ids

    def __len__(self) -> int:
        return len(self._pos)

    def __getitem__(self, i: int) -> dict[str, Any]:
        i = _check_index(i, len(self))
        ex = self._splits[self._bases[self._which[i]]][int(self._pos[i])]
        path = ex.get(self._path_key) if self._path_key else None
        if path is not None:
            path = _text(path)
        return dict(image=_rgb(np.asarray(ex[self.image_key], np.uint8)), label=int(ex[self.label_key]),
                    id=int(self._ids[i]), path=path)


@functools.lru_cache(maxsize=8)
def _file_index(name: str, data_dir: str | None) -> dict[str, list[tuple[str, int, str, str]]]:
    """basename -> [(split, position, file name, lower-case class name)] over every split of a TFDS dataset."""
    builder = _tfds_builder(name, data_dir)
    features = builder.info.features
    path_key = next((k for k in _TFDS_PATH_KEYS if k in features), None)
    if path_key is None:
        raise ValueError(f"TFDS dataset {name!r} stores no file names ({list(features)}); a CoOp split file cannot "
                         "be matched to its records: use the CoOp folder layout (data.name='coop:<dataset>')")
    names = [n.lower() for n in features["label"].names]
    index: dict[str, list[tuple[str, int, str, str]]] = {}
    for split in builder.info.splits:
        for k, r in enumerate(_read_fields(name, split, data_dir, [path_key, "label"])):
            fname = _text(r[path_key])
            index.setdefault(os.path.basename(fname), []).append((split, k, fname, names[int(r["label"])]))
    return index


def _match(path: str, cands: list[tuple[str, int, str, str]]) -> list[tuple[str, int, str, str]]:
    """The records a split-file path names: the exact file name, else the one whose class is the path's folder."""
    if len(cands) <= 1:
        return cands
    exact = [c for c in cands if c[2] == path]
    if exact:
        return exact
    folder = path.replace("\\", "/").split("/")[0].lower() if "/" in path else ""
    return [c for c in cands if folder and c[3] == folder]


class TfdsSplitFileSource(_ListedSource):
    """One split of a CoOp ``split_zhou_*.json`` over a prepared TFDS dataset's records, matched by file name.

    Every split of the TFDS dataset is indexed by its records' file names (images left encoded), and each
    split-file path names one record: by its file name, or where several records share it (Caltech-101's
    ``image_0001.jpg``) by file name and class folder. Labels and class names are the split file's (CoOp's
    order, CoOp's prompt names); ids are positions in the split-file list.
    """

    def __init__(self, name: str, split_file: str, split: str, data_dir: str | None = None,
                 image_key: str = "image") -> None:
        entries, raw = _read_coop_json(split_file, split, name)
        problem = tfds_problem(name, data_dir)
        if problem:
            raise MissingDataError(problem)
        index = _file_index(name, data_dir)
        records, missing, ambiguous = [], [], []
        for p, _, _ in entries:
            found = _match(p, index.get(os.path.basename(p), []))
            if len(found) == 1:
                records.append(found[0][:2])
            else:
                (missing if not found else ambiguous).append(p)
        if missing or ambiguous:
            what = [f"{len(missing)} have no record (first: {missing[0]})"] if missing else []
            what += [f"{len(ambiguous)} match several records (first: {ambiguous[0]})"] if ambiguous else []
            raise MissingDataError(f"{len(missing) + len(ambiguous)} of {len(entries)} entries of {split_file} "
                                   f"[{split}] do not name one record of TFDS {name!r}: {'; '.join(what)}; the "
                                   "split file belongs to another dataset or the TFDS build is incomplete")
        self.name = f"{name}:{os.path.basename(split_file)}:{split}"
        self.image_key = image_key
        self.paths = [p for p, _, _ in entries]
        self.labels_ = np.asarray([int(lab) for _, lab, _ in entries], np.int64)
        self.ids_ = np.arange(len(entries), dtype=np.int64)
        self.class_names_ = classnames.coop_names(name, raw)
        self._records = records
        self._tfds_name, self._data_dir = name, data_dir
        self._splits: dict[str, Any] = {}

    def __len__(self) -> int:
        return len(self._records)

    def __getitem__(self, i: int) -> dict[str, Any]:
        i = _check_index(i, len(self))
        split, k = self._records[i]
        if split not in self._splits:
            self._splits[split] = _open_split(self._tfds_name, split, self._data_dir)
        ex = self._splits[split][k]
        return dict(image=_rgb(np.asarray(ex[self.image_key], np.uint8)), label=int(self.labels_[i]), id=i,
                    path=self.paths[i])


# --------------------------------------------------------------------------------------------------------------
# Slices of other sources


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
        return self.source[int(self.positions[_check_index(i, len(self))])]


_SHUFFLED_KINDS = ("folder", "csv")  # file lists in path order (class by class): slices cut a fixed shuffle


def _slice_positions(part: splits_lib.SplitPart, n: int, shuffle: bool) -> np.ndarray:
    order = np.random.default_rng(0).permutation(n) if shuffle else np.arange(n)
    return np.sort(order[splits_lib.positions(part, n)])


# --------------------------------------------------------------------------------------------------------------
# Entry point


def _split_dir(data_dir: str, split: str | None) -> str:
    if split and os.path.isdir(os.path.join(data_dir, split)):
        return os.path.join(data_dir, split)
    return data_dir


def _resolve_file(path: str, base_dir: str) -> str:
    path = os.path.expanduser(path)
    return path if os.path.isabs(path) or os.path.isfile(path) else os.path.join(base_dir, path)


def source_kind(name: str, split_file: str | None) -> tuple[str, str]:
    """(kind, dataset) of a source name: fashion_mnist, digits, folder, csv, coop, tfds_split_file or tfds."""
    key = name.strip()
    low = key.lower().replace("-", "_")
    if low in ("fashion_mnist", "fmnist"):
        return "fashion_mnist", key
    if low in ("digits", "sklearn_digits"):
        return "digits", key
    if low in ("folder", "csv"):
        return low, key
    if low.startswith("coop:"):
        return "coop", key.split(":", 1)[1]
    tfds_name = key.split(":", 1)[1] if low.startswith("tfds:") else key
    return ("tfds_split_file" if split_file else "tfds"), tfds_name


def _coop_files(dataset: str, data_dir: str | None, split_file: str | None) -> tuple[dict[str, Any], str, str]:
    """(CoOp record, dataset folder, split file) of a CoOp-layout dataset under the DATA root data_dir."""
    info = classnames.dataset_info(dataset)
    if "coop" not in info:
        known = [k for k in classnames.known_datasets() if "coop" in classnames.dataset_info(k)]
        raise ValueError(f"no CoOp layout known for {dataset!r}; known: {', '.join(known)}")
    if not data_dir:
        raise ValueError("a CoOp-layout source needs --config.data.dir = the CoOp DATA root (holding "
                         f"{info['coop']['dir']}/)")
    c = info["coop"]
    root = os.path.join(data_dir, c["dir"])
    sf = _resolve_file(split_file, root) if split_file else os.path.join(root, c.get("split_file", ""))
    return c, root, sf


def split_file_path(name: str, data_dir: str | None, split_file: str | None) -> str:
    """Where a source reads its CoOp split file: split_file (relative: in the TFDS data directory, or in the
    CoOp dataset folder), else the CoOp folder's own; '' for sources without one."""
    kind, dataset = source_kind(name, split_file)
    if kind == "tfds_split_file":
        return _resolve_file(split_file or "", tfds_data_dir(data_dir))
    if kind == "coop" and data_dir:
        c, _, sf = _coop_files(dataset, data_dir, split_file)
        return "" if c.get("format") == "variants" and not split_file else sf
    return ""


def get_source(name: str, split: str = "train", data_dir: str | None = None, split_file: str | None = None,
               **options: Any) -> Source:
    """Open a pool source by name and split spec (see the module docstring for the names and options)."""
    kind, dataset = source_kind(name, split_file)
    classes = options.pop("classes", None)
    if isinstance(classes, str):
        classes = [c.strip() for c in classes.split(",") if c.strip()]
    if options.pop("coop", False) and kind == "tfds":
        kind = "coop"
    if classes is not None and kind not in ("folder", "csv"):
        raise ValueError(f"a class list applies to image folders and CSV manifests only; {name!r} brings its own")
    if kind == "tfds":
        return TfdsSource(dataset, split, data_dir, **options)
    if options:
        raise ValueError(f"unknown options {sorted(options)} for source {name!r}")
    parts = splits_lib.parse(split)
    if len(parts) > 1:
        raise ValueError(f"split {split!r}: joining splits with '+' works for TFDS datasets only")
    part = parts[0]
    base = part.name
    if kind == "fashion_mnist":
        src: Source = fashion_mnist(base, data_dir)
    elif kind == "digits":
        src = digits(base)
    elif kind == "folder":
        if not data_dir:
            raise ValueError("an image-folder source needs data_dir (--config.data.dir) = the folder root")
        src = image_folder(_split_dir(data_dir, base), classes)
    elif kind == "csv":
        if not data_dir:
            raise ValueError("a CSV source needs data_dir (--config.data.dir): the CSV file or a folder with "
                             "<split>.csv")
        path = os.path.join(data_dir, f"{base}.csv") if os.path.isdir(data_dir) else data_dir
        src = csv_manifest(path, classes)
    elif kind == "coop":
        c, root, sf = _coop_files(dataset, data_dir, split_file)
        if c.get("format") == "variants" and not split_file:
            src = coop_aircraft(root, base)
        else:
            src = coop_split(os.path.normpath(os.path.join(root, c["images"])), sf, base, dataset)
    else:  # a CoOp split file over TFDS records
        src = TfdsSplitFileSource(dataset, split_file_path(name, data_dir, split_file), base, data_dir)
    if part.sliced:
        cut = _slice_positions(part, len(src), kind in _SHUFFLED_KINDS)
        src = SubsetSource(src, cut, f"{src.name}{str(part)[len(base):]}")
    return src


# --------------------------------------------------------------------------------------------------------------
# Metadata only (the pre-flight checks)


@dataclasses.dataclass(frozen=True)
class SourceInfo:
    """What a split spec holds, read from metadata: example count and class count."""

    size: int
    num_classes: int


def _sliced_size(parts: Sequence[splits_lib.SplitPart], sizes: dict[str, int]) -> int:
    return sum(len(splits_lib.positions(p, sizes[p.name])) for p in parts)


def _count_images(root: str) -> tuple[int, int]:
    folders = sorted(d for d in os.listdir(root) if os.path.isdir(os.path.join(root, d)) and not d.startswith("."))
    n = sum(1 for d in folders for _, _, files in os.walk(os.path.join(root, d)) for f in files if _is_image(f))
    return n, len(folders)


def inspect_source(name: str, split: str = "train", data_dir: str | None = None,
                   split_file: str | None = None) -> SourceInfo:
    """Size and class count of a split spec without decoding any image (file listings, headers, TFDS metadata).

    Raises what `get_source` would: MissingDataError (with how to get the data) or ValueError.
    """
    kind, dataset = source_kind(name, split_file)
    parts = splits_lib.parse(split)
    if kind != "tfds" and len(parts) > 1:
        raise ValueError(f"split {split!r}: joining splits with '+' works for TFDS datasets only")
    base = parts[0].name
    if kind == "tfds":
        builder = _tfds_builder(dataset, data_dir)
        _check_tfds_splits(builder, dataset, parts)
        problem = tfds_problem(dataset, data_dir)
        if problem:
            raise MissingDataError(problem)
        info = builder.info
        sizes = {s: info.splits[s].num_examples for s in info.splits}
        return SourceInfo(_sliced_size(parts, sizes), info.features["label"].num_classes)
    if kind == "tfds_split_file":
        entries, raw = _read_coop_json(split_file_path(name, data_dir, split_file), base, dataset)
        problem = tfds_problem(dataset, data_dir)
        if problem:
            raise MissingDataError(problem)
        return SourceInfo(_sliced_size(parts, {base: len(entries)}), len(raw))
    if kind == "fashion_mnist":
        prefix = {"train": "train", "test": "t10k", "t10k": "t10k"}.get(base)
        if prefix is None:
            raise ValueError(f"Fashion-MNIST split must be 'train' or 'test', got {base!r}")
        d = data_dir or FASHION_MNIST_DIR
        path = next((p for p in (os.path.join(d, f"{prefix}-labels-idx1-ubyte{e}") for e in (".gz", ""))
                     if os.path.isfile(p)), None)
        if path is None or not any(os.path.isfile(os.path.join(d, f"{prefix}-images-idx3-ubyte{e}"))
                                   for e in (".gz", "")):
            raise MissingDataError(f"Fashion-MNIST {prefix} files not found in {d}: `apt-get install "
                                   "dataset-fashion-mnist` or pass --config.data.dir holding the four IDX files")
        with (gzip.open if path.endswith(".gz") else open)(path, "rb") as f:
            n = struct.unpack(">I", f.read(8)[4:8])[0]
        return SourceInfo(_sliced_size(parts, {base: n}), 10)
    if kind == "digits":
        if base not in ("train", "test", "all"):
            raise ValueError(f"digits split must be 'train', 'test' or 'all', got {base!r}")
        n = {"train": 1438, "test": 359, "all": 1797}[base]  # index % 5 == 4 is test
        return SourceInfo(_sliced_size(parts, {base: n}), 10)
    if kind == "folder":
        if not data_dir:
            raise ValueError("an image-folder source needs --config.data.dir = the folder root")
        root = _split_dir(data_dir, base)
        if not os.path.isdir(root):
            raise MissingDataError(f"image folder {root} does not exist; expected {root}/<class>/<image files>")
        n, k = _count_images(root)
        if k == 0:
            raise MissingDataError(f"no class folders under {root}; expected {root}/<class>/<image files>")
        return SourceInfo(_sliced_size(parts, {base: n}), k)
    if kind == "csv":
        if not data_dir:
            raise ValueError("a CSV source needs --config.data.dir: the CSV file or a folder with <split>.csv")
        src = csv_manifest(os.path.join(data_dir, f"{base}.csv") if os.path.isdir(data_dir) else data_dir)
        return SourceInfo(_sliced_size(parts, {base: len(src)}), len(src.class_names))
    c, root, sf = _coop_files(dataset, data_dir, split_file)
    if c.get("format") == "variants" and not split_file:
        rows, variants = _read_variant_list(root, base)
        images = [os.path.join(root, "images", f"{r[0]}.jpg") for r in rows]
        n, k = len(rows), len(variants)
    else:
        entries, raw = _read_coop_json(sf, base, dataset)
        image_dir = os.path.normpath(os.path.join(root, c["images"]))
        images = [os.path.join(image_dir, e[0]) for e in entries]
        n, k = len(entries), len(raw)
    missing = [p for p in images if not os.path.isfile(p)]
    if missing:
        raise MissingDataError(f"{len(missing)} of {len(images)} images of {dataset} [{base}] are missing (first: "
                               f"{missing[0]}); unpack the dataset images there (CoOp DATASETS.md)")
    return SourceInfo(_sliced_size(parts, {base: n}), k)
