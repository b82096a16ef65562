"""The active-learning driver: `run(config, workdir)` — what the command line, notebooks and tests call.

Every process of a multi-host run executes the same driver on one global mesh (`alpeft_jax.parallel`): training
is data parallel, pool scoring and evaluation spread over every device, and every process ends each phase with the
same state. Process 0 alone writes the JSON state, the reports and the TensorBoard events, and talks to the oracle;
Orbax checkpoints are written by all processes together.

Each round r (METHOD.md §3.3):
  select  round 0: `al.initial` random labels; later: score the pool with round r-1's model (frozen-prefix
          cache), then the strategy proposes int(gamma·N) candidates and PCB keeps `al.budget` of them;
  label   the oracle reveals the labels (or a human is asked, and the run stops cleanly until they answer);
  train   a fresh trainable tree (or warm start) trained on every label so far;
  eval    accuracy, NLL, ECE, Brier on the test set or, for a run without one (`data.runsets`), the same
          metrics cross-validated over the labels so far (`crossval`); checkpoint; one row in results.jsonl
          with `evaluation` "test" or "cv", and the stop
          signals of `alpeft_jax.stopping` (al.stop may end the run there).
With a class list (`data.classes`) and a human oracle, the labels the pool already holds are recorded before
round 0 as given labels: they count toward `al.initial` and are never asked for. DIR/classes.txt holds the class
names in label order from the start of the run.
The phases and the labels are recorded in DIR/al_state.json before the next phase starts (see workdir.py for
the layout and the resume order), so a killed run resumes where it stopped and ends with the same results.
"""

from __future__ import annotations

import sys
import time
from typing import Any

import jax
import ml_collections
import numpy as np
from absl import logging
from etils import epath

from alpeft_jax import backbones, crossval, data, oracles, schema, strategies
from alpeft_jax.assemble import assemble, config_class_names
from alpeft_jax.checkpoint import TreeStore
from alpeft_jax.config import strategy_options
from alpeft_jax.data import runsets
from alpeft_jax.inputs import RunInputs, SplitInputs, epoch_rows, subset
from alpeft_jax.metrics import Metrics, bar, calibration_activity, skipped_steps, write_reports
from alpeft_jax.models import lora as lora_lib
from alpeft_jax.parallel import Sharder, barrier, broadcast_json, is_leader
from alpeft_jax.scoring import PoolScorer
from alpeft_jax.stopping import StopMonitor
from alpeft_jax.train import NaNLossError, TrainConfig, Trainer, steps_per_epoch
from alpeft_jax.workdir import ConfigMismatchError, Workdir, finished_line, read_classes, write_classes

__all__ = ["ConfigMismatchError", "Run", "run", "train_config"]


def train_config(c: ml_collections.ConfigDict) -> TrainConfig:
    """The TrainConfig described by `config.train` (loss scaling where the compute dtype is float16)."""
    return TrainConfig.from_config(
        c.train, loss_prediction=strategies.facts(c.al.strategy).trains_loss_head, float16=c.dtype == "float16"
    )


# --------------------------------------------------------------------------------------------------
# The run
# --------------------------------------------------------------------------------------------------


