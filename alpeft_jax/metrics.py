"""What a run shows while and after it runs: progress bars, TensorBoard events, results.jsonl and curves.png.

Process 0 alone writes (the other processes hold the same numbers); file names are `alpeft_jax.workdir`'s.
"""

from __future__ import annotations

import json
import tempfile
from typing import Any

import numpy as np
from etils import epath

from alpeft_jax.parallel import is_leader
from alpeft_jax.workdir import Workdir, atomic_write, is_local


def bar(desc: str, total: int, unit: str = "it") -> Any:
    """A tqdm progress bar on process 0 (silent elsewhere)."""
    from tqdm.auto import tqdm

    return tqdm(
        total=total, desc=desc, unit=unit, disable=not is_leader(), mininterval=2.0, dynamic_ncols=True, leave=False
    )


class Metrics:
    """TensorBoard event files (process 0): per-epoch training metrics of each round, per-round results.

    For a cloud workdir the events are written to a local staging folder and copied to DIR/tensorboard at every
    flush (TensorBoard reads them from there).
    """

    def __init__(self, workdir: Workdir) -> None:
        self.writer, self.target, self.staging = None, workdir.tensorboard, None
        if is_leader():
            from tensorboardX import SummaryWriter

            logdir = str(self.target)
            if not is_local(self.target):
                self.staging = tempfile.mkdtemp(prefix="alpeft_tb_")
                logdir = self.staging
            self.writer = SummaryWriter(logdir, flush_secs=10)

    def scalars(self, prefix: str, values: dict[str, Any], step: int) -> None:
        """Write the numeric entries of `values` under `prefix/` at `step`."""
        if self.writer is None:
            return
        for k, v in values.items():
            if isinstance(v, (int, float, np.floating, np.integer)) and not isinstance(v, bool):
                self.writer.add_scalar(f"{prefix}/{k}", float(v), step)

    def flush(self) -> None:
        """Push pending events to disk (and to the cloud workdir)."""
        if self.writer is None:
            return
        self.writer.flush()
        if self.staging is not None:
            self.target.mkdir(parents=True, exist_ok=True)
            for f in epath.Path(self.staging).iterdir():
                f.copy(self.target / f.name, overwrite=True)


def write_reports(workdir: Workdir, name: str, rows: list[dict[str, Any]]) -> None:
    """results.jsonl and curves.png of a run from its per-round results (process 0)."""
    from alpeft_jax import report

    if not is_leader():
        return
    atomic_write(workdir.results, "".join(json.dumps(r) + "\n" for r in rows))
    png = workdir.curves
    if is_local(png):
        report.plot_curves({name: [rows]}, str(png))
    else:
        with tempfile.TemporaryDirectory() as tmp:
            report.plot_curves({name: [rows]}, f"{tmp}/curves.png")
            epath.Path(f"{tmp}/curves.png").copy(png, overwrite=True)


def skipped_steps(history: list[dict[str, Any]]) -> dict[str, int]:
    """A float16 round's update steps skipped for non-finite gradients (dynamic loss scaling), as
    ``{"skipped_steps": n}``; {} for a round without loss scaling."""
    if not history or any("skipped_steps" not in h for h in history):
        return {}
    return {"skipped_steps": sum(int(h["skipped_steps"]) for h in history)}


def calibration_activity(history: list[dict[str, Any]], calibration: bool = True) -> dict[str, float]:
    """The mean misclassified share of the labelled batch over a round's update steps and, for a run with the
    calibration loss, the share of steps where it was non-zero (it is exactly 0 on a batch classified right)."""
    steps = sum(int(h["steps"]) for h in history)
    if not steps or any("calibration_active_steps" not in h for h in history):
        return {}
    missed = sum(float(h["misclassified_share"]) * int(h["steps"]) for h in history)
    out = {"train_misclassified_share": missed / steps}
    if calibration:
        out["calibration_active_share"] = sum(int(h["calibration_active_steps"]) for h in history) / steps
    return out
