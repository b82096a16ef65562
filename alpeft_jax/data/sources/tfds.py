"""Prepared TFDS datasets, read with ``tfds.data_source`` (random access to array_record files, no TensorFlow).

A split spec may slice and join splits (``train[:80%]``, ``train+validation``); slices cut the order TFDS
shuffled the records into when it built them. Sizes and class names come from the builder's metadata.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from typing import Any

import numpy as np

from alpeft_jax.data import classnames
from alpeft_jax.data import splits as splits_lib
from alpeft_jax.data.sources.core import MissingDataError, check_index, digest, files_fingerprint, rgb
from alpeft_jax.data.sources.registry import Counts, Kind, Request, register

__all__ = [
    "TfdsSource",
    "tfds_data_dir",
    "tfds_problem",
    "get_builder",
    "locate",
    "open_split",
    "read_fields",
    "text",
    "PATH_KEYS",
]

PATH_KEYS = ("file_name", "filename", "image/file_name", "image/filename", "id")  # features naming a record's file


def tfds_data_dir(data_dir: str | None) -> str:
    """The TFDS data directory a source reads: data_dir, else $TFDS_DATA_DIR, else ~/tensorflow_datasets."""
    return os.path.expanduser(data_dir or os.environ.get("TFDS_DATA_DIR") or "~/tensorflow_datasets")


def get_builder(name: str, data_dir: str | None) -> Any:
    """The TFDS builder of a dataset name; MissingDataError for names TFDS does not know."""
    import tensorflow_datasets as tfds
    from tensorflow_datasets.core.registered import DatasetNotFoundError

    try:
        return tfds.builder(name, data_dir=data_dir)
    except DatasetNotFoundError:
        raise MissingDataError(
            f"TFDS has no dataset named {name!r}; check the name (e.g. 'dtd', 'eurosat/rgb', 'oxford_flowers102')"
        ) from None


def _how(name: str, data_dir: str | None) -> str:
    return (
        f"build it once with `tfds build {name} --data_dir {data_dir or '~/tensorflow_datasets'} --file_format "
        "array_record` (needs TensorFlow and the raw download) or point --config.data.dir at a directory "
        "that holds it"
    )


def tfds_problem(name: str, data_dir: str | None) -> str | None:
    """Why a TFDS dataset cannot be read here (unknown, not prepared, not array_record), from metadata; else None."""
    try:
        b = get_builder(name, data_dir)
    except MissingDataError as e:
        return str(e)
    info = b.info
    if not list(info.splits):
        return (
            f"TFDS dataset {name!r} is not prepared under {data_dir or '~/tensorflow_datasets'}; {_how(name, data_dir)}"
        )
    if "array_record" not in str(info.file_format).lower():
        return (
            f"TFDS dataset {name!r} under {b.data_dir} is stored as {info.file_format}, not array_record; "
            f"{_how(name, data_dir)}"
        )
    return None


def locate(name: str, parts: Sequence[splits_lib.SplitPart], data_dir: str | None) -> Any:
    """The builder of a dataset whose splits include every part's; ValueError naming the splits it has."""
    b = get_builder(name, data_dir)
    available = list(b.info.splits)
    missing = [p.name for p in parts if available and p.name not in available]
    if missing:
        raise ValueError(
            f"TFDS dataset {name!r} has no split {missing[0]!r} (its splits: {', '.join(available)}); "
            "cut one, e.g. 'train[:80%]' and 'train[80%:]'"
        )
    return b


def open_split(name: str, split: str, data_dir: str | None, skip_images: bool = False) -> Any:
    """`tfds.data_source` over one whole split; with skip_images the image features stay encoded bytes."""
    import tensorflow_datasets as tfds

    decoders = None
    if skip_images:
        features = get_builder(name, data_dir).info.features
        decoders = {k: tfds.decode.SkipDecoding() for k, f in features.items() if isinstance(f, tfds.features.Image)}
    try:
        return tfds.data_source(name, split=split, data_dir=data_dir, download=False, decoders=decoders)
    except Exception as e:  # noqa: BLE001 - TFDS raises many types for "not there / wrong format"
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        where = data_dir or "~/tensorflow_datasets"
        raise MissingDataError(
            f"TFDS dataset {name!r} split {split!r} is not available as array_record under "
            f"{where} ({first}); {_how(name, data_dir)}"
        ) from None


def read_fields(name: str, split: str, data_dir: str | None, keys: Sequence[str]) -> list[dict[str, Any]]:
    """The given non-image features of every record of a split, read without decoding the images."""
    ds = open_split(name, split, data_dir, skip_images=True)
    try:
        if len(ds):
            ds[0]
    except Exception:  # noqa: BLE001 - mocked sources re-encode skipped images, which needs TensorFlow
        ds = open_split(name, split, data_dir)
    out: list[dict[str, Any]] = []
    for start in range(0, len(ds), 1024):
        keys_here = list(range(start, min(start + 1024, len(ds))))
        try:
            rows = ds.__getitems__(keys_here)  # one batched read
        except Exception:  # noqa: BLE001 - mocked sources implement only single reads
            rows = [ds[i] for i in keys_here]
        out.extend({k: ex[k] for k in keys} for ex in rows)
    return out


