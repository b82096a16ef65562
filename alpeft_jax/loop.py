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
The phases and the labels are recorded in DIR/al_state.json before the next phase starts (see checkpoint.py for
the resume order), so a killed run resumes where it stopped and ends with the same results.
"""

from __future__ import annotations

import copy
import dataclasses
import hashlib
import json
import sys
import time
from typing import Any

import jax
import ml_collections
import numpy as np
from absl import logging
from etils import epath

from alpeft_jax import backbones, checkpoint, data, oracles, schema, strategies
from alpeft_jax.config import diff as config_diff
from alpeft_jax.config import parse_options
from alpeft_jax.inputs import SplitInputs, epoch_rows
from alpeft_jax.models import lora as lora_lib
from alpeft_jax.models.adapted import AdaptConfig, AdaptedModel
from alpeft_jax.models.prompts import PromptConfig
from alpeft_jax.parallel import Sharder, barrier, broadcast_json, is_leader
from alpeft_jax.scoring import FeatureCache, PoolScorer
from alpeft_jax.train import NaNLossError, TrainConfig, Trainer, steps_per_epoch

STATE_FILE = "al_state.json"
CONFIG_FILE = "config.json"


class ConfigMismatchError(ValueError):
    """A workdir holds a run made with another config."""


# --------------------------------------------------------------------------------------------------
# Small pieces
# --------------------------------------------------------------------------------------------------


def adapt_config(c: ml_collections.ConfigDict, family: str) -> AdaptConfig:
    """The AdaptConfig described by `config.adapt`."""
    a = c.adapt
    targets = tuple(t.strip() for t in a.lora.targets.split(",") if t.strip())
    if not targets and a.mode == "lora":
        if family == "efficientnet":
            raise ValueError("EfficientNet needs explicit LoRA targets, e.g. --config.adapt.lora.targets="
                             "'blocks_1[3-5]/.*(expand|project)_conv'.")
        targets = lora_lib.TOWER_TARGETS["both" if family != "clip" else a.lora.towers]
    elif not targets:
        targets = lora_lib.TOWER_TARGETS["both"]  # unused outside lora mode
    lora_cfg = lora_lib.LoraConfig(a.lora.rank, a.lora.alpha, a.lora.dropout, a.lora.scale_mode, targets)
    prompt_cfg = PromptConfig(a.prompt.n_ctx, a.prompt.class_specific, a.prompt.init, a.prompt.position)
    return AdaptConfig(a.mode, lora_cfg, prompt_cfg, a.head, a.n_placeholders, a.template, float(a.head_scale))


def train_config(c: ml_collections.ConfigDict) -> TrainConfig:
    """The TrainConfig described by `config.train` (loss scaling where the compute dtype is float16)."""
    return TrainConfig.from_config(c.train, loss_prediction=strategies.facts(c.al.strategy).trains_loss_head,
                                   float16=c.dtype == "float16")


def _subset(n: int, k: int, seed: int) -> np.ndarray:
    if not k or k >= n:
        return np.arange(n, dtype=np.int64)
    return np.sort(np.random.default_rng([seed, 7]).choice(n, k, replace=False)).astype(np.int64)


def _fingerprint(*parts: Any) -> str:
    return hashlib.sha1(json.dumps([str(p) for p in parts]).encode()).hexdigest()[:12]


@dataclasses.dataclass
class Split:
    """A split of a source restricted to `positions`; row i is source[positions[i]]."""

    source: Any
    positions: np.ndarray

    @property
    def labels(self) -> np.ndarray:
        """Dataset labels of the rows."""
        return np.asarray(self.source.labels, np.int64)[self.positions]

    def __len__(self) -> int:
        return len(self.positions)


# --------------------------------------------------------------------------------------------------
# The run
# --------------------------------------------------------------------------------------------------


def _bar(desc: str, total: int, unit: str = "it") -> Any:
    """A tqdm progress bar on process 0 (silent elsewhere)."""
    from tqdm.auto import tqdm

    return tqdm(total=total, desc=desc, unit=unit, disable=not is_leader(), mininterval=2.0, dynamic_ncols=True,
                leave=False)


class Metrics:
    """TensorBoard event files (process 0): per-epoch training metrics of each round, per-round results.

    For a cloud workdir the events are written to a local staging folder and copied to DIR/tensorboard at every
    flush (TensorBoard reads them from there).
    """

    def __init__(self, workdir: epath.Path) -> None:
        self.writer, self.target, self.staging = None, workdir / "tensorboard", None
        if is_leader():
            from tensorboardX import SummaryWriter

            logdir = str(self.target)
            if not _path_is_local(self.target):
                import tempfile

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
        self.workdir = _workdir(workdir)
        schema.raise_problems(schema.validate(c, strategies=strategies.REGISTRY))  # what preflight checks too
        # -- the record: read by process 0, the same on every process ---------------------------------------
        self._check_config(allow_config_change)
        fresh = {"round": 0, "phase": "select", "labeled_rows": [], "labels": [], "selected": [], "results": []}
        self.state = broadcast_json(checkpoint.read_json(self.workdir / STATE_FILE) if is_leader() else None) or fresh
        # -- data ------------------------------------------------------------------------------------------
        data_dir = c.data.dir or None
        split_file = c.data.split_file or None
        pool_src = data.get_source(c.data.name, c.data.train_split, data_dir, split_file=split_file)
        test_src = data.get_source(c.data.name, c.data.test_split, data_dir, split_file=split_file)
        self.pool = Split(pool_src, _subset(len(pool_src), c.data.max_pool, c.data.subset_seed))
        self.test = Split(test_src, _subset(len(test_src), c.data.max_test, c.data.subset_seed + 1))
        names = list(pool_src.class_names)
        if c.data.coop_names:
            try:
                names = data.coop_names(c.data.name, names)
            except (KeyError, ValueError):
                pass
        self.class_names = names
        self.num_classes = len(names)
        # -- mesh, model -----------------------------------------------------------------------------------
        self.sharder = Sharder()
        self.backbone = backbones.load(c.backbone, dtype=jax.numpy.dtype(c.dtype))
        self.backbone.params = self.sharder.replicate(self.backbone.params)  # frozen weights on every device
        self.model = AdaptedModel(self.backbone, names, adapt_config(c, self.backbone.family))
        self.image_size = c.data.image_size or self.backbone.image_size
        self.use_cache = c.scoring.cache and self.model.input_kind != "images"
        self.eval_kind = self.model.input_kind if self.use_cache else "images"
        self.train_kind = "images" if (c.train.augment or not self.use_cache) else self.eval_kind
        self.trainer = Trainer(self.model, train_config(c), self.train_kind, sharder=self.sharder)
        self.scorer = PoolScorer(self.model, self.eval_kind, chunk_size=c.scoring.batch_size, sharder=self.sharder)
        self.budget = c.al.budget or self.num_classes
        self.initial = c.al.initial or self.num_classes
        self.gamma_count = strategies.candidate_count(len(self.pool), c.al.gamma)
        self.options = parse_options(c.al.options)
        self.rounds_store = checkpoint.TreeStore(self.workdir / "ckpt")
        self.progress_store = checkpoint.TreeStore(self.workdir / "progress", max_to_keep=1)
        self.oracle = None
        if is_leader():  # only process 0 talks to the oracle; the labels reach the others by broadcast
            pool_view = oracles.PoolView(pool_src, self.pool.positions, names)
            self.oracle = oracles.make(c, pool_view, self.workdir, labels_file=labels_file, run_name=c.name)
        self.metrics = Metrics(self.workdir)
        self._inputs: dict[str, dict[str, SplitInputs]] = {}
        self._trainable: Any = None  # the model of the last finished round, when in memory
        self._summary()

    # ----------------------------------------------------------------------------------------------
    def _check_config(self, allow_change: bool) -> None:
        path = self.workdir / CONFIG_FILE
        new = json.loads(json.dumps(self.c.to_dict()))
        if is_leader():
            started = (self.workdir / STATE_FILE).exists()
            old = checkpoint.read_json(path) if started else None  # nothing recorded yet: any config may start it
            diffs = config_diff(old, new) if old is not None and old != new else []
        else:
            diffs = []
        diffs = broadcast_json(diffs)
        if diffs:
            if not allow_change:
                raise ConfigMismatchError(
                    f"{self.workdir} holds a run with another config ({'; '.join(diffs)}); use a new --workdir, "
                    "or pass --allow_config_change to continue it with the new config."
                )
            logging.warning("continuing %s with a changed config: %s", self.workdir, "; ".join(diffs))
        if is_leader():  # hosts share the workdir: one writer
            checkpoint.write_json(path, new)

    def _summary(self) -> None:
        trainable = jax.eval_shape(self.model.init, jax.random.key(0))
        n_train = lora_lib.num_params(trainable)
        n_frozen = lora_lib.num_params(self.backbone.params)
        logging.info("backbone %s (%s, %s), %s frozen parameters", self.c.backbone, self.backbone.family,
                     self.c.dtype, f"{n_frozen:,}")
        logging.info("adaptation %s: %s trainable parameters (%.3f%% of the backbone)", self.c.adapt.mode,
                     f"{n_train:,}", 100.0 * n_train / max(1, n_frozen))
        names = self.model.describe(trainable)
        for name, shape in names[:12]:
            logging.info("  trainable %s %s", name, shape)
        if len(names) > 12:
            logging.info("  ... %d trainable arrays in all", len(names))
        logging.info("data %s: pool %d, test %d, %d classes; image size %d; budget %d per round, %d rounds",
                     self.c.data.name, len(self.pool), len(self.test), self.num_classes, self.image_size,
                     self.budget, self.c.al.rounds)
        logging.info("inputs: scoring/eval on %s, training on %s; mesh: %d devices over %d process(es)",
                     self.eval_kind, self.train_kind, self.sharder.size, self.sharder.process_count)

    def _save_state(self) -> None:
        if is_leader():
            checkpoint.write_json(self.workdir / STATE_FILE, self.state)

    # -- inputs: chosen once (cached prefix or images) ---------------------------------------------------
    def inputs(self, which: str, for_training: bool = False) -> SplitInputs:
        """The model inputs of the pool or the test split (training on images when augmenting)."""
        kind = self.train_kind if for_training else self.eval_kind
        cached = self._inputs.setdefault(which, {})
        if kind not in cached:
            split = self.pool if which == "pool" else self.test
            c = self.c
            images = SplitInputs(split.source, split.positions, self.sharder, image_size=self.image_size,
                                 mean=self.backbone.mean, std=self.backbone.std, num_threads=c.data.num_threads or None)
            cached["images"] = images
            if kind != "images":
                cached[kind] = _with_cache(images, self._cache(images, which))
        return cached[kind]

    def _cache(self, images: SplitInputs, which: str) -> FeatureCache:
        c = self.c
        cache_dir = _path(c.scoring.cache_dir) if c.scoring.cache_dir else self.workdir / "cache"
        key = _fingerprint(c.backbone, c.dtype, self.image_size, self.model.input_kind, self.model.cache_block,
                           c.data.name, c.data.dir, which, hashlib.sha1(images.positions.tobytes()).hexdigest())
        path = cache_dir / f"{which}_{key}.npy"
        chunk = self.sharder.global_size(c.scoring.batch_size)
        n = len(images)
        t0 = time.time()
        with _bar(f"caching {which} {self.model.input_kind}", n, "img") as bar:
            cache = FeatureCache.build(
                self.model, images.batches(np.arange(n), chunk), None, n, sharder=self.sharder,
                memory_budget_bytes=int(c.scoring.memory_budget_gb * (1 << 30)), path=str(path),
                progress=lambda done, total: bar.update(done - bar.n),
            )
        logging.info("%s cache %s %s ready in %.1fs (%s)", which, self.model.input_kind, cache.array.shape,
                     time.time() - t0, path)
        return cache

    # -- phases ------------------------------------------------------------------------------------
    def _labeled(self) -> tuple[np.ndarray, np.ndarray]:
        return np.asarray(self.state["labeled_rows"], np.int64), np.asarray(self.state["labels"], np.int64)

    def _known(self) -> np.ndarray:
        """Label of every pool row, -1 where not labelled yet."""
        rows, labels = self._labeled()
        known = np.full(len(self.pool), -1, np.int64)
        known[rows] = labels
        return known

    def _round_seed(self, r: int) -> int:
        return int(self.c.seed) * 1000 + r

    def select(self, r: int) -> tuple[np.ndarray, float, float, np.ndarray | None]:
        """Rows to label in round r, the seconds spent scoring and selecting, and the model's probabilities."""
        known = self._known()
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
            inputs = self.inputs("pool")
            n = len(inputs)
            with _bar(f"round {r} scoring", n, "img") as bar:
                pool = self.scorer.score(trainable, inputs.batches(np.arange(n), self.scorer.chunk), None, n,
                                         labels=known, mc_samples=mc, rng=jax.random.key(rng),
                                         progress=lambda done, total: bar.update(done - bar.n))
            t_score = time.time() - t0
        t0 = time.time()
        chosen = strategies.select_with_pcb(strategy, rng, pool, labeled, budget, self.gamma_count,
                                            use_pcb=self.c.al.pcb, authors_quirk=self.c.al.authors_quirk,
                                            **self.options)
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
        rows, _ = self._labeled()
        known = self._known()
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
        inputs = self.inputs("pool", for_training=True)
        augment = c.train.augment and inputs.kind == "images"
        per_epoch = steps_per_epoch(len(rows), bs, c.train.drop_last)
        done0 = per_epoch * start_epoch + start_batch
        bar = _bar(f"round {r} training", per_epoch * c.train.epochs, "step")
        bar.update(done0)
        base_step = 1_000_000 * r  # TensorBoard step axis: rounds side by side

        def epoch_batches(epoch: int) -> Any:
            order = epoch_rows(rows, bs, seed, epoch, c.train.drop_last)
            first = start_batch if epoch == start_epoch else 0
            return inputs.batches(order[first * bs:], bs, labels=known, augment=(seed, epoch) if augment else None)

        def on_step(st: Any, epoch: int, next_batch: int, hist: list[dict]) -> None:
            bar.update(1)
            done = per_epoch * epoch + next_batch
            if every and done % every == 0:
                self.progress_store.save(base_step + done, st,
                                         {"round": r, "epoch": epoch, "batch": next_batch, "history": hist})

        def on_epoch_end(epoch: int, st: Any, row: dict) -> None:
            self.metrics.scalars(f"round_{r:02d}/train", row, epoch)
            bar.set_postfix(loss=f"{row['loss']:.4f}", acc=f"{row['train_accuracy']:.3f}")
            logging.info("round %d epoch %d: loss %.4f (ce %.4f, calibration %.4f x %.2f), train acc %.3f, lr %.2e",
                         r, epoch, row["loss"], row["ce"], row["calibration"], row["calibration_weight"],
                         row["train_accuracy"], row["lr"])

        t0 = time.time()
        try:
            state, history = self.trainer.fit(state, epoch_batches, start_epoch=start_epoch, start_batch=start_batch,
                                              history=history, on_step=on_step, on_epoch_end=on_epoch_end)
        except NaNLossError as e:
            raise NaNLossError(f"round {r}: {e}") from None
        finally:
            bar.close()
        return state, history, time.time() - t0

    def evaluate(self, trainable: Any) -> dict[str, float]:
        """Test metrics of a trainable tree."""
        inputs = self.inputs("test")
        rows = np.arange(len(inputs))
        return self.trainer.evaluate(trainable, inputs.batches(rows, self.c.eval.batch_size, labels=self.test.labels),
                                     kind=self.eval_kind)

    def label(self, r: int, rows: np.ndarray, predictions: Any) -> tuple[np.ndarray | None, str, dict[str, Any]]:
        """The oracle's labels for `rows` (process 0 asks, every process gets them), or None and why not."""
        answer: dict[str, Any] = {}
        if is_leader():
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
        st = self.state
        while st["round"] < self.c.al.rounds:
            r = st["round"]
            if st["phase"] == "select":
                rows, t_score, t_select, probs = self.select(r)
                st.update(phase="label", selected=rows.tolist(), t_score=t_score, t_select=t_select,
                          predictions=None if probs is None else np.round(probs, 6).tolist())
                self._save_state()
                logging.info("round %d: selected %d examples (scoring %.1fs, selection %.2fs)", r, len(rows),
                             t_score, t_select)
            if st["phase"] == "label":
                rows = np.asarray(st["selected"], np.int64)
                labels, pending, info = self.label(r, rows, st.get("predictions"))
                if labels is None:
                    logging.info("%s", pending)
                    if is_leader():
                        print(pending, file=sys.stderr)
                    return st["results"]
                st["labeled_rows"] = st["labeled_rows"] + rows.tolist()
                st["labels"] = st["labels"] + [int(x) for x in labels]
                st.update(phase="train", label_info=info)
                self._save_state()  # the labels are recorded before any training
            if st["phase"] == "train":
                state, history, t_train = self.train(r)
                metrics = self.evaluate(state["trainable"])
                self.rounds_store.save(r, state, {"round": r, "metrics": metrics})
                self._trainable = (r, state["trainable"])
                self._finish_round(r, metrics, history, t_train)
                self.progress_store.clear()
        barrier("run finished")
        return st["results"]

    def _finish_round(self, r: int, metrics: dict[str, float], history: list[dict], t_train: float) -> None:
        st = self.state
        sel = np.asarray(st["selected"], np.int64)
        counts = np.bincount(np.asarray(st["labels"], np.int64), minlength=self.num_classes)
        result = {
            "round": r, "n_labeled": len(st["labeled_rows"]), **metrics,
            "seconds_scoring": st.get("t_score", 0.0), "seconds_selection": st.get("t_select", 0.0),
            "seconds_training": t_train, "selected_ids": self.oracle_ids(sel),
            "classes_covered": int((counts > 0).sum()), "rarest_class_labels": int(counts.min()),
            "strategy": self.c.al.strategy if r else "random",
            "final_train_loss": history[-1]["loss"] if history else None,
            **calibration_activity(history, self.c.train.calibration != "none"),
        }
        if st.get("label_info"):
            result["labeling"] = st["label_info"]
        st["results"] = st["results"] + [result]
        st.update(round=r + 1, phase="select", selected=[], predictions=None, label_info={})
        self._save_state()
        self.write_reports()
        self.metrics.scalars("results", {k: v for k, v in result.items() if k != "round"}, result["n_labeled"])
        self.metrics.flush()
        logging.info("round %d: %d labels, accuracy %.4f, ECE %.4f, NLL %.4f (train %.1fs)", r,
                     result["n_labeled"], metrics["accuracy"], metrics["ece"], metrics["nll"], t_train)

    def oracle_ids(self, rows: np.ndarray) -> list[int]:
        """Stable dataset ids of pool rows."""
        return [int(i) for i in np.asarray(self.pool.source.ids)[self.pool.positions[rows]]]

    def write_reports(self) -> None:
        """results.jsonl and curves.png from the recorded results (process 0)."""
        from alpeft_jax import report

        if not is_leader():
            return
        rows = self.state["results"]
        checkpoint.atomic_write(self.workdir / "results.jsonl", "".join(json.dumps(r) + "\n" for r in rows))
        png = self.workdir / "curves.png"
        if _path_is_local(png):
            report.plot_curves({self.c.name: [rows]}, str(png))
        else:
            import tempfile

            with tempfile.TemporaryDirectory() as tmp:
                report.plot_curves({self.c.name: [rows]}, f"{tmp}/curves.png")
                epath.Path(f"{tmp}/curves.png").copy(png, overwrite=True)


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


def _path(p: str | epath.PathLike) -> epath.Path:
    """An epath for a local path (made absolute) or a URL such as gs://bucket/dir (left as it is)."""
    text = str(p)
    return epath.Path(text) if "://" in text else epath.Path(text).absolute()


def _path_is_local(p: epath.Path) -> bool:
    return "://" not in str(p)


def _workdir(workdir: str | epath.PathLike) -> epath.Path:
    path = _path(workdir)
    if path.exists() and not path.is_dir():
        raise ValueError(f"--workdir {path} is a file; pass a directory (it is created if missing).")
    path.mkdir(parents=True, exist_ok=True)
    return path


def _with_cache(images: SplitInputs, cache: FeatureCache) -> SplitInputs:
    out = copy.copy(images)
    out.cache = cache
    return out


def run(config: ml_collections.ConfigDict, workdir: str | epath.PathLike, **kwargs: Any) -> list[dict[str, Any]]:
    """Run (or resume) the AL rounds of `config` in `workdir`; returns one result dict per finished round."""
    return Run(config, workdir, **kwargs).run()
