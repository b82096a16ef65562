"""Split specs and the splits a TFDS builder defines.

A split spec is a split name, a slice of one in TFDS's syntax, or a union of them with `+`:
`train`, `train[:80%]`, `train[80%:]`, `train[:1000]`, `train[-500:]`, `train+validation`. A slice is
contiguous over the split's record order and percent boundaries round to the closest record, as
`tfds.data_source(name, split="train[:80%]")` reads them: a pool of `train[:80%]` and a test set of
`train[80%:]` never share an example, and cut the same way on every machine.

`builder_split_names(name)` lists the splits a TFDS builder generates, from the builder's own
`_split_generators` run against a download manager that downloads nothing: it needs neither the data nor
TensorFlow, so a config can be checked for split names that the real dataset does not have (EuroSAT and
colorectal histology have only `train`).
"""

from __future__ import annotations

import dataclasses
import functools
import re
from typing import Any

import numpy as np

__all__ = ["SplitPart", "parse", "base_names", "positions", "subset", "builder_split_names", "check_split_names"]

_PART = re.compile(r"^(?P<name>[\w-]+)(\[(?P<start>-?\d+%?)?:(?P<stop>-?\d+%?)?\])?$")


@dataclasses.dataclass(frozen=True)
class SplitPart:
    """One term of a split spec: a split name and an optional [start:stop] slice (ints or percents)."""

    name: str
    start: str | None = None
    stop: str | None = None

    @property
    def sliced(self) -> bool:
        """Whether the part selects a slice of its split."""
        return self.start is not None or self.stop is not None

    def __str__(self) -> str:
        return self.name + (f"[{self.start or ''}:{self.stop or ''}]" if self.sliced else "")


def parse(spec: str) -> list[SplitPart]:
    """The parts of a split spec; ValueError naming the part that is not `name` or `name[start:stop]`."""
    parts = []
    for term in re.split(r"\s*\+\s*", spec.strip()):
        m = _PART.match(term.replace(" ", ""))
        if not m:
            raise ValueError(
                f"split {spec!r}: cannot read {term!r}; write a split name or a slice such as "
                "'train[:80%]', 'train[80%:]' or 'train[:1000]'"
            )
        for bound in (m["start"], m["stop"]):
            if bound and bound.endswith("%") and abs(int(bound[:-1])) > 100:
                raise ValueError(f"split {spec!r}: percent {bound} is outside [-100%, 100%]")
        parts.append(SplitPart(m["name"], m["start"], m["stop"]))
    return parts


def base_names(spec: str) -> list[str]:
    """The split names a spec reads, in order ('train[:80%]+validation' -> ['train', 'validation'])."""
    return [p.name for p in parse(spec)]


def _bound(value: str | None, n: int, default: int) -> int:
    if value is None:
        return default
    if value.endswith("%"):
        pct = int(value[:-1])
        pct = pct + 100 if pct < 0 else pct
        return int(round(pct * n / 100.0))  # TFDS's "closest" rounding
    k = int(value)
    return n + k if k < 0 else k


def positions(part: SplitPart, n: int) -> np.ndarray:
    """Record positions of a part within its split of n records (contiguous, TFDS slicing semantics)."""
    start = min(max(_bound(part.start, n, 0), 0), n)
    stop = min(max(_bound(part.stop, n, n), 0), n)
    return np.arange(start, max(start, stop), dtype=np.int64)


def subset(n: int, k: int, seed: int) -> np.ndarray:
    """k of n positions drawn by `seed`, ascending (all n when k is 0 or at least n): data.max_pool / max_test."""
    if not k or k >= n:
        return np.arange(n, dtype=np.int64)
    return np.sort(np.random.default_rng([seed, 7]).choice(n, k, replace=False)).astype(np.int64)


class _NoDownloads:
    """A download manager for `_split_generators` that maps every resource to a path and fetches nothing."""

    def __init__(self) -> None:
        from etils import epath

        self._root = epath.Path("/nonexistent-alpeft-downloads")
        self.manual_dir = self._root / "manual"
        self.download_dir = self._root

    def _map(self, x: Any) -> Any:
        if isinstance(x, dict):
            return {k: self._map(v) for k, v in x.items()}
        if isinstance(x, (list, tuple)):
            return type(x)(self._map(v) for v in x)
        return self._root / "resource"

    def download_and_extract(self, x: Any) -> Any:
        """Paths in place of the downloaded resources."""
        return self._map(x)

    download = extract = download_and_extract

    def iter_archive(self, _: Any) -> Any:
        """No archive members."""
        return iter(())


@functools.cache
def builder_split_names(name: str) -> tuple[str, ...]:
    """Sorted split names that the TFDS builder `name` ('dtd', 'eurosat/rgb') generates.

    Raises KeyError for a name TFDS does not know and RuntimeError when the builder's split code needs its data.
    """
    import tensorflow_datasets as tfds
    from tensorflow_datasets.core.registered import DatasetNotFoundError

    try:
        builder = tfds.builder(name, data_dir="/nonexistent-alpeft-tfds")
    except DatasetNotFoundError:
        raise KeyError(f"TFDS has no dataset named {name!r}") from None
    try:
        out = builder._split_generators(_NoDownloads())  # noqa: SLF001 - the builder's own split definitions
    except Exception as e:  # noqa: BLE001 - any builder code that needs real files
        raise RuntimeError(
            f"the split code of TFDS builder {name!r} needs its data ({type(e).__name__}: {e})"
        ) from None
    if isinstance(out, dict):
        names = [str(k) for k in out]
    else:
        names = [str(g.name if hasattr(g, "name") else g.split_info.name) for g in out]
    return tuple(sorted(names))


def check_split_names(spec: str, available: list[str] | tuple[str, ...], what: str, field: str) -> list[str]:
    """Problems (one line each) with a split spec against the split names a dataset has; [] if none."""
    try:
        parts = parse(spec)
    except ValueError as e:
        return [f"{field}: {e}"]
    problems = []
    for part in parts:
        if part.name not in available:
            hint = ""
            if len(available) == 1 and part.name in ("test", "validation", "val"):
                only = available[0]
                hint = (
                    f"; it has one split: cut it, e.g. {field.rsplit('.', 1)[0]}.train_split='{only}[:80%]' "
                    f"and {field.rsplit('.', 1)[0]}.test_split='{only}[80%:]'"
                )
            problems.append(
                f"{field}={spec!r}: {what} has no split '{part.name}' (its splits: {', '.join(available)}){hint}"
            )
    return problems
