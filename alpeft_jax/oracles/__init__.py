"""Where labels come from: one interface for the driver, whichever oracle it talks to.

    oracle = oracles.make(config, pool, workdir, labels_file=..., run_name=...)
    labels = oracle.request(round, rows, predictions)   # int64 labels (-1: can't tell), or raises PendingLabels
    facts = oracle.info(round)                           # JSON-able facts for results.jsonl

- `simulated`: the dataset's own labels (the papers' protocol).
- `file`: a CSV round-trip with a human annotator: the run writes `DIR/round_<r>/to_label.csv` and stops; the
  annotator fills the `label` column (class name or index) and the same command continues the run.
- `label_studio`: each round's queries become tasks in a Label Studio project, with the model's prediction as a
  pre-annotation; the run waits for the annotations, or stops and continues when rerun (`config.label_studio`).
"""

from __future__ import annotations

import os
from typing import Any

import ml_collections

from alpeft_jax import schema
from alpeft_jax.oracles.base import LabelFileError, Oracle, PendingLabels, PoolView
from alpeft_jax.oracles.file import FileOracle
from alpeft_jax.oracles.label_studio import LabelStudioOracle
from alpeft_jax.oracles.simulated import SimulatedOracle

__all__ = [
    "FileOracle",
    "LabelFileError",
    "LabelStudioOracle",
    "Oracle",
    "PendingLabels",
    "PoolView",
    "SimulatedOracle",
    "make",
]
KINDS = schema.settings_fields()["oracle"].choices  # config.oracle's choices: "simulated", "file", "label_studio"


def make(
    config: ml_collections.ConfigDict | str,
    pool: PoolView,
    workdir: str | os.PathLike,
    *,
    labels_file: str | None = None,
    run_name: str = "",
    **options: Any,
) -> Oracle:
    """The oracle `config.oracle` names, set up from its section of the run config (`config.label_studio`).

    The older form `make(kind, pool, workdir, **options)` (a name and the oracle's own options) is accepted too.
    """
    if isinstance(config, str):
        kind, settings = config, dict(options)
        labels_file = settings.pop("labels_file", labels_file)
    else:
        if options:
            raise TypeError(f"make(config, ...) takes its settings from the config, not {sorted(options)}.")
        kind = config.oracle
        section = config.get("label_studio")
        settings = section.to_dict() if section is not None else {}
        run_name = run_name or str(config.get("name", ""))
    if kind == "simulated":
        return SimulatedOracle(pool)
    if kind == "file":
        return FileOracle(pool, workdir, labels_file=labels_file)
    if kind == "label_studio":
        return LabelStudioOracle(pool, workdir, run_name=run_name, **settings)
    raise ValueError(f"unknown oracle {kind!r}; use --config.oracle=simulated, file or label_studio.")
