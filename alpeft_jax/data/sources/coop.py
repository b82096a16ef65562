"""CoOp's splits: its ``split_zhou_*.json`` lists (and FGVC-Aircraft's variant lists) over the CoOp folder layout
(kind ``coop``), or over the records of a prepared TFDS dataset matched by file name (kind ``tfds_split_file``).

A split file is ``{split: [[path, label, classname], ...]}``; its labels and (CoOp prompt) class names are what
both kinds report, and every listed image or record is checked when the split is located.
"""

from __future__ import annotations

import functools
import json
import os
from typing import Any

import numpy as np

from alpeft_jax.data import classnames
from alpeft_jax.data.sources import tfds as tfds_kind
from alpeft_jax.data.sources.core import ListedSource, MissingDataError, check_index, digest, rgb
from alpeft_jax.data.sources.files import FileList, FileListSource, require_files
from alpeft_jax.data.sources.registry import Counts, Kind, Request, register

__all__ = ["coop_split", "coop_aircraft", "missing_split_file", "TfdsSplitFileSource", "resolve_file"]

_AIRCRAFT_SPLITS = {"train": "train", "val": "val", "validation": "val", "test": "test"}


def missing_split_file(split_file: str, dataset: str | None = None) -> str:
    """The message for an absent CoOp split file: where to download it and where to put it."""
    coop = classnames.dataset_info(dataset).get("coop", {}) if dataset else {}
    url = coop.get("split_url") if coop.get("split_file") == os.path.basename(split_file) else None
    where = f"from {url} (CoOp DATASETS.md)" if url else "from the links in CoOp's DATASETS.md"
    return (
        f"CoOp split file {split_file} does not exist; download {os.path.basename(split_file)} {where} into "
        f"{os.path.dirname(split_file) or '.'}, or pass --config.data.split_file=PATH"
    )


def resolve_file(path: str, base_dir: str) -> str:
    """path with ~ expanded; relative and not a file here: inside base_dir."""
    path = os.path.expanduser(path)
    return path if os.path.isabs(path) or os.path.isfile(path) else os.path.join(base_dir, path)


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


# --------------------------------------------------------------------------------------------------------------
# The CoOp folder layout


def _list_split(image_dir: str, split_file: str, split: str, dataset: str | None) -> FileList:
    entries, raw = _read_coop_json(split_file, split, dataset)
    paths = [os.path.join(image_dir, p) for p, _, _ in entries]
    require_files(paths, f"{split_file} [{split}]", f"unpack the dataset images into {image_dir} (CoOp DATASETS.md)")
    return FileList(
        split_file,
        paths,
        np.asarray([int(lab) for _, lab, _ in entries], np.int64),
        classnames.coop_names(dataset, raw) if dataset else raw,
        f"coop:{dataset or split_file}:{split}",
        f"drop its entry from {split_file}",
    )


def coop_split(image_dir: str, split_file: str, split: str, dataset: str | None = None) -> FileListSource:
    """One split of a CoOp ``split_zhou_*.json`` file ({split: [[path, label, classname], ...]}) over image_dir."""
    return _list_split(image_dir, split_file, split, dataset).source()


def _list_aircraft(root: str, split: str) -> FileList:
    """FGVC-Aircraft's images_variant_<split>.txt rows over root/images/<id>.jpg, classes from variants.txt."""
    if split not in _AIRCRAFT_SPLITS:
        raise ValueError(f"FGVC-Aircraft split must be one of train, val, test; got {split!r}")
    lists = [os.path.join(root, "variants.txt"), os.path.join(root, f"images_variant_{_AIRCRAFT_SPLITS[split]}.txt")]
    for path in lists:
        if not os.path.isfile(path):
            where = classnames.download_hint("fgvc_aircraft").replace("DATA/fgvc_aircraft", root)
            raise MissingDataError(f"{path} does not exist; {where}")
    with open(lists[0], encoding="utf-8") as f:
        variants = [line.strip() for line in f if line.strip()]
    with open(lists[1], encoding="utf-8") as f:
        rows = [tuple(line.strip().split(" ", 1)) for line in f if line.strip()]
    bad = [r for r in rows if len(r) != 2 or r[1] not in variants]
    if bad:
        raise ValueError(
            f"{lists[1]}: {len(bad)} line(s) are not '<image id> <variant from variants.txt>' "
            f"(first: {' '.join(bad[0])!r}); restore the file from the archive"
        )
    index = {v: k for k, v in enumerate(variants)}
    paths = [os.path.join(root, "images", f"{r[0]}.jpg") for r in rows]
    require_files(paths, f"FGVC-Aircraft [{split}]", f"unpack the archive's data/images into {root}/images")
    return FileList(
        lists[1],
        paths,
        np.asarray([index[r[1]] for r in rows], np.int64),
        variants,
        f"coop:fgvc_aircraft:{split}",
        f"drop its line from {lists[1]}",
    )


