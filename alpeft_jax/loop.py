"""The active-learning driver: `run(config, workdir)` — what the command line, notebooks and tests call.

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

import dataclasses
import hashlib
import json
import os
import sys
import time
from collections.abc import Iterator
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from absl import logging

from alpeft_jax import backbones, checkpoint, data, oracles, strategies
from alpeft_jax.config import parse_options
from alpeft_jax.models import lora as lora_lib
from alpeft_jax.models.adapted import AdaptConfig, AdaptedModel
from alpeft_jax.models.prompts import PromptConfig
from alpeft_jax.scoring import FeatureCache, PoolScorer, Sharder, process_share
from alpeft_jax.train import NaNLossError, TrainConfig, Trainer, steps_per_epoch

STATE_FILE = "al_state.json"
CONFIG_FILE = "config.json"


class ConfigMismatchError(ValueError):
    """A workdir holds a run made with another config."""


# --------------------------------------------------------------------------------------------------
# Small pieces
# --------------------------------------------------------------------------------------------------


class Progress:
    """A progress line with rate and ETA, printed at most every `every` seconds."""

    def __init__(self, desc: str, total: int, every: float = 5.0) -> None:
        self.desc, self.total, self.every = desc, max(1, total), every
        self.start = self.last = time.time()

    def __call__(self, done: int, total: int | None = None) -> None:
        """Report `done` of `total` units."""
        total = total or self.total
        now = time.time()
        if done < total and now - self.last < self.every:
            return
        self.last = now
        elapsed = now - self.start
        rate = done / elapsed if elapsed > 0 else 0.0
        eta = (total - done) / rate if rate > 0 else 0.0
        logging.info("%s: %d/%d (%.0f%%) %.1f/s, %.0fs elapsed, ETA %.0fs", self.desc, done, total,
                     100.0 * done / total, rate, elapsed, eta)


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
    return AdaptConfig(a.mode, lora_cfg, prompt_cfg, a.head, a.n_placeholders, a.template)


def train_config(c: ml_collections.ConfigDict) -> TrainConfig:
    """The TrainConfig described by `config.train`."""
    t = c.train
    return TrainConfig(
        epochs=t.epochs, batch_size=t.batch_size, optimizer=t.optimizer, lr=t.lr, momentum=t.momentum,
        weight_decay=t.weight_decay, warmup_epochs=t.warmup_epochs, warmup_lr=t.warmup_lr,
        label_smoothing=t.label_smoothing, calibration=t.calibration, calibration_weight=t.calibration_weight,
        calibration_anneal=t.calibration_anneal, calibration_weighting=t.calibration_weighting, drop_last=t.drop_last,
        loss_prediction=t.loss_prediction or c.al.strategy == "learning_loss",
    )


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


class Run:
    """One AL run in one workdir; `Run(config, workdir).run()` does all remaining rounds."""

    def __init__(
        self,
        config: ml_collections.ConfigDict,
        workdir: str,
        *,
        labels_file: str | None = None,
        allow_config_change: bool = False,
    ) -> None:
        self.c = config
        self.workdir = os.path.abspath(workdir)
        os.makedirs(self.workdir, exist_ok=True)
        self._check_config(allow_config_change)
        self.state = checkpoint.read_json(os.path.join(self.workdir, STATE_FILE)) or {
            "round": 0, "phase": "select", "labeled_rows": [], "labels": [], "selected": [], "results": [],
        }
        c = config
        if c.al.strategy not in strategies.names():
            raise ValueError(f"unknown al.strategy {c.al.strategy!r}; choose one of {', '.join(strategies.names())}.")
        if c.dtype not in ("float32", "bfloat16"):
            raise ValueError(f"dtype must be 'float32' or 'bfloat16', got {c.dtype!r}.")
        # -- data --------------------------------------------------------------------------------
        data_dir = c.data.dir or None
        pool_src = data.get_source(c.data.name, c.data.train_split, data_dir)
        test_src = data.get_source(c.data.name, c.data.test_split, data_dir)
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
        # -- model -------------------------------------------------------------------------------
        dtype = jnp.float32 if c.dtype == "float32" else jnp.bfloat16
        self.backbone = backbones.load(c.backbone, dtype=dtype)
        self.model = AdaptedModel(self.backbone, names, adapt_config(c, self.backbone.family))
        self.image_size = c.data.image_size or self.backbone.image_size
        tcfg = train_config(c)
        self.use_cache = c.scoring.cache and self.model.input_kind != "images"
        cached_kind = self.model.input_kind if self.use_cache else "images"
        self.train_kind = "images" if (c.train.augment or not self.use_cache) else cached_kind
        self.eval_kind = cached_kind
        self.trainer = Trainer(self.model, tcfg, self.train_kind)
        self.sharder = Sharder()
        self.scorer = PoolScorer(self.model, self.eval_kind, chunk_size=c.scoring.batch_size, sharder=self.sharder)
        self.budget = c.al.budget or self.num_classes
        self.initial = c.al.initial or self.num_classes
        self.gamma_count = strategies.candidate_count(len(self.pool), c.al.gamma)
        self.options = parse_options(c.al.options)
        self.rounds_store = checkpoint.TreeStore(os.path.join(self.workdir, "ckpt"))
        self.progress_store = checkpoint.TreeStore(os.path.join(self.workdir, "progress"), max_to_keep=1)
        pool_view = oracles.PoolView(pool_src, self.pool.positions, names)
        ls = c.label_studio
        oracle_opts: dict[str, Any] = {}
        if c.oracle == "file":
            oracle_opts = {"labels_file": labels_file}
        elif c.oracle == "label_studio":
            oracle_opts = {"url": ls.url, "project": ls.project, "image_url_prefix": ls.image_url_prefix}
        self.oracle = oracles.make(c.oracle, pool_view, self.workdir, **oracle_opts)
        self._pool_cache: FeatureCache | None = None
        self._test_cache: FeatureCache | None = None
        self._trainable: Any = None  # the model of the last finished round, when in memory
        self._summary()

    # ----------------------------------------------------------------------------------------------
    def _check_config(self, allow_change: bool) -> None:
        path = os.path.join(self.workdir, CONFIG_FILE)
        new = self.c.to_dict()
        started = os.path.exists(os.path.join(self.workdir, STATE_FILE))
        old = checkpoint.read_json(path) if started else None  # nothing recorded yet: any config may start it
        if old is not None and old != json.loads(json.dumps(new)):
            diffs = checkpoint.diff_configs(old, json.loads(json.dumps(new)))
            if not allow_change:
                raise ConfigMismatchError(
                    f"{self.workdir} holds a run with another config ({'; '.join(diffs)}); use a new --workdir, "
                    "or pass --allow_config_change to continue it with the new config."
                )
            logging.warning("continuing %s with a changed config: %s", self.workdir, "; ".join(diffs))
        if jax.process_index() == 0:  # hosts share the workdir: one writer
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
        logging.info("inputs: scoring/eval on %s, training on %s; devices: %s", self.eval_kind, self.train_kind,
                     ", ".join(str(d) for d in jax.devices()))

    def _save_state(self) -> None:
        if jax.process_index() == 0:
            checkpoint.write_json(os.path.join(self.workdir, STATE_FILE), self.state)

    # -- inputs ------------------------------------------------------------------------------------
    def _cache(self, split: Split, which: str) -> FeatureCache:
        cache_dir = self.c.scoring.cache_dir or os.path.join(self.workdir, "cache")
        key = _fingerprint(self.c.backbone, self.c.dtype, self.image_size, self.model.input_kind,
                           self.model.cache_block, self.c.data.name, self.c.data.dir, which,
                           hashlib.sha1(split.positions.tobytes()).hexdigest())
        path = os.path.join(cache_dir, f"{which}_{key}.npy")
        share = process_share(len(split))
        batches = data.eval_batches(split.source, split.positions[share], self.sharder.chunk_size(
            self.c.scoring.batch_size), self.image_size, self.backbone.mean, self.backbone.std,
            num_threads=self.c.data.num_threads or None)
        t0 = time.time()
        cache = FeatureCache.build(
            self.model, batches, share, len(split), sharder=self.sharder,
            memory_budget_bytes=int(self.c.scoring.memory_budget_gb * (1 << 30)), path=path,
            progress=Progress(f"caching {which} {self.model.input_kind}", len(share)),
        )
        logging.info("%s cache %s %s ready in %.1fs (%s)", which, self.model.input_kind, cache.array.shape,
                     time.time() - t0, path)
        return cache

    def pool_cache(self) -> FeatureCache:
        """The frozen-prefix cache of the pool (built on first use)."""
        if self._pool_cache is None:
            self._pool_cache = self._cache(self.pool, "pool")
        return self._pool_cache

    def test_cache(self) -> FeatureCache:
        """The frozen-prefix cache of the test split (built on first use)."""
        if self._test_cache is None:
            self._test_cache = self._cache(self.test, "test")
        return self._test_cache

    def _eval_inputs(self, split: Split, which: str, rows: np.ndarray, batch_size: int,
                     labels: np.ndarray | None) -> Iterator[dict[str, Any]]:
        if self.use_cache:
            cache = self.pool_cache() if which == "pool" else self.test_cache()
            yield from cache.batches(rows, batch_size, labels)
            return
        for b in data.eval_batches(split.source, split.positions[rows], batch_size, self.image_size,
                                   self.backbone.mean, self.backbone.std, num_threads=self.c.data.num_threads or None):
            yield {"inputs": b["image"], "label": _relabel(b, split, rows, labels), "_mask": b["_mask"]}

    def _train_batches(self, rows: np.ndarray, labels: np.ndarray, epoch: int, seed: int,
                       start_batch: int) -> Iterator[dict[str, Any]]:
        bs = self.c.train.batch_size
        drop = self.c.train.drop_last and len(rows) >= bs
        if self.train_kind != "images":
            order = data.epoch_order(np.arange(len(rows)), seed, epoch)
            if drop:
                order = order[: (len(order) // bs) * bs]
            order = order[start_batch * bs:]
            known = np.full(len(self.pool), -1, np.int64)
            known[rows] = labels
            yield from self.pool_cache().batches(rows[order], bs, known)
            return
        label_of = dict(zip(self.pool.positions[rows].tolist(), labels.tolist()))
        for b in data.train_batches(self.pool.source, self.pool.positions[rows], bs, self.image_size,
                                    self.backbone.mean, self.backbone.std, seed=seed, epoch=epoch,
                                    start_batch=start_batch, drop_remainder=drop, augment=self.c.train.augment,
                                    num_threads=self.c.data.num_threads or None):
            ids = np.asarray(b["_id"])
            pos = _positions_of_ids(self.pool.source, ids)
            lab = np.asarray([label_of.get(int(p), -1) if m else -1 for p, m in zip(pos, b["_mask"])], np.int32)
            yield {"inputs": b["image"], "label": lab, "_mask": b["_mask"]}

    # -- phases ------------------------------------------------------------------------------------
    def _labeled(self) -> tuple[np.ndarray, np.ndarray]:
        return np.asarray(self.state["labeled_rows"], np.int64), np.asarray(self.state["labels"], np.int64)

    def _round_seed(self, r: int) -> int:
        return int(self.c.seed) * 1000 + r

    def select(self, r: int) -> tuple[np.ndarray, float, float]:
        """Rows to label in round r, and the seconds spent scoring and selecting."""
        rows, labels = self._labeled()
        labeled = np.zeros(len(self.pool), bool)
        labeled[rows] = True
        known = np.full(len(self.pool), -1, np.int64)
        known[rows] = labels
        rng = self._round_seed(r)
        strategy = self.c.al.strategy if r > 0 else "random"
        budget = self.budget if r > 0 else self.initial
        t_score = 0.0
        pool: dict[str, Any] = {"labels": known}
        if strategy != "random":
            trainable = self._model_of_round(r - 1)
            t0 = time.time()
            mc = self.c.al.mc_samples if "mc_logits" in strategies.requires(strategy) else 0
            if mc and (self.model.lora_config is None or self.model.lora_config.dropout <= 0):
                raise ValueError("BALD needs MC dropout: use adapt.mode=lora with adapt.lora.dropout > 0.")
            share = process_share(len(self.pool))
            batches = self._eval_inputs(self.pool, "pool", share, self.sharder.chunk_size(self.c.scoring.batch_size),
                                        None)
            pool = self.scorer.score(trainable, batches, share, len(self.pool), labels=known, mc_samples=mc,
                                     rng=jax.random.key(rng), progress=Progress(f"round {r} scoring", len(share)))
            t_score = time.time() - t0
        t0 = time.time()
        chosen = strategies.select_with_pcb(strategy, rng, pool, labeled, budget, self.gamma_count,
                                            use_pcb=self.c.al.pcb, authors_quirk=self.c.al.authors_quirk,
                                            **self.options)
        return np.asarray(chosen, np.int64), t_score, time.time() - t0

    def _model_of_round(self, r: int) -> Any:
        if self._trainable is not None and self._trainable[0] == r:
            return self._trainable[1]
        like = self.trainer.init(jax.random.key(0))
        state, _ = self.rounds_store.restore(r, like)
        self._trainable = (r, state["trainable"])
        return state["trainable"]

    def train(self, r: int) -> tuple[Any, list[dict[str, Any]], float]:
        """Train round r's model on all labels so far; resumes from an in-round checkpoint."""
        rows, labels = self._labeled()
        seed = self._round_seed(r)
        key = jax.random.fold_in(jax.random.key(self.c.seed), r)
        warm = self._model_of_round(r - 1) if (self.c.train.warm_start and r > 0) else None
        state = self.trainer.init(key, trainable=warm)
        start_epoch, start_batch, history = 0, 0, []
        if self.progress_store.steps():
            step = self.progress_store.steps()[-1]
            restored, meta = self.progress_store.restore(step, state)
            if meta.get("round") == r:
                state, start_epoch, start_batch = restored, int(meta["epoch"]), int(meta["batch"])
                history = list(meta.get("history", []))
                logging.info("round %d: resuming training at epoch %d, batch %d", r, start_epoch, start_batch)
        every = self.c.train.checkpoint_every_steps
        t0 = time.time()
        n_steps = 0
        per_epoch = steps_per_epoch(len(rows), self.c.train.batch_size, self.c.train.drop_last)
        progress = Progress(f"round {r} training", per_epoch * (self.c.train.epochs - start_epoch) - start_batch)
        for epoch in range(start_epoch, self.c.train.epochs):
            sums, steps = None, 0
            first = start_batch if epoch == start_epoch else 0
            for i, batch in enumerate(self._train_batches(rows, labels, epoch, seed, first), start=first):
                state, m = self.trainer.train_step(state, batch, epoch)
                sums = m if sums is None else jax.tree.map(jnp.add, sums, m)
                steps += 1
                n_steps += 1
                progress(n_steps)
                if every and n_steps % every == 0:
                    self.progress_store.save(int(state["step"]) + 1000000 * r, state,
                                             {"round": r, "epoch": epoch, "batch": i + 1, "history": history})
            if sums is None:
                continue
            try:
                row = self.trainer.epoch_summary(epoch, sums, steps)
            except NaNLossError as e:
                raise NaNLossError(f"round {r}: {e}") from None
            history.append(row)
            logging.info("round %d epoch %d: loss %.4f (ce %.4f, calibration %.4f x %.2f), train acc %.3f, lr %.2e",
                         r, epoch, row["loss"], row["ce"], row["calibration"], row["calibration_weight"],
                         row["train_accuracy"], row["lr"])
        return state, history, time.time() - t0

    def evaluate(self, trainable: Any) -> dict[str, float]:
        """Test metrics of a trainable tree."""
        rows = np.arange(len(self.test))
        return self.trainer.evaluate(trainable, self._eval_inputs(self.test, "test", rows, self.c.eval.batch_size,
                                                                  self.test.labels), kind=self.eval_kind)

    # ----------------------------------------------------------------------------------------------
    def run(self) -> list[dict[str, Any]]:
        """Run every remaining round; returns the per-round results (stops early if labels are pending)."""
        st = self.state
        while st["round"] < self.c.al.rounds:
            r = st["round"]
            if st["phase"] == "select":
                rows, t_score, t_select = self.select(r)
                st.update(phase="label", selected=rows.tolist(), t_score=t_score, t_select=t_select)
                self._save_state()
                logging.info("round %d: selected %d examples (scoring %.1fs, selection %.2fs)", r, len(rows),
                             t_score, t_select)
            if st["phase"] == "label":
                rows = np.asarray(st["selected"], np.int64)
                try:
                    labels = self.oracle.request(r, rows)
                except oracles.PendingLabels as e:
                    logging.info("%s", e)
                    print(str(e), file=sys.stderr)
                    return st["results"]
                st["labeled_rows"] = st["labeled_rows"] + rows.tolist()
                st["labels"] = st["labels"] + [int(x) for x in labels]
                st.update(phase="train")
                self._save_state()
            if st["phase"] == "train":
                state, history, t_train = self.train(r)
                metrics = self.evaluate(state["trainable"])
                self.rounds_store.save(r, state, {"round": r, "metrics": metrics})
                self._trainable = (r, state["trainable"])
                sel = np.asarray(st["selected"], np.int64)
                counts = np.bincount(np.asarray(st["labels"], np.int64), minlength=self.num_classes)
                result = {
                    "round": r, "n_labeled": len(st["labeled_rows"]), **metrics,
                    "seconds_scoring": st.get("t_score", 0.0), "seconds_selection": st.get("t_select", 0.0),
                    "seconds_training": t_train, "selected_ids": self.oracle_ids(sel),
                    "classes_covered": int((counts > 0).sum()), "strategy": self.c.al.strategy if r else "random",
                    "final_train_loss": history[-1]["loss"] if history else None,
                }
                st["results"] = st["results"] + [result]
                st.update(round=r + 1, phase="select", selected=[])
                self._save_state()
                self.progress_store.clear()
                self.write_reports()
                logging.info("round %d: %d labels, accuracy %.4f, ECE %.4f, NLL %.4f (train %.1fs)", r,
                             result["n_labeled"], metrics["accuracy"], metrics["ece"], metrics["nll"], t_train)
        return st["results"]

    def oracle_ids(self, rows: np.ndarray) -> list[int]:
        """Stable dataset ids of pool rows."""
        return [int(i) for i in np.asarray(self.pool.source.ids)[self.pool.positions[rows]]]

    def write_reports(self) -> None:
        """results.jsonl and curves.png from the recorded results."""
        from alpeft_jax import report

        rows = self.state["results"]
        if jax.process_index() != 0:
            return
        checkpoint.atomic_write(os.path.join(self.workdir, "results.jsonl"),
                                "".join(json.dumps(r) + "\n" for r in rows))
        report.plot_curves({self.c.name: [rows]}, os.path.join(self.workdir, "curves.png"))


def _positions_of_ids(source: Any, ids: np.ndarray) -> np.ndarray:
    src_ids = np.asarray(source.ids, np.int64)
    if len(src_ids) and np.array_equal(src_ids, np.arange(len(src_ids))):
        return np.asarray(ids, np.int64)
    lookup = {int(v): k for k, v in enumerate(src_ids)}
    return np.asarray([lookup.get(int(i), -1) for i in ids], np.int64)


def _relabel(batch: dict[str, Any], split: Split, rows: np.ndarray, labels: np.ndarray | None) -> np.ndarray:
    lab = np.full(len(batch["_mask"]), -1, np.int32)
    if labels is not None:
        k = int(np.asarray(batch["_mask"]).sum())
        pos = _positions_of_ids(split.source, np.asarray(batch["_id"])[:k])
        label_of = dict(zip(split.positions[rows].tolist(), np.asarray(labels)[rows].tolist()))
        lab[:k] = [label_of.get(int(p), -1) for p in pos]
    return lab


def run(config: ml_collections.ConfigDict, workdir: str, **kwargs: Any) -> list[dict[str, Any]]:
    """Run (or resume) the AL rounds of `config` in `workdir`; returns one result dict per finished round."""
    return Run(config, workdir, **kwargs).run()
