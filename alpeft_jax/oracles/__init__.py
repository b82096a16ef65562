"""Where labels come from: one interface, `Oracle.request(round, rows) -> labels or None (pending)`.

- `simulated`: the dataset's own labels (the papers' protocol).
- `file`: a CSV round-trip with a human annotator: the run writes `DIR/round_<r>/to_label.csv` and stops; the
  annotator fills the `label` column (class name or index) and the same command continues the run.
- `label_studio`: tasks are created on a Label Studio server; the run continues once they are annotated.
"""

from alpeft_jax.oracles.base import LabelFileError, Oracle, PendingLabels, PoolView
from alpeft_jax.oracles.file import FileOracle
from alpeft_jax.oracles.label_studio import LabelStudioOracle
from alpeft_jax.oracles.simulated import SimulatedOracle

__all__ = [
    "FileOracle", "LabelFileError", "LabelStudioOracle", "Oracle", "PendingLabels", "PoolView", "SimulatedOracle",
    "make",
]


def make(kind: str, pool: PoolView, workdir: str, **options: object) -> Oracle:
    """An oracle by name: "simulated", "file" or "label_studio"."""
    if kind == "simulated":
        return SimulatedOracle(pool)
    if kind == "file":
        return FileOracle(pool, workdir, **options)
    if kind == "label_studio":
        return LabelStudioOracle(pool, workdir, **options)
    raise ValueError(f"unknown oracle {kind!r}; use --config.oracle=simulated, file or label_studio.")
