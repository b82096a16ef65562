"""When to stop labelling: signals recorded every round without test labels, and the rules that read them.

Every finished round adds to its results row (METHOD.md §3.9):

  stop_kappa       Cohen's kappa between this round's and the last round's predicted classes on the stop set: a
                   fixed random subset of `al.stop_set_size` pool rows (drawn by `al.stop_set_seed`, the same for
                   every seed and strategy; rows of it that get labelled stay in it). None in round 0.
  stop_kappa_mean  the mean stop_kappa of the last `al.stop_window` rounds (None until there are that many).
  stop_gain        the accuracy the next round is expected to add, from the learning curve so far: a least-squares
                   line of the rows' `accuracy` (the test split's, or the cross-validated estimate of rows with
                   `evaluation: "cv"`) against log(labels) over the last `al.stop_window` + 1 rounds, read at the
                   next round's label count (the last round's number of new labels again). None until there are
                   that many rounds.
  stop_rules       the rules whose condition holds at this round: "kappa" when stop_kappa_mean >= al.stop_kappa,
                   "gain" when stop_gain < al.stop_gain.

With `al.stop=kappa|gain` the run stops after the first round whose row lists that rule (unless it is the last
round anyway): the row gets `stop_reason`, al_state.json's `stops` the round, the reason and the al.rounds of that
run, and a rerun with the same config says the reason and does nothing. A rerun with a higher al.rounds (and
--allow_config_change, as any change of the config) continues past the stop; the rule is re-armed after
`al.stop_window` more rounds, so it can stop the run again on fresh evidence. `report` shows, from the rows, where
each rule would have stopped.
"""

from __future__ import annotations

import sys
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

import numpy as np
from absl import logging

from alpeft_jax.inputs import subset
from alpeft_jax.parallel import is_leader

if TYPE_CHECKING:
    from alpeft_jax.loop import Run
    from alpeft_jax.workdir import RunRecord

__all__ = ["RULES", "StopMonitor", "cohen_kappa", "expected_gain", "first_stop", "round_signals"]

RULES = ("kappa", "gain")
Row = Mapping[str, Any]


def cohen_kappa(a: np.ndarray, b: np.ndarray) -> float:
    """Cohen's kappa of two label vectors: (observed - chance agreement) / (1 - chance); 1.0 when both are one class."""
    a, b = np.asarray(a, np.int64), np.asarray(b, np.int64)
    if a.shape != b.shape or a.ndim != 1 or a.size == 0:
        raise ValueError(f"kappa needs two equal-length non-empty label vectors, got {a.shape} and {b.shape}")
    k = int(max(a.max(), b.max())) + 1
    observed = float(np.mean(a == b))
    chance = float(np.dot(np.bincount(a, minlength=k), np.bincount(b, minlength=k))) / a.size**2
    if chance >= 1.0:  # both predict one and the same class everywhere: perfect, stable agreement
        return 1.0
    return (observed - chance) / (1.0 - chance)


def expected_gain(rows: Sequence[Row], window: int) -> float | None:
    """Accuracy the next round is expected to add: the last window + 1 rows' accuracy fitted on log(labels)."""
    if window < 1 or len(rows) < window + 1:
        return None
    last = rows[-(window + 1) :]
    if any(r.get("accuracy") is None for r in last):  # a run with neither a test split nor a cv estimate
        return None
    n = np.asarray([float(r["n_labeled"]) for r in last])
    acc = np.asarray([float(r["accuracy"]) for r in last])
    if np.any(n <= 0) or np.ptp(np.log(n)) == 0:
        return None
    slope = np.polyfit(np.log(n), acc, 1)[0]
    step = n[-1] - n[-2]
    return float(slope * np.log((n[-1] + step) / n[-1]))


def round_signals(
    rows: Sequence[Row], row: Row, kappa: float | None, *, window: int, kappa_threshold: float, gain_threshold: float
) -> dict[str, Any]:
    """The stop signals of `row` (the round just finished; `rows` the rounds before it) given its kappa."""
    recent = [*(r.get("stop_kappa") for r in (rows[-(window - 1) :] if window > 1 else [])), kappa]
    known = [float(k) for k in recent if k is not None]
    mean = float(np.mean(known)) if len(known) == window else None
    gain = expected_gain([*rows, row], window)
    fires = []
    if mean is not None and mean >= kappa_threshold:
        fires.append("kappa")
    if gain is not None and gain < gain_threshold:
        fires.append("gain")
    return {"stop_kappa": kappa, "stop_kappa_mean": mean, "stop_gain": gain, "stop_rules": fires}