def coop_aircraft(root: str, split: str) -> FileListSource:
    """FGVC-Aircraft as CoOp reads it: ``images_variant_<split>.txt`` rows over ``root/images/<id>.jpg``."""
    return _list_aircraft(root, split).source()


def _coop_files(dataset: str, data_dir: str | None, split_file: str | None) -> tuple[dict[str, Any], str, str]:
    """(CoOp record, dataset folder, split file) of a CoOp-layout dataset under the DATA root data_dir."""
    info = classnames.dataset_info(dataset)
    if "coop" not in info:
        known = [k for k in classnames.known_datasets() if "coop" in classnames.dataset_info(k)]
        raise ValueError(f"no CoOp layout known for {dataset!r}; known: {', '.join(known)}")
    if not data_dir:
        raise ValueError(
            f"a CoOp-layout source needs --config.data.dir = the CoOp DATA root (holding {info['coop']['dir']}/)"
        )
    c = info["coop"]
    root = os.path.join(data_dir, c["dir"])
    sf = resolve_file(split_file, root) if split_file else os.path.join(root, c.get("split_file", ""))
    return c, root, sf


@register
class Coop(Kind[FileList]):
    """``coop:<dataset>``: CoOp's folder layout under the DATA root ``data_dir``, CoOp's split and class names."""

    name = "coop"
    title = "CoOp folder layouts"
    prefix = "coop"

    def locate(self, request: Request) -> FileList:
        """The split's list (split file, or FGVC-Aircraft's variant list), every image present."""
        c, root, sf = _coop_files(request.dataset, request.data_dir, request.split_file)
        if c.get("format") == "variants" and not request.split_file:
            return _list_aircraft(root, request.base)
        return _list_split(os.path.normpath(os.path.join(root, c["images"])), sf, request.base, request.dataset)

    def open(self, request: Request, found: FileList) -> FileListSource:
        return found.source()

    def inspect(self, request: Request, found: FileList) -> Counts:
        return found.counts(request.base)

    def split_file_path(self, dataset: str, data_dir: str | None, split_file: str | None) -> str:
        """split_file (relative: in the dataset folder), else the folder's own; '' for FGVC-Aircraft's lists."""
        if not data_dir:
            return ""
        c, _, sf = _coop_files(dataset, data_dir, split_file)
        return "" if c.get("format") == "variants" and not split_file else sf


# --------------------------------------------------------------------------------------------------------------
# A split file over TFDS records


@functools.lru_cache(maxsize=8)
def _file_index(name: str, data_dir: str | None) -> dict[str, list[tuple[str, int, str, str]]]:
    """basename -> [(split, position, file name, TFDS class name)] over every split of a TFDS dataset."""
    builder = tfds_kind.get_builder(name, data_dir)
    features = builder.info.features
    path_key = next((k for k in tfds_kind.PATH_KEYS if k in features), None)
    if path_key is None:
        raise ValueError(
            f"TFDS dataset {name!r} stores no file names ({list(features)}); a CoOp split file cannot "
            "be matched to its records: use the CoOp folder layout (data.name='coop:<dataset>')"
        )
    names = list(features["label"].names)
    index: dict[str, list[tuple[str, int, str, str]]] = {}
    for split in builder.info.splits:
        for k, r in enumerate(tfds_kind.read_fields(name, split, data_dir, [path_key, "label"])):
            fname = tfds_kind.text(r[path_key])
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
    return [c for c in cands if folder and c[3].lower() == folder]


def _same_class(name: str, listed: str, record: str) -> bool:
    """Whether a split-file class name and a TFDS class name are one class (both through the CoOp renames)."""

    def norm(n: str) -> str:
        return " ".join(classnames.coop_names(name, [n])[0].replace("_", " ").lower().split())

    return norm(listed) == norm(record)


def _class_mismatch(name: str, entries: list[list[Any]], classes: list[str]) -> str:
    """Why the records matched to entries are not of the entries' classes ('' when they are).

    For a dataset with an asset file the names must agree (through its renames); for any dataset each split-file
    label must go with one TFDS class.
    """
    known = bool(classnames.dataset_info(name).get("class_names"))
    wrong = [(p, c, r) for (p, _, c), r in zip(entries, classes) if known and not _same_class(name, c, r)]
    if wrong:
        p, c, r = wrong[0]
        return (
            f"{len(wrong)} of {len(entries)} entries name a record of another class (first: {p} is {c!r} in the "
            f"split file, {r!r} in TFDS)"
        )
    seen: dict[int, str] = {}
    for (p, lab, c), r in zip(entries, classes):
        if seen.setdefault(int(lab), r) != r:
            return f"label {int(lab)} ({c!r}) names records of TFDS classes {seen[int(lab)]!r} and {r!r} (at {p})"
    return ""


