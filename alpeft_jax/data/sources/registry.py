"""The registry of data kinds, and the entry points that go through it.

A data kind is a `Kind` subclass registered with `@register`, in its own module of this package (every module
here is imported with the package, so a new kind is one new file). It says which source names it answers to
and does its work in three steps over one request:

- ``locate(request)``: every check that opening and inspecting share (split names, directories, files, split
  lists, TFDS metadata), returning what it found;
- ``open(request, found)``: the `Source`;
- ``inspect(request, found)``: examples per split and the class names, from listings and metadata only.

`get_source` and `inspect_source` resolve the name to a kind, check the request against what the kind accepts
(options, a class list, ``+`` unions), call ``locate`` and then ``open`` or ``inspect``, and cut slices for
kinds that read one whole split. A check written in ``locate`` holds for both, so they raise the same errors.
"""

from __future__ import annotations

import abc
import dataclasses
from collections.abc import Sequence
from typing import Any, ClassVar, Generic, TypeVar

import numpy as np

from alpeft_jax.data import splits as splits_lib
from alpeft_jax.data.sources.core import Source, SourceInfo, SubsetSource

__all__ = [
    "Request",
    "Counts",
    "Kind",
    "register",
    "get_kind",
    "known_kinds",
    "source_kind",
    "get_source",
    "inspect_source",
    "split_file_path",
    "Listing",
    "listing",
    "split_location",
]

Found = TypeVar("Found")
KindT = TypeVar("KindT", bound="Kind[Any]")


@dataclasses.dataclass(frozen=True)
class Request:
    """A source request after the shared checks: the dataset, the split spec and its parts, where to read."""

    name: str  # the source name as given
    dataset: str  # the dataset the name picks within its kind (the name itself for most kinds)
    split: str
    parts: tuple[splits_lib.SplitPart, ...]
    data_dir: str | None = None
    split_file: str | None = None
    classes: tuple[str, ...] | None = None  # a class list, for kinds that take one
    options: dict[str, Any] = dataclasses.field(default_factory=dict)  # the kind's own keyword options

    @property
    def base(self) -> str:
        """The split name of the first part (the only one, for kinds that do not join splits)."""
        return self.parts[0].name


@dataclasses.dataclass(frozen=True)
class Counts:
    """What inspecting a kind reads without decoding images: examples per split name and the class names."""

    sizes: dict[str, int]
    class_names: list[str]


@dataclasses.dataclass(frozen=True)
class Listing:
    """The files and labels (-1: unlabelled) of a split spec of a kind that lists image files, in row order."""

    paths: list[str]
    labels: np.ndarray
    class_names: list[str]


class Kind(abc.ABC, Generic[Found]):
    """One kind of data: the names it answers to, what it accepts, and locate / open / inspect."""

    name: ClassVar[str]  # the registry key (source_kind's first value)
    title: ClassVar[str]  # what error messages call sources of this kind ("image folders")
    aliases: ClassVar[tuple[str, ...]] = ()  # source names it answers to (lower case, '_' for '-')
    prefix: ClassVar[str | None] = None  # it answers '<prefix>:<dataset>'
    catch_all: ClassVar[bool] = False  # it answers every name no other kind does
    split_file_kind: ClassVar[str | None] = None  # the kind its names pick when a split file is given
    options: ClassVar[tuple[str, ...]] = ()  # keyword options `open` takes
    takes_classes: ClassVar[bool] = False  # it takes a class list
    joins_splits: ClassVar[bool] = False  # it reads '+' unions and slices itself; else one split, cut here
    shuffle_slices: ClassVar[bool] = False  # slices cut a fixed shuffle (listings sorted class by class)

    @abc.abstractmethod
    def locate(self, request: Request) -> Found:
        """Find the request's data and check it; raise MissingDataError (how to get it) or ValueError."""

    @abc.abstractmethod
    def open(self, request: Request, found: Found) -> Source:
        """The source of what `locate` found (one whole split unless the kind joins splits)."""

    @abc.abstractmethod
    def inspect(self, request: Request, found: Found) -> Counts:
        """Examples per split and class names of what `locate` found, without decoding an image."""

    def location(self, request: Request) -> str | None:
        """The folder or file a split's listing is read from (kinds that list files); None for the others."""
        return None

    def listing(self, request: Request, found: Found) -> Listing | None:
        """The files and labels of one whole split of what `locate` found; None for kinds that list no files."""
        return None

    def split_file_path(self, dataset: str, data_dir: str | None, split_file: str | None) -> str:
        """Where this kind reads a CoOp split file; '' when it reads none."""
        return ""


_KINDS: dict[str, Kind[Any]] = {}


def register(cls: type[KindT]) -> type[KindT]:
    """Class decorator: register a `Kind` subclass under its `name`."""
    if cls.name in _KINDS:
        raise ValueError(
            f"data kind {cls.name!r} is registered twice ({type(_KINDS[cls.name]).__qualname__} and "
            f"{cls.__qualname__}); give the new kind another name"
        )
    _KINDS[cls.name] = cls()
    return cls


def known_kinds() -> list[str]:
    """Names of the registered data kinds, sorted."""
    return sorted(_KINDS)


def get_kind(name: str) -> Kind[Any]:
    """The registered kind called name; ValueError listing the known kinds."""
    if name not in _KINDS:
        raise ValueError(
            f"unknown data kind {name!r}; known kinds: {', '.join(known_kinds())} (a new kind is a "
            "module in alpeft_jax/data/sources/ with a @register'ed Kind)"
        )
    return _KINDS[name]