class Run:
    """One AL run in one workdir; `Run(config, workdir).run()` does all remaining rounds."""

    def __init__(
        self,
        config: ml_collections.ConfigDict,
        workdir: str | epath.PathLike,
        *,
        labels_file: str | None = None,
        allow_config_change: bool = False,
    ) -> None:
        c = self.c = config
        self.workdir = Workdir.open(workdir)
        schema.raise_problems(schema.validate(c, strategies=strategies.REGISTRY))  # what preflight checks too
        # -- the record: read by process 0, the same on every process ---------------------------------------
        self.workdir.record_config(c.to_dict(), allow_config_change)
        self.record = self.workdir.read_record()
        # -- data ------------------------------------------------------------------------------------------
        data_dir = c.data.dir or None
        split_file = c.data.split_file or None
        classes = runsets.parse_classes(c.data.classes)
        given = {} if classes is None else {"classes": classes}
        pool_src = data.get_source(c.data.name, c.data.train_split, data_dir, split_file=split_file, **given)
        test_set, self.test_note = runsets.test_set(c, classes, list(pool_src.class_names))
        test_src = None
        if test_set is not None:
            test_src = data.get_source(
                test_set.name, test_set.split, test_set.data_dir, split_file=test_set.split_file, **test_set.options()
            )
        names = config_class_names(c, pool_src)  # the user's list, else the data's (CoOp's names where asked)
        self.class_names = names
        self.num_classes = len(names)
        self._record_classes(names, allow_config_change)
        # -- mesh, model, inputs ---------------------------------------------------------------------------
        self.sharder = Sharder()
        parts = assemble(c, names)  # the backbone, the model and the preprocessing that predict / export reload
        self.backbone, self.model, self.image_size = parts.backbone, parts.model, parts.image_size
        weights = backbones.weights_fingerprint(self.backbone.params)  # the prefix caches are keyed on it
        self.backbone.params = self.sharder.replicate(self.backbone.params)  # frozen weights on every device

        def split(source: Any, positions: np.ndarray) -> SplitInputs:
            return SplitInputs(
                source,
                positions,
                self.sharder,
                image_size=self.image_size,
                mean=self.backbone.mean,
                std=self.backbone.std,
                num_threads=c.data.num_threads or None,
                resize_ratio=self.backbone.eval_resize,
                crop=self.backbone.crop_offset,
            )

        self.pool = split(pool_src, subset(len(pool_src), c.data.max_pool, c.data.subset_seed))
        self.test = (
            None
            if test_src is None
            else split(test_src, subset(len(test_src), c.data.max_test, c.data.subset_seed + 1))
        )
        if runsets.given_labels(c):
            self._record_given_labels()
        # What a cached prefix depends on besides the images (RunInputs adds each split's source fingerprint and
        # preprocessing): the backbone's weights and dtype, and where the prefix ends.
        cache_key = (weights, c.dtype, self.model.input_kind, self.model.cache_block)
        self.inputs = RunInputs(
            self.model,
            self.pool,
            self.test,
            cache=c.scoring.cache,
            augment=c.train.augment,
            cache_dir=self.workdir.cache(c.scoring.cache_dir),
            cache_key=cache_key,
            chunk_size=c.scoring.batch_size,
            memory_budget_bytes=int(c.scoring.memory_budget_gb * (1 << 30)),
        )
        self.trainer = Trainer(self.model, train_config(c), self.inputs.train_kind, sharder=self.sharder)
        self.scorer = PoolScorer(
            self.model, self.inputs.eval_kind, chunk_size=c.scoring.batch_size, sharder=self.sharder
        )
        # -- the round's settings, stores, oracle ------------------------------------------------------------
        self.budget = c.al.budget or self.num_classes
        self.initial = c.al.initial or self.num_classes
        self.gamma_count = strategies.candidate_count(len(self.pool), c.al.gamma)
        self.options = strategy_options(c)
        self.rounds_store = TreeStore(self.workdir.rounds)
        self.progress_store = TreeStore(self.workdir.progress, max_to_keep=1)
        self.oracle = None
        if is_leader():  # only process 0 talks to the oracle; the labels reach the others by broadcast
            pool_view = oracles.PoolView(pool_src, self.pool.positions, names)
            self.oracle = oracles.make(c, pool_view, self.workdir.root, labels_file=labels_file, run_name=c.name)
        self.metrics = Metrics(self.workdir)
        self.stopper = StopMonitor(self)  # stop signals each round; al.stop ends the run (stopping.py)
        self._trainable: Any = None  # the model of the last finished round, when in memory
        self.finished = ""  # the run's closing line (workdir.finished_line) once every round is done
        self._loss_scale: Any = None  # (round, the float16 loss scale it ended with), when in memory
        self._extra: list[list[int]] = []  # [row, label] the oracle gave unasked with the round's labels
        self._summary()

    # ----------------------------------------------------------------------------------------------
    def _record_classes(self, names: list[str], allow_change: bool) -> None:
        """Write DIR/classes.txt (process 0); a started run whose class list changed is refused unless allowed."""
        problem = ""
        if is_leader():
            old = read_classes(self.workdir.classes)
            started = bool(self.record.labeled_rows or self.record.results)
            if old is not None and old != names and started:
                problem = (
                    f"{self.workdir.classes} holds other classes than the data now gives ({len(old)}: {old[:5]} vs "
                    f"{len(names)}: {names[:5]}); use a new --workdir, or pass --allow_config_change"
                )
        problem = broadcast_json(problem)
        if problem and not allow_change:
            raise ConfigMismatchError(problem)
        if problem:
            logging.warning("continuing with a changed class list: %s", problem)
        if is_leader():
            write_classes(self.workdir.classes, names)

    def _record_given_labels(self) -> None:
        """Before round 0: the pool's own labels become the first labelled rows (`RunRecord.given`)."""
        rec = self.record
        if rec.round or rec.phase != "select" or rec.labeled_rows or rec.results:
            return
        labels = self.pool.labels
        rows = np.flatnonzero(labels >= 0)
        if not rows.size:
            return
        rec.labeled_rows, rec.labels, rec.given = rows.tolist(), labels[rows].tolist(), int(rows.size)
        self.workdir.write_record(rec)
        logging.info("%d pool images come labelled: they start the labelled set and are never asked for", rows.size)

    def _summary(self) -> None:
        trainable = jax.eval_shape(self.model.init, jax.random.key(0))
        n_train = lora_lib.num_params(trainable)
        n_frozen = lora_lib.num_params(self.backbone.params)
        logging.info(
            "backbone %s (%s, %s), %s frozen parameters",
            self.c.backbone,
            self.backbone.family,
            self.c.dtype,
            f"{n_frozen:,}",
        )
        n_head = lora_lib.num_params(trainable["head"]) if "head" in trainable else 0
        logging.info(
            "adaptation %s: %s trainable parameters (%.3f%% of the backbone; %.3f%% without the %s-parameter head)",
            self.c.adapt.mode,
            f"{n_train:,}",
            100.0 * n_train / max(1, n_frozen),
            100.0 * (n_train - n_head) / max(1, n_frozen),
            f"{n_head:,}",
        )
        names = self.model.describe(trainable)
        for name, shape in names[:12]:
            logging.info("  trainable %s %s", name, shape)
        if len(names) > 12:
            logging.info("  ... %d trainable arrays in all", len(names))
        logging.info(
            "data %s: pool %d, %s, %d classes; image size %d; budget %d per round, %d rounds",
            self.c.data.name,
            len(self.pool),
            "no test set" if self.test is None else f"test {len(self.test)}",
            self.num_classes,
            self.image_size,
            self.budget,
            self.c.al.rounds,
        )
        logging.info(
            "inputs: scoring/eval on %s, training on %s; mesh: %d devices over %d process(es)",
            self.inputs.eval_kind,
            self.inputs.train_kind,
            self.sharder.size,
            self.sharder.process_count,
        )
        logging.info("%s", self.test_note)

    # -- phases ------------------------------------------------------------------------------------
    def _round_seed(self, r: int) -> int:
        return int(self.c.seed) * 1000 + r

    def select(self, r: int) -> tuple[np.ndarray, float, float, np.ndarray | None]:
        """Rows to label in round r, the seconds spent scoring and selecting, and the model's probabilities."""
        known = self.record.known(len(self.pool))
        labeled = known >= 0
        excluded = self.record.unavailable(len(self.pool)) & ~labeled  # "can't tell": never asked again
        rng = self._round_seed(r)
        strategy = self.c.al.strategy if r > 0 else "random"
        budget = self.budget if r > 0 else max(0, self.initial - int(labeled.sum()))  # given labels count
        left = int((~labeled & ~excluded).sum())
        if budget > left:
            logging.warning("round %d: only %d pool examples are left to ask for (budget %d)", r, left, budget)
            budget = left
        t_score = 0.0
        pool: dict[str, Any] = {"labels": known}
        facts = strategies.facts(strategy)
        if facts.needs_model:
            trainable = self._model_of_round(r - 1)
            t0 = time.time()
            mc = self.c.al.mc_samples if facts.needs_dropout else 0  # MC dropout: checked by schema.validate
            inputs = self.inputs.get("pool")
            n = len(inputs)
            with bar(f"round {r} scoring", n, "img") as progress:
                pool = self.scorer.score(
                    trainable,
                    inputs.batches(np.arange(n), self.scorer.chunk),
                    n,
                    labels=known,
                    mc_samples=mc,
                    rng=jax.random.key(rng),
                    progress=lambda done, total: progress.update(done - progress.n),
                )
            t_score = time.time() - t0
        t0 = time.time()
        chosen = strategies.select_with_pcb(
            strategy,
            rng,
            pool,
            labeled,
            budget,
            self.gamma_count,
            use_pcb=self.c.al.pcb,
            authors_quirk=self.c.al.authors_quirk,
            excluded=excluded if excluded.any() else None,
            **self.options,
        )
        chosen = np.asarray(chosen, np.int64)
        logits = np.asarray(pool["logits"], np.float64) if "logits" in pool else None
        if self.oracle is not None and hasattr(self.oracle, "publish"):  # pool mode: every task's guess and rank
            scores = strategies.uncertainty.row_scores(strategy, pool)
            self.oracle.publish(r, chosen, scores, None if logits is None else _softmax(logits), labeled)
        probs = None if logits is None else _softmax(logits[chosen])
        return chosen, t_score, time.time() - t0, probs

    def _model_of_round(self, r: int) -> Any:
        if self._trainable is not None and self._trainable[0] == r:
            return self._trainable[1]
        self._restore_round(r)
        return self._trainable[1]

    def _restore_round(self, r: int) -> None:
        """Read round r's checkpoint: its trainable tree and (float16) its final loss scale."""
        like = self.trainer.init(jax.random.key(0))
        state, _ = self.rounds_store.restore(r, like)
        self._trainable = (r, state["trainable"])
        self._loss_scale = (r, state.get("loss_scale"))

    def _loss_scale_after(self, r: int) -> Any:
        """The dynamic loss scale (and its good-step count) round r ended with; the next round starts from it."""
        if self._loss_scale is None or self._loss_scale[0] != r:
            self._restore_round(r)
        return self._loss_scale[1]

    def train(self, r: int) -> tuple[Any, list[dict[str, Any]], float]:
        """Train round r's model on all labels so far; resumes from an in-round checkpoint."""
        rows, _ = self.record.labeled()
        known = self.record.known(len(self.pool))
        seed = self._round_seed(r)
        c = self.c
        key = jax.random.fold_in(jax.random.key(c.seed), r)
        warm = self._model_of_round(r - 1) if (c.train.warm_start and r > 0) else None
        state = self.trainer.init(key, trainable=warm)
        if "loss_scale" in state and r > 0:  # float16: the scale carries across rounds, as within one
            carried = self._loss_scale_after(r - 1)
            state["loss_scale"] = state["loss_scale"] if carried is None else self.sharder.replicate(carried)
        if not len(rows):  # every example asked for so far was excluded: nothing to train on yet
            logging.warning("round %d: no labels yet (every selected example was excluded); the model is untrained", r)
            return state, [], 0.0
        start_epoch, start_batch, history = 0, 0, []
        if self.progress_store.steps():
            step = self.progress_store.steps()[-1]
            restored, meta = self.progress_store.restore(step, state)
            if meta.get("round") == r:
                state, start_epoch, start_batch = restored, int(meta["epoch"]), int(meta["batch"])
                history = list(meta.get("history", []))
                logging.info("round %d: resuming training at epoch %d, batch %d", r, start_epoch, start_batch)
        bs, every = c.train.batch_size, c.train.checkpoint_every_steps
        inputs = self.inputs.get("pool", for_training=True)
        augment = c.train.augment and inputs.kind == "images"
        per_epoch = steps_per_epoch(len(rows), bs, c.train.drop_last)
        done0 = per_epoch * start_epoch + start_batch
        progress = bar(f"round {r} training", per_epoch * c.train.epochs, "step")
        progress.update(done0)
        base_step = 1_000_000 * r  # TensorBoard step axis: rounds side by side

        def epoch_batches(epoch: int) -> Any:
            order = epoch_rows(rows, bs, seed, epoch, c.train.drop_last)
            first = start_batch if epoch == start_epoch else 0
            return inputs.batches(order[first * bs :], bs, labels=known, augment=(seed, epoch) if augment else None)

        def on_step(st: Any, epoch: int, next_batch: int, hist: list[dict]) -> None:
            progress.update(1)
            done = per_epoch * epoch + next_batch
            if every and done % every == 0:
                self.progress_store.save(
                    base_step + done, st, {"round": r, "epoch": epoch, "batch": next_batch, "history": hist}
                )

        def on_epoch_end(epoch: int, st: Any, row: dict) -> None:
            self.metrics.scalars(f"round_{r:02d}/train", row, epoch)
            progress.set_postfix(loss=f"{row['loss']:.4f}", acc=f"{row['train_accuracy']:.3f}")
            logging.debug(
                "round %d epoch %d: loss %.4f (ce %.4f, calibration %.4f x %.2f), train acc %.3f, lr %.2e",
                r,
                epoch,
                row["loss"],
                row["ce"],
                row["calibration"],
                row["calibration_weight"],
                row["train_accuracy"],
                row["lr"],
            )

        t0 = time.time()
        try:
            state, history = self.trainer.fit(
                state,
                epoch_batches,
                start_epoch=start_epoch,
                start_batch=start_batch,
                history=history,
                on_step=on_step,
                on_epoch_end=on_epoch_end,
            )
        except NaNLossError as e:
            raise NaNLossError(f"round {r}: {e}") from None
        finally:
            progress.close()
        return state, history, time.time() - t0

    def evaluate(self, trainable: Any) -> dict[str, float]:
        """Test metrics of a trainable tree."""
        inputs = self.inputs.get("test")
        rows = np.arange(len(inputs))
        return self.trainer.evaluate(
            trainable, inputs.batches(rows, self.c.eval.batch_size, labels=inputs.labels), kind=inputs.kind
        )

    def evaluation(self, r: int, trainable: Any) -> dict[str, Any]:
        """Round r's metrics and their `evaluation`: "test" on the test set, or "cv" over the labels so far."""
        if self.test is not None:
            return {**self.evaluate(trainable), "evaluation": "test"}
        rows, labels = self.record.labeled()
        with bar(f"round {r} cv", 1, "round") as progress:
            out = crossval.cross_validate(
                self.trainer,
                self.inputs.get("pool", for_training=True),
                self.inputs.get("pool"),
                rows,
                labels,
                folds=self.c.eval.cv_folds,
                seed=int(self.c.seed),
                round_index=r,
                augment=self.c.train.augment and self.inputs.train_kind == "images",
                eval_batch_size=self.c.eval.batch_size,
            )
            progress.update(1)
        return {**out, "evaluation": "cv"}

    def label(self, r: int, rows: np.ndarray, predictions: Any) -> tuple[np.ndarray | None, str, dict[str, Any]]:
        """The oracle's labels for `rows` (process 0 asks, every process gets them), or None and why not."""
        answer: dict[str, Any] = {}
        if not len(rows):  # nothing to ask (given labels filled round 0)
            return np.zeros(0, np.int64), "", {}
        if is_leader() and self.oracle is not None:  # process 0 always has an oracle
            try:
                probs = None if predictions is None else np.asarray(predictions, np.float32)
                labels = self.oracle.request(r, rows, probs)
                answer = {"labels": [int(x) for x in labels], "info": dict(self.oracle.info(r))}
                if hasattr(self.oracle, "extra"):  # labels given to pool rows nobody asked for
                    answer["extra"] = [[int(row), int(lab)] for row, lab in self.oracle.extra(r)]
            except oracles.PendingLabels as e:
                answer = {"pending": str(e)}
            except Exception as e:  # every process must stop, not only the one that asked
                answer = {"error": f"{type(e).__name__}: {e}", "type": type(e).__name__}
                if jax.process_count() == 1:
                    raise
                broadcast_json(answer)
                raise
        answer = broadcast_json(answer)
        if "error" in answer:
            raise (oracles.LabelFileError if answer.get("type") == "LabelFileError" else RuntimeError)(answer["error"])
        if "pending" in answer:
            return None, answer["pending"], {}
        self._extra = answer.get("extra", [])
        return np.asarray(answer["labels"], np.int64), "", answer.get("info", {})

    # ----------------------------------------------------------------------------------------------
    def run(self) -> list[dict[str, Any]]:
        """Run every remaining round; returns the per-round results (stops early if labels are pending)."""
        rec = self.record
        while rec.round < self.c.al.rounds and not self.stopper.halted(rec):
            r = rec.round
            if rec.phase == "select":
                rows, t_score, t_select, probs = self.select(r)
                rec.phase, rec.selected, rec.t_score, rec.t_select = "label", rows.tolist(), t_score, t_select
                rec.predictions = None if probs is None else np.round(probs, 6).tolist()
                self.workdir.write_record(rec)
                logging.info(
                    "round %d: selected %d examples (scoring %.1fs, selection %.2fs)", r, len(rows), t_score, t_select
                )
            if rec.phase == "label":
                rows = np.asarray(rec.selected, np.int64)
                labels, pending, info = self.label(r, rows, rec.predictions)
                if labels is None:
                    logging.info("%s", pending)
                    if is_leader():
                        print(pending, file=sys.stderr)
                    return rec.results
                answered = labels >= 0  # -1: the annotator could not tell; the row is excluded
                if not answered.all():
                    logging.info("round %d: %d of %d examples excluded (can't tell)", r, (~answered).sum(), len(rows))
                rec.labeled_rows = rec.labeled_rows + rows[answered].tolist()
                rec.labels = rec.labels + [int(x) for x in labels[answered]]
                rec.excluded = rec.excluded + rows[~answered].tolist()
                taken = set(rec.labeled_rows) | set(rec.excluded)
                extra = [[row, lab, r] for row, lab in self._extra if row not in taken and lab >= 0]  # never twice
                if extra:
                    rec.labeled_rows = rec.labeled_rows + [e[0] for e in extra]
                    rec.labels = rec.labels + [e[1] for e in extra]
                    rec.extra = rec.extra + extra
                rec.phase, rec.label_info = "train", info
                self.workdir.write_record(rec)  # the labels are recorded before any training
            if rec.phase == "train":
                state, history, t_train = self.train(r)
                metrics = self.evaluation(r, state["trainable"])
                self.rounds_store.save(r, state, {"round": r, "metrics": metrics})
                self._trainable = (r, state["trainable"])
                self._loss_scale = (r, state.get("loss_scale"))
                self._finish_round(r, metrics, history, t_train)
                self.progress_store.clear()
        barrier("run finished")
        if rec.round >= self.c.al.rounds and rec.results:
            self.finished = finished_line(self.workdir.root, rec)  # the command line prints it last
            logging.info("%s", self.finished)
        return rec.results

    def _finish_round(self, r: int, metrics: dict[str, float], history: list[dict], t_train: float) -> None:
        rec = self.record
        counts = np.bincount(np.asarray(rec.labels, np.int64), minlength=self.num_classes)
        result: dict[str, Any] = {
            "round": r,
            "n_labeled": len(rec.labeled_rows),
            "n_excluded": len(rec.excluded),
            **metrics,
            "seconds_scoring": rec.t_score or 0.0,
            "seconds_selection": rec.t_select or 0.0,
            "seconds_training": t_train,
            "selected_ids": self.pool.ids(np.asarray(rec.selected, np.int64)),
            "classes_covered": int((counts > 0).sum()),
            "rarest_class_labels": int(counts.min()),
            "strategy": self.c.al.strategy if r else "random",
            "final_train_loss": history[-1]["loss"] if history else None,
            **calibration_activity(history, self.c.train.calibration != "none"),
            **skipped_steps(history),
        }
        steps = sum(int(h["steps"]) for h in history)
        if result.get("skipped_steps", 0) * 2 > steps:
            logging.warning(
                "round %d: %d of %d training steps were skipped (float16 gradients overflowed): the round barely "
                "trained; lower train.loss_scale_init or use --config.dtype=float32",
                r,
                result["skipped_steps"],
                steps,
            )
        if rec.label_info:
            result["labeling"] = rec.label_info
        result.update(self.stopper.signals(rec, result, self._trainable[1]))
        self.stopper.decide(rec, result)  # al.stop: the row and rec.stops say why the run stops here
        if rec.extra or self.c.oracle == "label_studio":
            result["n_extra_labels"] = sum(1 for e in rec.extra if e[2] == r)  # labelled unasked, arrived this round
        rec.results = rec.results + [result]
        rec.round, rec.phase, rec.selected, rec.predictions, rec.label_info = r + 1, "select", [], None, {}
        self.workdir.write_record(rec)
        write_reports(self.workdir, self.c.name, rec.results)
        self.metrics.scalars("results", {k: v for k, v in result.items() if k != "round"}, result["n_labeled"])
        self.metrics.flush()
        what = "test" if metrics["evaluation"] == "test" else f"{metrics['cv_folds']}-fold cv"
        logging.info(
            "round %d: %d labels, %s accuracy %.4f, %s ECE %.4f, %s NLL %.4f (train %.1fs)",
            r,
            result["n_labeled"],
            what,
            metrics["accuracy"],
            what,
            metrics["ece"],
            what,
            metrics["nll"],
            t_train,
        )


def _softmax(logits: np.ndarray) -> np.ndarray:
    z = np.exp(logits - logits.max(-1, keepdims=True))
    return (z / z.sum(-1, keepdims=True)).astype(np.float32)


def run(config: ml_collections.ConfigDict, workdir: str | epath.PathLike, **kwargs: Any) -> list[dict[str, Any]]:
    """Run (or resume) the AL rounds of `config` in `workdir`; returns one result dict per finished round."""
    return Run(config, workdir, **kwargs).run()
