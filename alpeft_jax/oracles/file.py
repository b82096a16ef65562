"""The CSV round-trip oracle: the run writes what to label, stops, and reads the filled-in file on the next run.

    DIR/round_<r>/to_label.csv   id,path,label,predicted,confidence
                                 (label empty; path is the image file or a written thumbnail; predicted and
                                 confidence: the current model's top class and its probability, empty in round 0)
    DIR/round_<r>/labels.csv     id,label           (what the annotator returns; `--labels=FILE` overrides it)
    DIR/classes.txt              the class names a label may be, one per line; an index is a 0-based line number
                                 (the run's own file; written here only if the oracle runs without it)

A labels file must give exactly the requested ids, each once, each with a known class name or index, or `skip`
(or `?`) where the annotator cannot tell: that example is excluded (label -1 to the run: never asked again, never
trained on; a class of that name wins over the word). Otherwise the run stops with one line naming the problem and
nothing is recorded. DIR may be a cloud path.
"""

from __future__ import annotations

import csv
import io
import os
from typing import Any

import numpy as np
from etils import epath
from PIL import Image

from alpeft_jax.checkpoint import atomic_write
from alpeft_jax.oracles.base import LabelFileError, PendingLabels, PoolView
from alpeft_jax.workdir import CLASSES_FILE, read_classes, write_classes

SKIP_WORDS = ("skip", "?")  # a label cell that says "can't tell": the example is excluded


class FileOracle:
    """Labels from a CSV file written by a human."""

    def __init__(self, pool: PoolView, workdir: str | os.PathLike, labels_file: str | None = None) -> None:
        self.pool = pool
        self.workdir = epath.Path(workdir)
        self.labels_file = labels_file or None

    @property
    def classes_file(self) -> epath.Path:
        """DIR/classes.txt: the class names, one per line in label order (index 0 first), as the run wrote them."""
        return self.workdir / CLASSES_FILE

    def round_dir(self, round_index: int) -> epath.Path:
        """Folder of one round's labelling files."""
        return self.workdir / f"round_{round_index}"

    def request(self, round_index: int, rows: np.ndarray, predictions: np.ndarray | None = None) -> np.ndarray:
        """Labels from the round's labels file, or write to_label.csv and raise PendingLabels."""
        rows = np.asarray(rows, np.int64)
        own = self.round_dir(round_index) / "labels.csv"
        if self.labels_file:  # --labels=FILE answers the pending round only, and is kept as the round's record
            given, self.labels_file = epath.Path(self.labels_file), None
            if not given.exists():
                raise LabelFileError(f"labels file {given} does not exist; check the --labels path.")
            labels = self.read(given, rows)
            atomic_write(own, given.read_text())
            return labels
        if own.exists():
            return self.read(own, rows)
        todo = self.write_request(round_index, rows, predictions)
        raise PendingLabels(
            f"round {round_index}: {len(rows)} examples to label in {todo}; fill the 'label' column with class "
            f"names or indices from {self.classes_file} (0: its first line; skip or ? where you can't tell), save "
            f"it as {own} (or pass --labels=FILE) and rerun the same command."
        )

    def info(self, round_index: int) -> dict[str, Any]:
        """The labels file the round was read from ({} before it exists)."""
        own = self.round_dir(round_index) / "labels.csv"
        return {"labels_file": str(own)} if own.exists() else {}

    def write_request(self, round_index: int, rows: np.ndarray, predictions: np.ndarray | None = None) -> str:
        """Write to_label.csv (and thumbnails for images without a file); returns its path."""
        out_dir = self.round_dir(round_index)
        out_dir.mkdir(parents=True, exist_ok=True)
        buf = io.StringIO()
        w = csv.writer(buf)
        w.writerow(["id", "path", "label", "predicted", "confidence"])
        for k, (row, ident) in enumerate(zip(rows, self.pool.ids(rows))):
            ex = self.pool.example(int(row))
            path = ex.get("path")
            if not path:
                target = out_dir / "images" / f"{int(ident)}.png"
                target.parent.mkdir(parents=True, exist_ok=True)
                with target.open("wb") as f:
                    Image.fromarray(np.asarray(ex["image"], np.uint8)).save(f, format="PNG")
                path = str(target)
            guess, confidence = "", ""
            if predictions is not None:
                top = int(np.argmax(predictions[k]))
                guess, confidence = self.pool.class_names[top], f"{float(predictions[k][top]):.4f}"
            w.writerow([int(ident), path, "", guess, confidence])
        target = out_dir / "to_label.csv"
        atomic_write(target, buf.getvalue())
        if read_classes(self.classes_file) is None:  # the run writes it first; an oracle used alone writes it here
            write_classes(self.classes_file, list(self.pool.class_names))
        return str(target)

    def parse(self, value: str, where: str) -> int:
        """A class index from a label cell, or -1 for `skip` / `?` (can't tell); raises LabelFileError."""
        text = value.strip().lower()
        if text in SKIP_WORDS and text not in (n.lower() for n in self.pool.class_names):
            return -1
        if not text:
            raise LabelFileError(f"{where}: empty label; fill in a class name or index, or skip if you can't tell.")
        return self.pool.parse_label(value, where)

    def read(self, path: str | os.PathLike, rows: np.ndarray) -> np.ndarray:
        """Parse and validate a labels file for `rows` (-1: skipped); raises LabelFileError naming the first problem."""
        want = {int(i): k for k, i in enumerate(self.pool.ids(rows))}
        try:
            reader = csv.DictReader(io.StringIO(epath.Path(path).read_text(), newline=""))
            if reader.fieldnames is None or not {"id", "label"} <= {c.strip() for c in reader.fieldnames}:
                raise LabelFileError(f"{path}: needs a header with 'id' and 'label' columns.")
            records = [{k.strip(): (v or "") for k, v in r.items() if k} for r in reader]
        except (OSError, UnicodeDecodeError, csv.Error) as e:
            raise LabelFileError(f"{path}: cannot read labels ({e}); save it as UTF-8 CSV.") from None
        labels = np.full(len(rows), -1, np.int64)
        seen: set[int] = set()
        for line, rec in enumerate(records, start=2):
            raw = rec["id"].strip()
            if not raw.lstrip("-").isdigit():
                raise LabelFileError(f"{path} line {line}: id {raw!r} is not an integer.")
            ident = int(raw)
            if ident not in want:
                raise LabelFileError(f"{path} line {line}: id {ident} was not requested this round; remove the row.")
            if ident in seen:
                raise LabelFileError(f"{path} line {line}: id {ident} appears twice; keep one row per id.")
            seen.add(ident)
            labels[want[ident]] = self.parse(rec["label"], f"{path} line {line} (id {ident})")
        missing = sorted(set(want) - seen)
        if missing:
            raise LabelFileError(
                f"{path}: {len(missing)} requested ids have no row (first: {missing[:5]}); add them with a label."
            )
        return labels
