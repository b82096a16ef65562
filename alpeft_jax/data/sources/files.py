"""Images stored as files: image folders (``<class>/<image>``) and CSV manifests (``path,label``).

With a class list (``classes=``, ``--config.data.classes``) the labels follow its order, a folder without class
sub-folders is an unlabelled pool (every image at any depth, label -1), and a CSV's empty labels are unlabelled
rows; a label or class folder not in the list is an error naming it.

Files are listed when the source is built and decoded lazily, when an example is read; the listing is what
both opening and inspecting read, so a split's size and classes come without decoding an image.
"""

from __future__ import annotations

import csv
import dataclasses
import logging
import os
from collections.abc import Sequence
from typing import Any

import numpy as np
from PIL import Image, UnidentifiedImageError

from alpeft_jax.data.sources.core import (
    CorruptImageError,
    ListedSource,
    MissingDataError,
    check_index,
    files_fingerprint,
)
from alpeft_jax.data.sources.registry import Counts, Kind, Listing, Request, register

__all__ = [
    "FileListSource",
    "FileList",
    "load_image",
    "image_folder",
    "csv_manifest",
    "require_files",
    "IMAGE_EXTENSIONS",
]

log = logging.getLogger(__name__)

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".gif", ".tif", ".tiff", ".webp", ".ppm", ".pgm")


class FileListSource(ListedSource):
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
        self._fingerprint: str | None = None

    def __len__(self) -> int:
        return len(self.paths)

    def fingerprint(self) -> str:
        """The listed files' paths, sizes and modification times (an image rewritten in place changes it)."""
        if self._fingerprint is None:
            self._fingerprint = files_fingerprint(self.paths)
        return self._fingerprint

    def __getitem__(self, i: int) -> dict[str, Any]:
        i = check_index(i, len(self))
        path = self.paths[i]
        return dict(
            image=load_image(path, self.exclude_hint), label=int(self.labels_[i]), id=int(self.ids_[i]), path=path
        )


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


@dataclasses.dataclass(frozen=True)
class FileList:
    """The image files of one split, as listed: paths, labels, class names, a name and how to drop a file."""

    where: str  # the folder or list file they were listed from
    paths: list[str]
    labels: np.ndarray
    class_names: list[str]
    name: str
    exclude_hint: str

    def source(self) -> FileListSource:
        """The files as a source (decoded when read)."""
        return FileListSource(self.paths, self.labels, self.class_names, self.name, self.exclude_hint)

    def listing(self) -> Listing:
        """The files and labels, in row order."""
        return Listing(list(self.paths), self.labels.copy(), list(self.class_names))

    def counts(self, split: str) -> Counts:
        """The listing's size and classes, as inspecting reports them."""
        return Counts({split: len(self.paths)}, list(self.class_names))


def require_files(paths: Sequence[str], what: str, fix: str) -> None:
    """MissingDataError naming how many of `paths` (images of `what`) are absent, the first, and the fix."""
    missing = [p for p in paths if not os.path.isfile(p)]
    if missing:
        raise MissingDataError(
            f"{len(missing)} of {len(paths)} images of {what} are missing (first: {missing[0]}); {fix}"
        )


def _is_image(name: str) -> bool:
    return name.lower().endswith(IMAGE_EXTENSIONS) and not name.startswith(".")


# --------------------------------------------------------------------------------------------------------------
# Image folders


_CLASSES_HINT = "--config.data.classes=FILE (one class name per line) or --config.data.classes=a,b,c"


def _images_under(folder: str) -> list[str]:
    """Image files at any depth under `folder` (hidden files and folders skipped), as sorted relative paths."""
    found = []
    for d, dirs, files in os.walk(folder):
        dirs[:] = [x for x in dirs if not x.startswith(".")]
        found += [os.path.relpath(os.path.join(d, f), folder) for f in files if _is_image(f)]
    return sorted(found)


def _list_folder(root: str, class_names: Sequence[str] | None, name: str | None) -> FileList:
    """Images under ``root/<class>/`` (sorted); class names = sorted sub-folders or the given list.

    With a class list and no sub-folder named after a class, every image at any depth under `root` is an unlabelled
    pool row (label -1); with a class list and class folders, images lying directly in `root` are unlabelled rows.
    """
    if not os.path.isdir(root):
        raise MissingDataError(f"image folder {root} does not exist; expected {root}/<class>/<image files>")
    folders = sorted(d for d in os.listdir(root) if os.path.isdir(os.path.join(root, d)) and not d.startswith("."))
    given = class_names is not None
    if class_names is None:
        if not folders:
            raise MissingDataError(
                f"no class folders under {root}; for unlabelled images pass {_CLASSES_HINT}, "
                f"or sort them into {root}/<class>/<image files>"
            )
        class_names = folders
    else:
        class_names = list(class_names)
        if set(folders) & set(class_names):
            unknown = sorted(set(folders) - set(class_names))
            if unknown:
                raise ValueError(
                    f"folders {unknown} under {root} are not in the class list; add them to --config.data.classes "
                    "or move them out of the folder"
                )
    paths: list[str] = []
    labels: list[int] = []
    if given and not set(folders) & set(class_names):  # no class folders: an unlabelled pool, at any depth
        found = _images_under(root)
        paths = [os.path.join(root, f) for f in found]
        labels = [-1] * len(found)
    else:
        for label, cls in enumerate(class_names):
            folder = os.path.join(root, cls)
            if not os.path.isdir(folder):
                continue  # an empty class: it keeps its index and name
            found = _images_under(folder)
            paths.extend(os.path.join(folder, f) for f in found)
            labels.extend([label] * len(found))
        if given:  # images beside the class folders are not sorted yet: unlabelled rows
            loose = sorted(f for f in os.listdir(root) if _is_image(f) and os.path.isfile(os.path.join(root, f)))
            paths.extend(os.path.join(root, f) for f in loose)
            labels.extend([-1] * len(loose))
    return FileList(
        root,
        paths,
        np.asarray(labels, np.int64),
        list(class_names),
        name or f"folder:{root}",
        "delete or move the file out of the image folder",
    )