def prepared_files(name: str, data_dir: str | None) -> tuple[str, str]:
    """(version, a hash of its prepared files' names, sizes and times) of a prepared TFDS dataset."""
    builder = get_builder(name, data_dir)
    folder = str(builder.data_dir)
    files = sorted(os.path.join(folder, f) for f in os.listdir(folder)) if os.path.isdir(folder) else [folder]
    return str(builder.info.version), files_fingerprint(files)


def text(value: Any) -> str:
    """A TFDS text feature as str (bytes decoded as UTF-8)."""
    return value.decode("utf-8", "replace") if isinstance(value, bytes) else str(value)


class TfdsSource:
    """A prepared TFDS image-classification split spec, read with ``tfds.data_source`` (random access, no TF).

    ``split`` may slice and join splits (``train[:80%]``, ``train+validation``; see ``data.splits``). Example
    ids are record positions in their split (offset by the sizes of the splits before it in a union), so the
    same record has the same id in ``train`` and in ``train[80%:]``. ``builder`` is the dataset's builder when
    `locate` already found it.
    """

    def __init__(
        self,
        name: str,
        split: str,
        data_dir: str | None = None,
        image_key: str = "image",
        label_key: str = "label",
        coop_names: bool = False,
        *,
        builder: Any = None,
    ) -> None:
        self.name = f"{name}:{split}"
        self.image_key, self.label_key = image_key, label_key
        self._tfds_name, self._data_dir = name, data_dir
        parts = splits_lib.parse(split)
        if builder is None:
            builder = locate(name, parts, data_dir)
        self._splits: dict[str, Any] = {}
        offsets: dict[str, int] = {}
        which, pos, ids = [], [], []
        for part in parts:
            if part.name not in self._splits:
                offsets[part.name] = sum(len(ds) for ds in self._splits.values())
                self._splits[part.name] = open_split(name, part.name, data_dir)
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
            raise ValueError(
                f"TFDS dataset {name!r} has features {list(features)}; pass image_key= and "
                f"label_key= naming the image and the class label"
            )
        self._names = list(features[label_key].names)
        if coop_names:
            self._names = classnames.coop_names(name, self._names)
        self._path_key = next((k for k in PATH_KEYS if k in features), None)
        self._labels: np.ndarray | None = None

    def fingerprint(self) -> str:
        """The dataset's name, version, split spec and image feature, and its prepared files (sizes, times)."""
        return digest(self.name, self.image_key, *prepared_files(self._tfds_name, self._data_dir))

    @property
    def class_names(self) -> list[str]:
        """Class names from the builder's label feature."""
        return self._names

    @property
    def labels(self) -> np.ndarray:
        """int64[N] labels (one pass over the records, images left encoded, on first use; then cached)."""
        if self._labels is None:
            per_split = {
                s: np.asarray(
                    [int(r[self.label_key]) for r in read_fields(self._tfds_name, s, self._data_dir, [self.label_key])],
                    np.int64,
                )
                for s in self._bases
            }
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
        i = check_index(i, len(self))
        ex = self._splits[self._bases[self._which[i]]][int(self._pos[i])]
        path = ex.get(self._path_key) if self._path_key else None
        if path is not None:
            path = text(path)
        return dict(
            image=rgb(np.asarray(ex[self.image_key], np.uint8)),
            label=int(ex[self.label_key]),
            id=int(self._ids[i]),
            path=path,
        )


@register
class Tfds(Kind[Any]):
    """A prepared TFDS dataset: any name no other kind answers, or ``tfds:<name>``."""

    name = "tfds"
    title = "TFDS datasets"
    prefix = "tfds"
    catch_all = True
    split_file_kind = "tfds_split_file"
    options = ("image_key", "label_key", "coop_names")
    joins_splits = True

    def locate(self, request: Request) -> Any:
        """The dataset's builder, with every split the spec names."""
        return locate(request.dataset, request.parts, request.data_dir)

    def open(self, request: Request, found: Any) -> TfdsSource:
        return TfdsSource(request.dataset, request.split, request.data_dir, **request.options, builder=found)

    def inspect(self, request: Request, found: Any) -> Counts:
        """Split sizes and class names from the builder's metadata, once the dataset is prepared."""
        problem = tfds_problem(request.dataset, request.data_dir)
        if problem:
            raise MissingDataError(problem)
        info = found.info
        return Counts({s: info.splits[s].num_examples for s in info.splits}, list(info.features["label"].names))