SplitList = tuple[list[list[Any]], list[str]]  # a split's entries and the split file's class names


def _locate_over_tfds(name: str, split_file: str, split: str, data_dir: str | None) -> SplitList:
    """A split of the split file, once the TFDS dataset it is applied to is prepared."""
    listed = _read_coop_json(split_file, split, name)
    problem = tfds_kind.tfds_problem(name, data_dir)
    if problem:
        raise MissingDataError(problem)
    return listed


class TfdsSplitFileSource(ListedSource):
    """One split of a CoOp ``split_zhou_*.json`` over a prepared TFDS dataset's records, matched by file name.

    Every split of the TFDS dataset is indexed by its records' file names (images left encoded), and each
    split-file path names one record: by its file name, or where several records share it (Caltech-101's
    ``image_0001.jpg``) by file name and class folder; each matched record must be of the entry's class.
    Labels and class names are the split file's (CoOp's order, CoOp's prompt names); ids are positions in the
    split-file list. ``listed`` is the split's entries
    and class names when they were already located.
    """

    def __init__(
        self,
        name: str,
        split_file: str,
        split: str,
        data_dir: str | None = None,
        image_key: str = "image",
        *,
        listed: SplitList | None = None,
    ) -> None:
        entries, raw = listed or _locate_over_tfds(name, split_file, split, data_dir)
        index = _file_index(name, data_dir)
        records: list[tuple[str, int]] = []
        classes: list[str] = []
        missing: list[str] = []
        ambiguous: list[str] = []
        for p, _, _ in entries:
            found = _match(p, index.get(os.path.basename(p), []))
            if len(found) == 1:
                records.append(found[0][:2])
                classes.append(found[0][3])
            else:
                (missing if not found else ambiguous).append(p)
        if missing or ambiguous:
            what = [f"{len(missing)} have no record (first: {missing[0]})"] if missing else []
            what += [f"{len(ambiguous)} match several records (first: {ambiguous[0]})"] if ambiguous else []
            raise MissingDataError(
                f"{len(missing) + len(ambiguous)} of {len(entries)} entries of {split_file} "
                f"[{split}] do not name one record of TFDS {name!r}: {'; '.join(what)}; the "
                "split file belongs to another dataset or the TFDS build is incomplete"
            )
        mismatch = _class_mismatch(name, entries, classes)
        if mismatch:
            raise ValueError(
                f"{split_file} [{split}] does not fit TFDS {name!r}: {mismatch}; use the split file made for this "
                "dataset (CoOp DATASETS.md) or data.name='coop:<dataset>' over CoOp's own image folders"
            )
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

    def fingerprint(self) -> str:
        """The TFDS dataset's version and prepared files, and the records this split reads."""
        version, files = tfds_kind.prepared_files(self._tfds_name, self._data_dir)
        return digest(self.name, self.image_key, version, files, digest(*self._records))

    def __getitem__(self, i: int) -> dict[str, Any]:
        i = check_index(i, len(self))
        split, k = self._records[i]
        if split not in self._splits:
            self._splits[split] = tfds_kind.open_split(self._tfds_name, split, self._data_dir)
        ex = self._splits[split][k]
        return dict(
            image=rgb(np.asarray(ex[self.image_key], np.uint8)), label=int(self.labels_[i]), id=i, path=self.paths[i]
        )


@register
class TfdsSplitFile(Kind[SplitList]):
    """A TFDS dataset name with a split file: CoOp's split without a second copy of the images."""

    name = "tfds_split_file"
    title = "CoOp split files over TFDS records"

    def locate(self, request: Request) -> SplitList:
        """The split file's list for the split, once the TFDS dataset is prepared."""
        path = self.split_file_path(request.dataset, request.data_dir, request.split_file)
        return _locate_over_tfds(request.dataset, path, request.base, request.data_dir)

    def open(self, request: Request, found: SplitList) -> TfdsSplitFileSource:
        path = self.split_file_path(request.dataset, request.data_dir, request.split_file)
        return TfdsSplitFileSource(request.dataset, path, request.base, request.data_dir, listed=found)

    def inspect(self, request: Request, found: SplitList) -> Counts:
        """The list's size and the split file's classes."""
        entries, raw = found
        return Counts({request.base: len(entries)}, classnames.coop_names(request.dataset, raw))

    def split_file_path(self, dataset: str, data_dir: str | None, split_file: str | None) -> str:
        """split_file; relative: in the TFDS data directory."""
        return resolve_file(split_file or "", tfds_kind.tfds_data_dir(data_dir))
