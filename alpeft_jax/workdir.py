"""What a run keeps in its workdir, and the order in which it is written, so a kill at any moment loses little.

    DIR/config.json        the run's config (a resume with another config is refused, naming the fields)
    DIR/classes.txt        the class names, one per line in label order (index 0 first); written at the start
    DIR/al_state.json      the AL record (`RunRecord`): round, phase, labelled pool rows with their labels, pending
                           selection, per-round results, the stop set's last predictions and any stop by al.stop
                           (stopping.py). Written atomically (temp file + rename) after every phase change.
    DIR/ckpt/<round>/      Orbax: trainable tree, optimiser state, rng at the end of each round
    DIR/progress/<step>/   Orbax: the same inside a round every N steps (epoch and batch to resume from)
    DIR/results.jsonl      one row per finished round (rewritten from al_state.json, never appended twice)
    DIR/curves.png         the run's learning curves, redrawn after every round
    DIR/tensorboard/       TensorBoard events: per-epoch training metrics of each round, per-round results
    DIR/cache/             the frozen-prefix caches of pool and test (unless scoring.cache_dir puts them elsewhere)

DIR may be a local folder or a cloud URL (gs://...: every path goes through etils.epath). With several processes,
process 0 writes the JSON files and the events; all processes write the Orbax checkpoints together.

An annotator's "can't tell" (an oracle's label -1) puts the row in the record's `excluded` list: never selected
again, never trained on, counted in results.jsonl as `n_excluded`.

Resume order: read al_state.json; a round in phase "label" re-asks the oracle for the stored selection; a round in
phase "train" restores DIR/progress if it belongs to that round, else starts the round's training afresh; the
model used for selection in round r is DIR/ckpt/<r-1>. Labels are in al_state.json before training starts, so no
kill loses a label, and all randomness derives from (seed, round, epoch), so a resumed run equals an
uninterrupted one.
"""

from __future__ import annotations

import dataclasses
import json
import os
import tempfile
from typing import TYPE_CHECKING, Any, Literal

import numpy as np
from absl import logging

from alpeft_jax.config import diff

if TYPE_CHECKING:
    from etils import epath

STATE_FILE = "al_state.json"
CONFIG_FILE = "config.json"
CLASSES_FILE = "classes.txt"
RESULTS_FILE = "results.jsonl"
CURVES_FILE = "curves.png"
TENSORBOARD_DIR = "tensorboard"
CACHE_DIR = "cache"
ROUNDS_DIR = "ckpt"
PROGRESS_DIR = "progress"

Phase = Literal["select", "label", "train"]


class ConfigMismatchError(ValueError):
    """A workdir holds a run made with another config."""


# -- paths ---------------------------------------------------------------------------------------------------------
def is_local(path: str | os.PathLike) -> bool:
    """Whether a path is on this machine's file system (not a URL such as gs://bucket/dir)."""
    return "://" not in str(path)


def as_path(path: str | os.PathLike) -> epath.Path:
    """An epath for a local path (made absolute) or a URL such as gs://bucket/dir (left as it is)."""
    from etils import epath  # here: the command line's pre-flight checks read the names above without it

    text = str(path)
    return epath.Path(text) if not is_local(text) else epath.Path(os.path.abspath(text))