def _titles(kinds: Sequence[Kind[Any]]) -> str:
    return " and ".join(k.title for k in sorted(kinds, key=lambda k: k.name))


def _resolve(name: str, split_file: str | None) -> tuple[Kind[Any], str]:
    """(kind, dataset) a source name picks: an alias, else a '<prefix>:' of a kind, else the catch-all kind."""
    key = name.strip()
    low = key.lower().replace("-", "_")
    kinds = [_KINDS[k] for k in known_kinds()]
    kind = next((k for k in kinds if low in k.aliases), None)
    dataset = key
    if kind is None:
        prefix, sep, rest = key.partition(":")
        kind = next((k for k in kinds if sep and k.prefix == prefix.lower()), None)
        if kind is not None:
            dataset = rest
        else:
            kind = next(k for k in kinds if k.catch_all)
    if split_file and kind.split_file_kind:
        kind = get_kind(kind.split_file_kind)
    return kind, dataset


def source_kind(name: str, split_file: str | None) -> tuple[str, str]:
    """(kind, dataset) of a source name, e.g. ('folder', 'folder'), ('coop', 'dtd'), ('tfds', 'eurosat/rgb')."""
    kind, dataset = _resolve(name, split_file)
    return kind.name, dataset


def _request(
    name: str, split: str, data_dir: str | None, split_file: str | None, options: dict[str, Any]
) -> tuple[Kind[Any], Request]:
    """The kind a name picks and the request checked against what that kind accepts."""
    kind, dataset = _resolve(name, split_file)
    classes = options.pop("classes", None)
    if isinstance(classes, str):
        classes = [c.strip() for c in classes.split(",") if c.strip()]
    if options.pop("coop", False) and kind.catch_all:
        kind = get_kind("coop")
    if classes is not None and not kind.takes_classes:
        raise ValueError(
            f"a class list (data.classes) applies to {_titles([k for k in _KINDS.values() if k.takes_classes])} "
            f"only; {name!r} brings its own"
        )
    unknown = sorted(set(options) - set(kind.options))
    if unknown:
        raise ValueError(f"unknown options {unknown} for source {name!r}; it takes {', '.join(kind.options) or 'none'}")
    parts = tuple(splits_lib.parse(split))
    if len(parts) > 1 and not kind.joins_splits:
        raise ValueError(
            f"split {split!r}: joining splits with '+' works for "
            f"{_titles([k for k in _KINDS.values() if k.joins_splits])} only"
        )
    return kind, Request(
        name, dataset, split, parts, data_dir, split_file, None if classes is None else tuple(classes), options
    )


def _slice_positions(part: splits_lib.SplitPart, n: int, shuffle: bool) -> np.ndarray:
    order = np.random.default_rng(0).permutation(n) if shuffle else np.arange(n)
    return np.sort(order[splits_lib.positions(part, n)])


def get_source(
    name: str, split: str = "train", data_dir: str | None = None, split_file: str | None = None, **options: Any
) -> Source:
    """Open a pool source by name and split spec (the package docstring lists the names and options)."""
    kind, request = _request(name, split, data_dir, split_file, dict(options))
    src = kind.open(request, kind.locate(request))
    part = request.parts[0]
    if kind.joins_splits or not part.sliced:
        return src
    cut = _slice_positions(part, len(src), kind.shuffle_slices)
    return SubsetSource(src, cut, f"{src.name}{str(part)[len(part.name) :]}")


def inspect_source(
    name: str,
    split: str = "train",
    data_dir: str | None = None,
    split_file: str | None = None,
    classes: Sequence[str] | str | None = None,
) -> SourceInfo:
    """Size and class count of a split spec without decoding any image (file listings, headers, TFDS metadata).

    Raises what `get_source` would: MissingDataError (with how to get the data) or ValueError.
    """
    kind, request = _request(name, split, data_dir, split_file, {} if classes is None else {"classes": classes})
    counts = kind.inspect(request, kind.locate(request))
    size = sum(len(splits_lib.positions(p, counts.sizes[p.name])) for p in request.parts)
    return SourceInfo(size, len(counts.class_names), tuple(counts.class_names))


def split_location(name: str, split: str, data_dir: str | None = None, split_file: str | None = None) -> str | None:
    """The folder or file a split spec's files are listed from (image folders, CSV manifests); None for other kinds.

    Two specs with the same location read one listing: the same images, unless they are disjoint slices of it.
    """
    kind, request = _request(name, split, data_dir, split_file, {})
    return kind.location(request)


def listing(
    name: str,
    split: str = "train",
    data_dir: str | None = None,
    split_file: str | None = None,
    classes: Sequence[str] | str | None = None,
) -> Listing | None:
    """The files and labels a split spec reads, in the row order `get_source` gives them (slices cut as it cuts
    them); None for kinds that read no listed files (TFDS, IDX arrays). Nothing is decoded."""
    kind, request = _request(name, split, data_dir, split_file, {} if classes is None else {"classes": classes})
    found = kind.listing(request, kind.locate(request))
    part = request.parts[0]
    if found is None or kind.joins_splits or not part.sliced:
        return found
    cut = _slice_positions(part, len(found.paths), kind.shuffle_slices)
    return Listing([found.paths[i] for i in cut], found.labels[cut], found.class_names)


def split_file_path(name: str, data_dir: str | None, split_file: str | None) -> str:
    """Where a source reads its CoOp split file: split_file (relative: in the TFDS data directory, or in the
    CoOp dataset folder), else the CoOp folder's own; '' for sources without one."""
    kind, dataset = _resolve(name, split_file)
    return kind.split_file_path(dataset, data_dir, split_file)