def _open_folder(files: FileList) -> FileListSource:
    known = files.labels[files.labels >= 0]
    counts = np.bincount(known, minlength=len(files.class_names))
    empty = [c for c, k in zip(files.class_names, counts, strict=True) if k == 0]
    log.info(
        "image folder %s: %d images (%d unlabelled) in %d classes (%d without images: %s)",
        files.where,
        len(files.paths),
        len(files.paths) - len(known),
        len(files.class_names),
        len(empty),
        empty[:10],
    )
    return files.source()


def image_folder(root: str, class_names: Sequence[str] | None = None, name: str | None = None) -> FileListSource:
    """Images under ``root/<class>/`` (sorted); class names = sorted sub-folders or the given list."""
    return _open_folder(_list_folder(root, class_names, name))


@register
class Folder(Kind[FileList]):
    """An image folder ``data_dir/<class>/<image>`` or, where it exists, ``data_dir/<split>/<class>/<image>``."""

    name = "folder"
    title = "image folders"
    aliases = ("folder",)
    takes_classes = True
    shuffle_slices = True

    def location(self, request: Request) -> str | None:
        """``data_dir/<split>`` where that folder exists, else ``data_dir``."""
        if not request.data_dir:
            return None
        root = os.path.join(request.data_dir, request.base)
        return root if os.path.isdir(root) else request.data_dir

    def locate(self, request: Request) -> FileList:
        root = self.location(request)
        if root is None:
            raise ValueError("an image-folder source needs data_dir (--config.data.dir) = the folder root")
        return _list_folder(root, request.classes, None)

    def open(self, request: Request, found: FileList) -> FileListSource:
        return _open_folder(found)

    def inspect(self, request: Request, found: FileList) -> Counts:
        return found.counts(request.base)

    def listing(self, request: Request, found: FileList) -> Listing:
        return found.listing()


# --------------------------------------------------------------------------------------------------------------
# CSV manifests


def _list_csv(csv_path: str, class_names: Sequence[str] | None, name: str | None) -> FileList:
    """Images listed in a CSV with header ``path,label``; empty label = unlabelled, paths relative to the CSV."""
    if not os.path.isfile(csv_path):
        raise MissingDataError(
            f"CSV manifest {csv_path} does not exist; point --config.data.dir at the CSV file or "
            "at a folder holding <split>.csv"
        )
    base = os.path.dirname(os.path.abspath(csv_path))
    with open(csv_path, newline="", encoding="utf-8") as f:
        reader = csv.DictReader(f)
        if reader.fieldnames is None or "path" not in reader.fieldnames or "label" not in reader.fieldnames:
            raise ValueError(
                f"CSV manifest {csv_path} needs a header row with columns 'path' and 'label', got {reader.fieldnames}"
            )
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
        raise MissingDataError(
            f"{len(missing)} file(s) listed in {csv_path} do not exist ({'; '.join(missing[:5])}"
            f"{' ...' if len(missing) > 5 else ''}); fix the paths or drop those rows"
        )
    if unknown:
        raise ValueError(
            f"{len(unknown)} label(s) in {csv_path} are not in the class list ({'; '.join(unknown[:5])}"
            f"{' ...' if len(unknown) > 5 else ''}); add them to --config.data.classes or fix the rows"
        )
    return FileList(
        csv_path,
        paths,
        np.asarray(labels, np.int64),
        class_names,
        name or f"csv:{csv_path}",
        f"drop its row from {csv_path}",
    )


def csv_manifest(csv_path: str, class_names: Sequence[str] | None = None, name: str | None = None) -> FileListSource:
    """Images listed in a CSV with header ``path,label``; empty label = unlabelled, paths relative to the CSV."""
    return _list_csv(csv_path, class_names, name).source()


@register
class Csv(Kind[FileList]):
    """A CSV manifest: ``data_dir`` is the CSV file or a directory holding ``<split>.csv``."""

    name = "csv"
    title = "CSV manifests"
    aliases = ("csv",)
    takes_classes = True
    shuffle_slices = True

    def location(self, request: Request) -> str | None:
        """``data_dir/<split>.csv`` when data_dir is a folder, else data_dir (the CSV file)."""
        d = request.data_dir
        if not d:
            return None
        return os.path.join(d, f"{request.base}.csv") if os.path.isdir(d) else d

    def locate(self, request: Request) -> FileList:
        """The manifest's rows, with every listed file present and every label known."""
        path = self.location(request)
        if path is None:
            raise ValueError(
                "a CSV source needs data_dir (--config.data.dir): the CSV file or a folder with <split>.csv"
            )
        return _list_csv(path, request.classes, None)

    def open(self, request: Request, found: FileList) -> FileListSource:
        return found.source()

    def inspect(self, request: Request, found: FileList) -> Counts:
        return found.counts(request.base)

    def listing(self, request: Request, found: FileList) -> Listing:
        return found.listing()