@dataclasses.dataclass(frozen=True)
class Workdir:
    """The files of one run directory (see the module docstring)."""

    root: epath.Path

    @classmethod
    def open(cls, path: str | os.PathLike) -> Workdir:
        """The workdir at `path`, created if missing; a file there is an error."""
        root = as_path(path)
        if root.exists() and not root.is_dir():
            raise ValueError(f"--workdir {root} is a file; pass a directory (it is created if missing).")
        root.mkdir(parents=True, exist_ok=True)
        return cls(root)

    @property
    def state(self) -> epath.Path:
        """The AL record, al_state.json."""
        return self.root / STATE_FILE

    @property
    def config(self) -> epath.Path:
        """The run's config, config.json."""
        return self.root / CONFIG_FILE

    @property
    def classes(self) -> epath.Path:
        """The class names in label order, classes.txt."""
        return self.root / CLASSES_FILE

    @property
    def results(self) -> epath.Path:
        """One JSON row per finished round."""
        return self.root / RESULTS_FILE

    @property
    def curves(self) -> epath.Path:
        """The learning-curve plot."""
        return self.root / CURVES_FILE

    @property
    def tensorboard(self) -> epath.Path:
        """TensorBoard's event folder."""
        return self.root / TENSORBOARD_DIR

    @property
    def rounds(self) -> epath.Path:
        """Orbax checkpoints at the end of each round."""
        return self.root / ROUNDS_DIR

    @property
    def progress(self) -> epath.Path:
        """Orbax checkpoints inside the running round."""
        return self.root / PROGRESS_DIR

    def cache(self, cache_dir: str = "") -> epath.Path:
        """The folder of the frozen-prefix caches: `cache_dir` when set, else DIR/cache."""
        return as_path(cache_dir) if cache_dir else self.root / CACHE_DIR

    def record_config(self, config: dict[str, Any], allow_change: bool) -> None:
        """Write config.json; a started run (al_state.json exists) with another config is refused unless allowed.

        Every process calls it: process 0 reads and writes, the verdict reaches the others by broadcast.
        """
        from alpeft_jax.parallel import broadcast_json, is_leader  # here: preflight and report import no JAX

        new = json.loads(json.dumps(config))
        diffs = []
        if is_leader():
            old = read_json(self.config) if self.state.exists() else None  # nothing recorded: any config may start
            diffs = diff(old, new) if old is not None and old != new else []
        diffs = broadcast_json(diffs)
        if diffs:
            if not allow_change:
                raise ConfigMismatchError(
                    f"{self.root} holds a run with another config ({'; '.join(diffs)}); use a new --workdir, "
                    "or pass --allow_config_change to continue it with the new config."
                )
            logging.warning("continuing %s with a changed config: %s", self.root, "; ".join(diffs))
        if is_leader():  # hosts share the workdir: one writer
            write_json(self.config, new)

    def read_record(self) -> RunRecord:
        """The AL record (process 0 reads al_state.json, every process gets the same; fresh when there is none)."""
        from alpeft_jax.parallel import broadcast_json, is_leader

        return RunRecord.from_json(broadcast_json(read_json(self.state) if is_leader() else None))

    def write_record(self, record: RunRecord) -> None:
        """Atomically rewrite al_state.json (process 0)."""
        from alpeft_jax.parallel import is_leader

        if is_leader():
            write_json(self.state, record.to_json())


