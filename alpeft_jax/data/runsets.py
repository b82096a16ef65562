"""What a run reads besides its pool: the class list (``data.classes``) and its test set, or none.

The class list. ``data.classes`` is a file (one class name per line; blank lines skipped) or the names inline,
comma-separated (``a,b,c``); the order given is the label order. It applies to image folders and CSV manifests
(their labels follow it, a flat folder becomes an unlabelled pool), and with a human oracle (file, Label Studio)
the labels the pool already holds (filled CSV rows, images in class folders) are given labels: the initial
labelled set, never asked for again (`given_labels`).

The test set (`test_set`), decided once per run, never the pool's own rows:

- ``data.test`` given: that image folder or CSV manifest (a file is a CSV, a folder an image folder), read with
  the run's class list;
- else the dataset's test split (``data.test_split``), unless it is the pool's images or absent: for image
  folders and CSV manifests, a test split without a ``DIR/<test_split>/`` folder or ``DIR/<test_split>.csv`` of
  its own is no test set, nor is one read from the pool's own folder or CSV file (a flat folder, one CSV) unless
  the two split specs are disjoint slices of it (``train[:80%]`` / ``train[80%:]``); for other kinds, a test
  split spelt as the pool's is none;
- a test set must have a label on every row: unlabelled rows are an error, not rows counted as wrong.

Without a test set the run reports a cross-validated estimate on the labels gathered so far (`alpeft_jax.crossval`).
Everything here reads listings only (no image decoded, no JAX), so the pre-flight checks and the run agree.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Sequence
from typing import Any

import numpy as np

from alpeft_jax.data import sources

__all__ = ["TestSet", "parse_classes", "given_labels", "test_set", "test_kind"]


def parse_classes(value: str) -> list[str] | None:
    """The class list of ``data.classes`` (a file or "a,b,c"), in the order given; None when unset.

    ValueError (one line naming the problem and the fix) for a missing or empty file, fewer than two names, or a
    name given twice.
    """
    text = (value or "").strip()
    if not text:
        return None
    if os.path.isfile(os.path.expanduser(text)):
        path = os.path.expanduser(text)
        with open(path, encoding="utf-8") as f:
            names = [line.strip() for line in f if line.strip()]
        where = f"class file {path}"
        if not names:
            raise ValueError(f"data.classes: {where} is empty; write one class name per line")
    elif "," in text:
        names = [n.strip() for n in text.split(",") if n.strip()]
        where = f"data.classes={text!r}"
    else:
        raise ValueError(
            f"data.classes: class file {text} does not exist; pass a file with one class name per line, or the "
            "names inline: --config.data.classes=a,b,c"
        )
    seen: set[str] = set()
    twice = [n for n in names if n in seen or seen.add(n)]  # type: ignore[func-returns-value]
    if twice:
        raise ValueError(f"data.classes: {where} names {sorted(set(twice))} more than once; keep each class once")
    if len(names) < 2:
        raise ValueError(f"data.classes: {where} names {len(names)} class; classification needs at least 2")
    return names


def given_labels(c: Any) -> bool:
    """Whether the labels the pool holds are given labels (the initial labelled set): a class list is set and a
    human labels (oracle file or label_studio); with the simulated oracle they are the hidden truth it reveals."""
    return bool((c.data.classes or "").strip()) and c.oracle != "simulated"


def test_kind(path: str) -> str:
    """The data kind of a ``data.test`` path: "csv" for a file, "folder" for a directory."""
    return "csv" if os.path.isfile(os.path.expanduser(path)) else "folder"


@dataclasses.dataclass(frozen=True)
class TestSet:
    """How to open a run's test set (`sources.get_source(name, split, data_dir, split_file, classes=...)`)."""

    name: str
    split: str
    data_dir: str | None
    split_file: str | None
    classes: tuple[str, ...] | None
    what: str  # for logs: "data.test=DIR", "the test split 'test'"
    size: int = 0  # rows listed (0: not listed, e.g. TFDS: read its size from the source)
    num_classes: int = 0  # classes of the listing (0: not listed)

    def options(self) -> dict[str, Any]:
        """The keyword options of `sources.get_source` for it."""
        return {} if self.classes is None else {"classes": list(self.classes)}


def _check_labelled(found: sources.Listing | None, what: str) -> int:
    """The number of rows of a test listing; ValueError if any has no label."""
    if found is None:
        return 0
    missing = np.flatnonzero(np.asarray(found.labels) < 0)
    if missing.size:
        raise ValueError(
            f"{what} has {missing.size} unlabelled image(s) (first: {found.paths[int(missing[0])]}); a test set "
            "needs a label on every image: label them, or drop them from the test set"
        )
    return len(found.paths)


def test_set(c: Any, classes: Sequence[str] | None, pool_classes: Sequence[str]) -> tuple[TestSet | None, str]:
    """The run's test set and a line saying which it is (or why there is none); ValueError for a test set with
    unlabelled rows or labels outside the class list. `classes`: the ``data.classes`` list (None when unset);
    `pool_classes`: the pool's class names (what a ``data.test`` folder or CSV is read with otherwise)."""
    data_dir = c.data.dir or None
    split_file = c.data.split_file or None
    if (c.data.test or "").strip():
        path = os.path.expanduser(c.data.test.strip())
        kind = test_kind(path)
        names = tuple(classes if classes is not None else pool_classes)
        what = f"data.test={c.data.test}"
        found = sources.listing(kind, "test", path, None, classes=list(names))
        size = _check_labelled(found, what)
        plan = TestSet(kind, "test", path, None, names, what, size, len(names))
        return plan, f"test set: {what} ({size} labelled images)"
    spec, pool_spec = c.data.test_split, c.data.train_split
    what = f"the test split {spec!r} of {c.data.name}"
    opts = {} if classes is None else {"classes": list(classes)}
    where = sources.split_location(c.data.name, spec, data_dir, split_file)
    if where is not None:  # a kind that lists files
        pool_where = sources.split_location(c.data.name, pool_spec, data_dir, split_file)
        if not os.path.exists(where) or (where == data_dir and pool_where != data_dir):
            return None, (
                f"no test set: {what} has no folder or CSV of its own under {data_dir}; each round reports a "
                "cross-validated estimate on the labels so far (eval.cv_folds); pass --config.data.test=DIR|CSV "
                "for a test set"
            )
        if where == pool_where:
            pool = sources.listing(c.data.name, pool_spec, data_dir, split_file, **opts)
            test = sources.listing(c.data.name, spec, data_dir, split_file, **opts)
            shared = set(pool.paths if pool else ()) & set(test.paths if test else ())
            if shared:
                return None, (
                    f"no test set: {what} is the pool's own images ({where}); each round reports a cross-validated "
                    "estimate on the labels so far (eval.cv_folds); pass --config.data.test=DIR|CSV for a test set"
                )
        found = sources.listing(c.data.name, spec, data_dir, split_file, **opts)
        size = _check_labelled(found, what)
        listed = None if classes is None else tuple(classes)
        counted = len(found.class_names) if found is not None else 0
        return TestSet(c.data.name, spec, data_dir, split_file, listed, what, size, counted), (
            f"test set: {what} ({size} labelled images)"
        )
    if spec.replace(" ", "") == pool_spec.replace(" ", ""):
        return None, (
            f"no test set: {what} is the pool split; each round reports a cross-validated estimate on the labels "
            "so far (eval.cv_folds); set data.test_split to another split or pass --config.data.test=DIR|CSV"
        )
    return TestSet(c.data.name, spec, data_dir, split_file, None, what), f"test set: {what}"
