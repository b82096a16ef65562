"""The oracle interface and the view of the pool it labels."""

from __future__ import annotations

import dataclasses
from typing import Any, Protocol

import numpy as np


class LabelFileError(ValueError):
    """A labels file (or server answer) is unusable; nothing was changed."""


class PendingLabels(Exception):  # noqa: N818 - a control-flow signal, not an error
    """Labels were requested from a human and are not there yet; the run stops cleanly."""


@dataclasses.dataclass
class PoolView:
    """The AL pool as oracles see it: row r is `source[positions[r]]`."""

    source: Any
    positions: np.ndarray
    class_names: list[str]

    def ids(self, rows: np.ndarray) -> np.ndarray:
        """Stable dataset ids of pool rows."""
        return np.asarray(self.source.ids)[self.positions[np.asarray(rows, np.int64)]]

    def true_labels(self, rows: np.ndarray) -> np.ndarray:
        """The dataset's labels of pool rows (-1 where unknown)."""
        return np.asarray(self.source.labels)[self.positions[np.asarray(rows, np.int64)]]

    def example(self, row: int) -> dict[str, Any]:
        """The dataset example of one pool row."""
        return self.source[int(self.positions[int(row)])]

    def parse_label(self, value: str, where: str) -> int:
        """A class index from a class name (case-insensitive) or an index string."""
        text = value.strip()
        if not text:
            raise LabelFileError(f"{where}: empty label; fill in a class name or index.")
        names = {n.lower(): i for i, n in enumerate(self.class_names)}
        if text.lower() in names:
            return names[text.lower()]
        if text.lstrip("-").isdigit():
            k = int(text)
            if 0 <= k < len(self.class_names):
                return k
        raise LabelFileError(
            f"{where}: unknown class {text!r}; use one of {self.class_names[:10]}"
            f"{' ...' if len(self.class_names) > 10 else ''} or an index 0..{len(self.class_names) - 1}."
        )


class Oracle(Protocol):
    """Gives labels for selected pool rows."""

    def request(self, round_index: int, rows: np.ndarray, predictions: np.ndarray | None = None) -> np.ndarray:
        """Labels int64[len(rows)] of pool rows, -1 for an example the annotator could not tell (it is excluded
        from the run); raises PendingLabels while a human has yet to answer.

        `predictions`: float32[len(rows), K] class probabilities of the current model (None in round 0).
        """
        ...

    def info(self, round_index: int) -> dict[str, Any]:
        """JSON-able facts about the round's labelling, for results.jsonl ({} when there is nothing to say)."""
        ...