# -- JSON files, written whole ---------------------------------------------------------------------------------
def atomic_write(path: str | os.PathLike, text: str) -> None:
    """Write a text file so that readers see the old or the new content, never a torn one (local or cloud path)."""
    target = as_path(path)
    if not is_local(target):  # object stores: an object is replaced whole by its upload
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_text(text)
        return
    directory = str(target.parent)
    os.makedirs(directory, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=directory, prefix=".tmp-", suffix=target.name)
    try:
        with os.fdopen(fd, "w") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, str(target))
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def jsonable(x: Any) -> Any:
    """`x` with NumPy arrays and scalars (at any depth of dicts and lists) turned into plain Python values."""
    if isinstance(x, dict):
        return {str(k): jsonable(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [jsonable(v) for v in x]
    if isinstance(x, np.ndarray):
        return x.tolist()
    if isinstance(x, np.generic):
        return x.item()
    return x


def write_json(path: str | os.PathLike, obj: Any) -> None:
    """Atomically write `obj` as indented JSON."""
    atomic_write(path, json.dumps(jsonable(obj), indent=1, sort_keys=True) + "\n")


def read_json(path: str | os.PathLike) -> Any:
    """Read a JSON file (local or cloud path), or None if it does not exist."""
    p = as_path(path)
    if not p.exists():
        return None
    return json.loads(p.read_text())


# -- the class names -------------------------------------------------------------------------------------------
def write_classes(path: str | os.PathLike, names: list[str]) -> None:
    """Atomically write class names, one per line in label order (the format of DIR/classes.txt)."""
    bad = [n for n in names if not n.strip() or "\n" in n or n != n.strip()]
    if bad:
        raise ValueError(f"class names {bad[:5]} cannot be written one per line; give names without line breaks")
    atomic_write(path, "".join(f"{n}\n" for n in names))


def read_classes(path: str | os.PathLike) -> list[str] | None:
    """The class names of a classes.txt (label order; blank lines skipped), or None if it does not exist."""
    p = as_path(path)
    if not p.exists():
        return None
    return [line.strip() for line in p.read_text().splitlines() if line.strip()]


# -- the AL record -------------------------------------------------------------------------------------------------
@dataclasses.dataclass
class RunRecord:
    """The contents of al_state.json: where the run stands and every label so far.

    The optional fields are absent from the file until their phase first runs (a fresh record holds only the
    first six), so a record read and written back is the same file.
    """

    round: int = 0  # the round in progress (== al.rounds when the run is over)
    phase: Phase = "select"  # the next phase of that round
    labeled_rows: list[int] = dataclasses.field(default_factory=list)  # pool rows labelled so far, in order
    labels: list[int] = dataclasses.field(default_factory=list)  # their labels
    selected: list[int] = dataclasses.field(default_factory=list)  # the round's selection, waiting for labels
    results: list[dict[str, Any]] = dataclasses.field(default_factory=list)  # one row per finished round
    t_score: float | None = None  # seconds spent scoring / selecting for the pending selection
    t_select: float | None = None
    predictions: list[list[float]] | None = None  # the model's probabilities for the selection (None: random)
    label_info: dict[str, Any] | None = None  # the oracle's facts about the round's labelling
    given: int = 0  # the first `given` labelled rows came labelled with the data (never asked for)
    excluded: list[int] = dataclasses.field(default_factory=list)  # pool rows the annotator could not label
    stop_predictions: list[int] | None = None  # the last round's predicted classes on the stop set (stopping.py)
    stops: list[dict[str, Any]] | None = None  # each time al.stop stopped the run: round, reason, al.rounds then
    # [row, label, round]: labels an annotator gave to pool rows nobody asked for (label_studio.mode=pool), taken
    # when round `round`'s labels were read; they are in labeled_rows/labels too (after that round's own rows)
    extra: list[list[int]] = dataclasses.field(default_factory=list)

    @classmethod
    def from_json(cls, obj: dict[str, Any] | None) -> RunRecord:
        """The record of an al_state.json dict (a fresh one for None); unknown keys are an error."""
        if obj is None:
            return cls()
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(obj) - names)
        if unknown:
            raise ValueError(f"{STATE_FILE} has fields this version does not know: {', '.join(unknown)}.")
        return cls(**obj)

    def to_json(self) -> dict[str, Any]:
        """The al_state.json dict (fields not yet written by any phase left out)."""
        out = dataclasses.asdict(self)
        for name in ("t_score", "t_select", "label_info", "stop_predictions", "stops"):
            if out[name] is None:
                del out[name]
        if not out["given"]:
            del out["given"]
        if not out["excluded"]:  # absent until an annotator first answers "can't tell"
            del out["excluded"]
        if not out["extra"]:  # absent until the first unasked label: older records read and write back the same
            del out["extra"]
        if "t_score" not in out and out["predictions"] is None:  # no selection was ever recorded
            del out["predictions"]
        return out

    def labeled(self) -> tuple[np.ndarray, np.ndarray]:
        """(pool rows, labels) of every label so far."""
        return np.asarray(self.labeled_rows, np.int64), np.asarray(self.labels, np.int64)

    def unavailable(self, n: int) -> np.ndarray:
        """bool[n]: the pool rows never to be selected again (labelled, or excluded as "can't tell")."""
        out = self.known(n) >= 0
        out[np.asarray(self.excluded, np.int64)] = True
        return out

    def known(self, n: int) -> np.ndarray:
        """Label of each of the n pool rows, -1 where not labelled yet."""
        rows, labels = self.labeled()
        out = np.full(n, -1, np.int64)
        out[rows] = labels
        return out


def finished_line(root: str | os.PathLike, record: RunRecord) -> str:
    """The one line a finished run ends with: rounds, labels, and where its final model is."""
    last = record.round - 1
    excluded = f" ({len(record.excluded)} excluded as can't tell)" if record.excluded else ""
    where = str(root).rstrip("/")
    model = f"{where}/{ROUNDS_DIR}/{last}"
    return (
        f"run finished: {record.round} rounds, {len(record.labeled_rows)} labels{excluded}; final model {model}; "
        f"use it: python -m alpeft_jax.predict --workdir={where} IMAGES... | "
        f"python -m alpeft_jax.export --workdir={where} --format=native|hf|peft --out=DIR"
    )
