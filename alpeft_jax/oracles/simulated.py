"""The simulated oracle: labels from the dataset itself."""

from __future__ import annotations

from typing import Any

import numpy as np

from alpeft_jax.oracles.base import LabelFileError, PoolView


class SimulatedOracle:
    """Reveals the dataset's own labels."""

    def __init__(self, pool: PoolView) -> None:
        self.pool = pool

    def request(self, round_index: int, rows: np.ndarray, predictions: np.ndarray | None = None) -> np.ndarray:
        """The true labels of `rows` (the predictions are not used)."""
        labels = self.pool.true_labels(rows)
        if (labels < 0).any():
            missing = self.pool.ids(np.asarray(rows)[labels < 0])[:5].tolist()
            raise LabelFileError(
                f"the simulated oracle has no label for ids {missing}: this pool is unlabelled; "
                "use --config.oracle=file or label_studio to label by hand."
            )
        return labels.astype(np.int64)

    def info(self, round_index: int) -> dict[str, Any]:
        """Nothing to report: the labels are the dataset's."""
        return {}
