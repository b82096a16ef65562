"""The per-round estimate of a run without a test set: k-fold cross-validation over the labels gathered so far.

`cross_validate` splits the labelled pool rows into k folds (`fold_assignment`: stratified, every class's rows in
a seeded random order dealt to the folds in turn, so fold sizes differ by at most one and each class is spread
over the folds), trains one model per fold on the other k-1 folds with the round's recipe (the same `Trainer`,
settings, epochs, batch size and inputs: cached frozen-prefix rows where the round's training reads them,
augmented images where it augments), predicts the held-out fold, and computes accuracy, NLL, ECE and Brier once
over the pooled held-out predictions (every label predicted exactly once, by a model that never saw it).

k is ``eval.cv_folds`` (default 5), capped by the number of labels (leave-one-out below it); with fewer than 2
labels there is no estimate (the metrics are NaN). Each fold starts from a fresh initialisation even with
``train.warm_start`` (the last round's model has seen every held-out label). Folds, initialisations and batch
orders are seeded from (seed, round, fold) only, so a resumed run computes the same estimate.

Cost: k trainings per round of (k-1)/k of the round's labels each, about k-1 times the round's own training steps,
plus one forward pass over the labelled rows. With the prefix cache (``scoring.cache``, ``train.augment=False``)
a step reads cached rows and costs a fraction of an image step; with augmentation each fold decodes images.
"""

from __future__ import annotations

from typing import Any

import jax
import numpy as np

from alpeft_jax import evaluate
from alpeft_jax.inputs import SplitInputs, epoch_rows
from alpeft_jax.train import Trainer, steps_per_epoch

__all__ = ["CV_STREAM", "fold_assignment", "fold_count", "fold_seed", "cross_validate"]

CV_STREAM = 0xC5  # keeps the cv seeds apart from the round's own (seed, round) stream


def fold_count(n_labels: int, folds: int) -> int:
    """k for n labels: `folds` capped by n; 0 when n < 2 (no estimate)."""
    return 0 if n_labels < 2 else min(int(folds), int(n_labels))


def fold_seed(seed: int, round_index: int, fold: int = -1) -> int:
    """A 32-bit seed drawn from (seed, round, fold); fold -1 is the round's fold assignment."""
    entropy = [int(seed) & 0xFFFFFFFF, int(round_index), CV_STREAM, int(fold) + 1]
    return int(np.random.SeedSequence(entropy).generate_state(1)[0])


def fold_assignment(labels: np.ndarray, k: int, seed: int) -> np.ndarray:
    """The fold (0..k-1) of each labelled example: classes in index order, each class's examples in a random
    order drawn by `seed`, dealt to the folds in turn."""
    labels = np.asarray(labels, np.int64)
    rng = np.random.default_rng(seed)
    order = np.concatenate(
        [rng.permutation(np.flatnonzero(labels == c)) for c in np.unique(labels)] or [np.zeros(0, np.int64)]
    )
    folds = np.empty(len(labels), np.int64)
    folds[order] = np.arange(len(labels)) % max(1, k)
    return folds


def cross_validate(
    trainer: Trainer,
    train_inputs: SplitInputs,
    eval_inputs: SplitInputs,
    rows: np.ndarray,
    labels: np.ndarray,
    *,
    folds: int,
    seed: int,
    round_index: int,
    augment: bool,
    eval_batch_size: int,
) -> dict[str, Any]:
    """k-fold estimate of the round's recipe on the labelled `rows` (positions in the pool split) with `labels`:
    accuracy, nll, ece, brier and n over the pooled held-out predictions, and ``cv_folds`` (k)."""
    rows = np.asarray(rows, np.int64)
    labels = np.asarray(labels, np.int64)
    k = fold_count(len(rows), folds)
    if k == 0:
        nan = float("nan")
        return {"accuracy": nan, "nll": nan, "ece": nan, "brier": nan, "n": len(rows), "cv_folds": 0}
    fold_of = fold_assignment(labels, k, fold_seed(seed, round_index))
    known = np.full(len(train_inputs), -1, np.int64)
    known[rows] = labels
    config = trainer.config
    bs = config.batch_size
    logits = np.zeros((len(rows), trainer.model.num_classes), np.float32)
    for f in range(k):
        fit_rows, held = rows[fold_of != f], np.flatnonzero(fold_of == f)
        s = fold_seed(seed, round_index, f)
        state = trainer.init(jax.random.key(s))
        if steps_per_epoch(len(fit_rows), bs, config.drop_last):

            def epoch_batches(epoch: int, fit_rows: np.ndarray = fit_rows, s: int = s) -> Any:
                order = epoch_rows(fit_rows, bs, s, epoch, config.drop_last)
                return train_inputs.batches(order, bs, labels=known, augment=(s, epoch) if augment else None)

            state, _ = trainer.fit(state, epoch_batches)
        out = trainer.predict(state["trainable"], eval_inputs.batches(rows[held], eval_batch_size), eval_inputs.kind)
        whole = eval_inputs.sharder.global_batches(rows[held], eval_batch_size)  # the rows of each whole batch
        got = [np.asarray(lg)[g >= 0] for (lg, _, _), g in zip(out, whole)]
        logits[held] = np.concatenate(got) if got else np.zeros((0, logits.shape[1]), np.float32)
    return {**evaluate.metrics(jax.numpy.asarray(logits), jax.numpy.asarray(labels)), "cv_folds": k}
