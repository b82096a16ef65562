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
  eval    accuracy, NLL, ECE, Brier on the test split; checkpoint; one row in results.jsonl.
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

from alpeft_jax import data, oracles, schema, strategies
from alpeft_jax.assemble import assemble, config_class_names
from alpeft_jax.checkpoint import TreeStore
from alpeft_jax.config import parse_options
from alpeft_jax.inputs import RunInputs, SplitInputs, epoch_rows, subset
from alpeft_jax.metrics import Metrics, bar, calibration_activity, write_reports
from alpeft_jax.models import lora as lora_lib
from alpeft_jax.parallel import Sharder, barrier, broadcast_json, is_leader
from alpeft_jax.scoring import PoolScorer
from alpeft_jax.train import NaNLossError, TrainConfig, Trainer, steps_per_epoch
from alpeft_jax.workdir import ConfigMismatchError, Workdir

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
        pool_src = data.get_source(c.data.name, c.data.train_split, data_dir, split_file=split_file)
        test_src = data.get_source(c.data.name, c.data.test_split, data_dir, split_file=split_file)
        # -- mesh, model, inputs ---------------------------------------------------------------------------
        self.sharder = Sharder()
        parts = assemble(c, config_class_names(c, pool_src), place=self.sharder.replicate)  # frozen: every device
        names = self.class_names = parts.class_names
        self.num_classes = len(names)
        self.backbone, self.model, self.image_size = parts.backbone, parts.model, parts.image_size

        def split(source: Any, positions: np.ndarray) -> SplitInputs:
            return SplitInputs(
                source,
                positions,
                self.sharder,
                image_size=self.image_size,
                mean=self.backbone.mean,
                std=self.backbone.std,
                num_threads=c.data.num_threads or None,
            )

        self.pool = split(pool_src, subset(len(pool_src), c.data.max_pool, c.data.subset_seed))
        self.test = split(test_src, subset(len(test_src), c.data.max_test, c.data.subset_seed + 1))
        cache_key = (
            c.backbone,
            c.dtype,
            self.image_size,
            self.model.input_kind,
            self.model.cache_block,
            c.data.name,
            c.data.dir,
        )
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
        self.options = parse_options(c.al.options)
        self.rounds_store = TreeStore(self.workdir.rounds)
        self.progress_store = TreeStore(self.workdir.progress, max_to_keep=1)
        self.oracle = None
        if is_leader():  # only process 0 talks to the oracle; the labels reach the others by broadcast
            pool_view = oracles.PoolView(pool_src, self.pool.positions, names)
            self.oracle = oracles.make(c, pool_view, self.workdir.root, labels_file=labels_file, run_name=c.name)
        self.metrics = Metrics(self.workdir)
        self._trainable: Any = None  # the model of the last finished round, when in memory
        self._summary()

    # ----------------------------------------------------------------------------------------------
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
        logging.info(
            "adaptation %s: %s trainable parameters (%.3f%% of the backbone)",
            self.c.adapt.mode,
            f"{n_train:,}",
            100.0 * n_train / max(1, n_frozen),
        )
        names = self.model.describe(trainable)
        for name, shape in names[:12]:
            logging.info("  trainable %s %s", name, shape)
        if len(names) > 12:
            logging.info("  ... %d trainable arrays in all", len(names))
        logging.info(
            "data %s: pool %d, test %d, %d classes; image size %d; budget %d per round, %d rounds",
            self.c.data.name,
            len(self.pool),
            len(self.test),
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

    # -- phases ------------------------------------------------------------------------------------
    def _round_seed(self, r: int) -> int:
        return int(self.c.seed) * 1000 + r

    def select(self, r: int) -> tuple[np.ndarray, float, float, np.ndarray | None]:
        """Rows to label in round r, the seconds spent scoring and selecting, and the model's probabilities."""
        known = self.record.known(len(self.pool))
        labeled = known >= 0
        rng = self._round_seed(r)
        strategy = self.c.al.strategy if r > 0 else "random"
        budget = self.budget if r > 0 else self.initial
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
            **self.options,
        )
        chosen = np.asarray(chosen, np.int64)
        probs = None
        if "logits" in pool:
            logits = np.asarray(pool["logits"], np.float64)[chosen]
            z = np.exp(logits - logits.max(-1, keepdims=True))
            probs = (z / z.sum(-1, keepdims=True)).astype(np.float32)
        return chosen, t_score, time.time() - t0, probs

    def _model_of_round(self, r: int) -> Any:
        if self._trainable is not None and self._trainable[0] == r:
            return self._trainable[1]
        like = self.trainer.init(jax.random.key(0))
        state, _ = self.rounds_store.restore(r, like)
        self._trainable = (r, state["trainable"])
        return state["trainable"]

    def train(self, r: int) -> tuple[Any, list[dict[str, Any]], float]:
        """Train round r's model on all labels so far; resumes from an in-round checkpoint."""
        rows, _ = self.record.labeled()
        known = self.record.known(len(self.pool))
        seed = self._round_seed(r)
        c = self.c
        key = jax.random.fold_in(jax.random.key(c.seed), r)
        warm = self._model_of_round(r - 1) if (c.train.warm_start and r > 0) else None
        state = self.trainer.init(key, trainable=warm)
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
            logging.info(
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

    def label(self, r: int, rows: np.ndarray, predictions: Any) -> tuple[np.ndarray | None, str, dict[str, Any]]:
        """The oracle's labels for `rows` (process 0 asks, every process gets them), or None and why not."""
        answer: dict[str, Any] = {}
        if is_leader() and self.oracle is not None:  # process 0 always has an oracle
            try:
                probs = None if predictions is None else np.asarray(predictions, np.float32)
                labels = self.oracle.request(r, rows, probs)
                answer = {"labels": [int(x) for x in labels], "info": dict(self.oracle.info(r))}
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
        return np.asarray(answer["labels"], np.int64), "", answer.get("info", {})

    # ----------------------------------------------------------------------------------------------
    def run(self) -> list[dict[str, Any]]:
        """Run every remaining round; returns the per-round results (stops early if labels are pending)."""
        rec = self.record
        while rec.round < self.c.al.rounds:
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
                rec.labeled_rows = rec.labeled_rows + rows.tolist()
                rec.labels = rec.labels + [int(x) for x in labels]
                rec.phase, rec.label_info = "train", info
                self.workdir.write_record(rec)  # the labels are recorded before any training
            if rec.phase == "train":
                state, history, t_train = self.train(r)
                metrics = self.evaluate(state["trainable"])
                self.rounds_store.save(r, state, {"round": r, "metrics": metrics})
                self._trainable = (r, state["trainable"])
                self._finish_round(r, metrics, history, t_train)
                self.progress_store.clear()
        barrier("run finished")
        return rec.results

    def _finish_round(self, r: int, metrics: dict[str, float], history: list[dict], t_train: float) -> None:
        rec = self.record
        counts = np.bincount(np.asarray(rec.labels, np.int64), minlength=self.num_classes)
        result: dict[str, Any] = {
            "round": r,
            "n_labeled": len(rec.labeled_rows),
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
        }
        if rec.label_info:
            result["labeling"] = rec.label_info
        rec.results = rec.results + [result]
        rec.round, rec.phase, rec.selected, rec.predictions, rec.label_info = r + 1, "select", [], None, {}
        self.workdir.write_record(rec)
        write_reports(self.workdir, self.c.name, rec.results)
        self.metrics.scalars("results", {k: v for k, v in result.items() if k != "round"}, result["n_labeled"])
        self.metrics.flush()
        logging.info(
            "round %d: %d labels, accuracy %.4f, ECE %.4f, NLL %.4f (train %.1fs)",
            r,
            result["n_labeled"],
            metrics["accuracy"],
            metrics["ece"],
            metrics["nll"],
            t_train,
        )


def run(config: ml_collections.ConfigDict, workdir: str | epath.PathLike, **kwargs: Any) -> list[dict[str, Any]]:
    """Run (or resume) the AL rounds of `config` in `workdir`; returns one result dict per finished round."""
    return Run(config, workdir, **kwargs).run()