def first_stop(rows: Sequence[Row], rule: str, threshold: float | None = None) -> int | None:
    """Index of the first row at which `rule` would have stopped the run (None: never, or rows without signals);
    with a threshold, the rule's condition is read off the recorded signals at that threshold instead."""
    if rule not in RULES:
        raise ValueError(f"unknown stopping rule {rule!r}; choose one of {', '.join(RULES)}")
    if threshold is None:
        fires = lambda r: rule in (r.get("stop_rules") or [])  # noqa: E731
    elif rule == "kappa":
        fires = lambda r: r.get("stop_kappa_mean") is not None and r["stop_kappa_mean"] >= threshold  # noqa: E731
    else:
        fires = lambda r: r.get("stop_gain") is not None and r["stop_gain"] < threshold  # noqa: E731
    return next((i for i, r in enumerate(rows) if fires(r)), None)


def _reason(rule: str, row: Row, c: Any) -> str:
    why = (
        f"mean kappa {row['stop_kappa_mean']:.4f} of the last {c.al.stop_window} rounds >= al.stop_kappa "
        f"{c.al.stop_kappa}"
        if rule == "kappa"
        else f"expected gain of the next round {100 * row['stop_gain']:+.2f} accuracy points < al.stop_gain "
        f"{100 * c.al.stop_gain:.2f}"
    )
    return f"al.stop={rule}: stopped after round {row['round']} ({row['n_labeled']} labels): {why}"


class StopMonitor:
    """The driver's side: the stop set's predictions after each round, the signals, and stopping the run."""

    def __init__(self, run: Run) -> None:
        self.run, self.c = run, run.c
        size = int(self.c.al.stop_set_size)
        self.rows = subset(len(run.pool), size, int(self.c.al.stop_set_seed)) if size else np.zeros(0, np.int64)
        self._said = False

    def predictions(self, trainable: Any) -> np.ndarray:
        """The model's predicted class of each stop-set row."""
        scorer, inputs = self.run.scorer, self.run.inputs.get("pool")

        def renumbered() -> Any:  # the stop set's own positions 0..m-1, as the scorer assembles rows by position
            for batch in inputs.batches(self.rows, scorer.chunk):
                pos = np.asarray(batch["pos"], np.int64)
                at = np.searchsorted(self.rows, np.maximum(pos, 0))
                yield {**batch, "pos": np.where(pos >= 0, at, -1)}

        return np.asarray(scorer.score(trainable, renumbered(), len(self.rows))["logits"]).argmax(-1)

    def signals(self, rec: RunRecord, row: dict[str, Any], trainable: Any) -> dict[str, Any]:
        """Round `row`'s stop signals (rec.results: the rounds before it); keeps its predictions in the record."""
        kappa = None
        if self.rows.size:
            pred = self.predictions(trainable)
            previous = rec.stop_predictions
            if previous is not None and len(previous) == pred.size:
                kappa = cohen_kappa(np.asarray(previous), pred)
            rec.stop_predictions = pred.tolist()
        a = self.c.al
        return round_signals(
            rec.results,
            row,
            kappa,
            window=int(a.stop_window),
            kappa_threshold=float(a.stop_kappa),
            gain_threshold=float(a.stop_gain),
        )

    def decide(self, rec: RunRecord, row: dict[str, Any]) -> str:
        """The reason to stop after `row` under al.stop ('' to go on); a stop is added to rec.stops and the row."""
        rule, r = self.c.al.stop, int(row["round"])
        if rule == "none" or rule not in row.get("stop_rules", []) or r + 1 >= self.c.al.rounds:
            return ""
        if rec.stops and r < rec.stops[-1]["round"] + int(self.c.al.stop_window):  # re-armed after a lifted stop
            return ""
        reason = _reason(rule, row, self.c)
        row["stop_reason"] = reason
        rec.stops = [*(rec.stops or []), {"round": r, "rounds": int(self.c.al.rounds), "reason": reason}]
        return reason

    def halted(self, rec: RunRecord) -> bool:
        """Whether a recorded stop holds for this config (said once); a higher al.rounds lifts it."""
        if not rec.stops:
            return False
        last = rec.stops[-1]
        if self.c.al.rounds > last["rounds"]:
            if not self._said:
                logging.info(
                    "al.rounds %d > %d: continuing past the stop after round %d (%s)",
                    self.c.al.rounds,
                    last["rounds"],
                    last["round"],
                    last["reason"],
                )
                self._said = True
            return False
        text = f"{last['reason']}; rerun with a higher --config.al.rounds (and --allow_config_change) to go on"
        logging.info("%s", text)
        if is_leader():
            print(text, file=sys.stderr)
        return True
