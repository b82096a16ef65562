"""Training and evaluation of the trainable subtree, compiled once for every round.

The labelled set grows every round, so batches have a fixed shape (``batch_size`` rounded up to the device count)
with a ``_mask`` for padding; the epoch is an argument of the step, and the learning rate (an optax schedule of the
epoch) and the calibration weight are looked up from it inside the step, so one compiled update step serves every
epoch of every round. Only the trainable tree is differentiated; the optimiser state covers nothing else.

Data parallel: batches are global arrays split over the mesh's ``data`` axis (`alpeft_jax.parallel`), the state
is replicated, and XLA averages the gradients across devices and hosts; the masked loss is a mean over the valid
rows of the whole global batch, so the update does not depend on the number of devices.

Batches are `alpeft_jax.batch.Batch`es (training reads ``inputs``, ``label`` and ``_mask``) whose ``inputs`` are of
the trainer's input kind (images, cached hidden states or cached features; see `alpeft_jax.models.adapted`).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Iterator
from typing import Any, cast

import jax
import jax.numpy as jnp
import numpy as np
import optax
from absl import logging

from alpeft_jax import evaluate, losses, optim, schema
from alpeft_jax.batch import Batch
from alpeft_jax.models.adapted import AdaptedModel, InputKind
from alpeft_jax.models.heads import LossPredictionHead
from alpeft_jax.parallel import Sharder

State = dict[str, Any]


class NaNLossError(FloatingPointError):
    """The training loss became NaN or infinite."""


# The settings of a round's training, declared (defaults, choices, ranges) in `alpeft_jax.schema`:
# `TrainConfig()` is `config.base().train`; `TrainConfig.from_config(c.train, ...)` reads a run config's section.
TrainConfig = schema.Train


def steps_per_epoch(n: int, batch_size: int, drop_last: bool = True) -> int:
    """Update steps in one epoch over n labelled examples (one padded step when n < batch_size)."""
    if n <= 0:
        return 0
    if drop_last and n >= batch_size:
        return n // batch_size
    return math.ceil(n / batch_size)


class Trainer:
    """Compile-once, data-parallel update and evaluation steps for an `AdaptedModel` on inputs of one kind."""

    def __init__(
        self, model: AdaptedModel, config: TrainConfig, kind: InputKind = "images", sharder: Sharder | None = None
    ) -> None:
        self.model = model
        self.config = config
        self.kind = kind
        self.sharder = sharder or Sharder()
        c = config
        main = optim.make_optimizer(
            c.optimizer,
            c.epochs,
            lr=c.lr,
            momentum=c.momentum,
            weight_decay=c.weight_decay,
            warmup_epochs=c.warmup_epochs,
            warmup_lr=c.warmup_lr,
        )
        if config.loss_prediction:
            # The loss-prediction module has its own SGD (train.loss_prediction_lr; momentum and coupled decay as the
            # main optimiser's defaults, as the reference code: 0.9 and 5e-4).
            head_tx = optax.chain(
                optax.add_decayed_weights(schema.default("train.weight_decay")),
                optax.sgd(config.loss_prediction_lr, momentum=schema.default("train.momentum")),
            )
            self.tx = optax.multi_transform(
                {"main": main, "loss_pred": optax.with_extra_args_support(head_tx)},
                lambda tree: {k: ("loss_pred" if k == "loss_pred" else "main") for k in tree},
            )
        else:
            self.tx = main
        self._calibration: Callable[..., jax.Array] | None
        if config.loss_prediction and config.calibration != "none":
            # The reference's learning-loss branch trains CE + 0.01 x the ranking loss and never adds the
            # calibration loss, whatever its flags say; so does this one (the epoch log shows weight 0).
            logging.warning(
                "train.calibration=%s is not applied with the learning-loss head: the reference's learning-loss "
                "training has no calibration term",
                config.calibration,
            )
            self._calibration = None
        elif config.calibration == "cpeal":
            self._calibration = losses.get("cpeal", weighting=config.calibration_weighting)
        elif config.calibration == "avuc":
            self._calibration = losses.get("avuc")
        else:
            self._calibration = None
        self._lam_table = np.asarray([self.calibration_weight(e) for e in range(c.epochs)], np.float32)
        self.traces = {"train": 0, "eval": 0}  # Python-level traces: each is one compilation
        rep = self.sharder.replicated
        self._train_step = jax.jit(self._train_step_impl, donate_argnums=(0,), out_shardings=(rep, rep))
        self._eval_step = jax.jit(self._eval_step_impl, static_argnums=(2,), out_shardings=(rep, None, None))
        self._init = jax.jit(self._init_impl, out_shardings=rep)

    # ----------------------------------------------------------------------------------------------
    def _init_impl(self, rng: jax.Array, trainable: Any) -> State:
        k_init, k_state = jax.random.split(rng)
        trainable = self.model.init(k_init) if trainable is None else dict(trainable)
        if self.config.loss_prediction and "loss_pred" not in trainable:
            dummy = jnp.zeros((1, self.model.num_classes), jnp.float32)
            trainable["loss_pred"] = LossPredictionHead().init(jax.random.fold_in(k_init, 7), dummy)["params"]
        state = {
            "trainable": trainable,
            "opt_state": self.tx.init(trainable),
            "rng": k_state,
            "step": jnp.zeros((), jnp.int32),
        }
        if self.config.loss_scale == "dynamic":
            state["loss_scale"] = {
                "scale": jnp.asarray(self.config.loss_scale_init, jnp.float32),
                "good_steps": jnp.zeros((), jnp.int32),
            }
        return state

    def init(self, rng: jax.Array, trainable: Any = None) -> State:
        """A fresh state, replicated over the mesh: new trainable tree (unless given, e.g. warm start) and optimiser."""
        # A given tree (warm start) is copied by the jitted init: the update step donates its state.
        return self._init(rng, None if trainable is None else self.sharder.replicate(dict(trainable)))

    def lr(self, epoch: int) -> float:
        """Learning rate of an epoch (constant warm-up, then cosine)."""
        c = self.config
        return optim.lr_at_epoch(epoch, c.epochs, c.lr, warmup_epochs=c.warmup_epochs, warmup_lr=c.warmup_lr)

    def calibration_weight(self, epoch: int) -> float:
        """Weight of the calibration loss in an epoch (annealed as the authors)."""
        c = self.config
        if self._calibration is None:
            return 0.0
        return losses.calibration_weight(epoch, c.epochs, c.calibration_weight, anneal=c.calibration_anneal)

    # ----------------------------------------------------------------------------------------------
    def _loss(
        self, trainable: Any, batch: dict[str, jax.Array], rng: jax.Array, lam: jax.Array
    ) -> tuple[jax.Array, dict]:
        logits, _ = self.model.logits(trainable, batch["inputs"], self.kind, rng=rng, train=True)
        mask = batch["_mask"]
        ce = losses.cross_entropy(logits, batch["label"], mask=mask, label_smoothing=self.config.label_smoothing)
        total = ce
        cal = jnp.zeros((), jnp.float32)
        if self._calibration is not None:
            cal = self._calibration(logits, batch["label"], mask=mask)
            total = total + lam * cal
        if self.config.loss_prediction:
            per_example = optax.softmax_cross_entropy_with_integer_labels(logits, jnp.maximum(batch["label"], 0))
            pred = cast(jax.Array, LossPredictionHead().apply({"params": trainable["loss_pred"]}, logits))
            total = total + self.config.loss_prediction_weight * masked_ranking_loss(pred, per_example, mask)
        correct = (jnp.argmax(logits, -1) == batch["label"]) & mask
        n = mask.sum()
        # How often the calibration loss can act: it is exactly 0 on a batch the model already classifies right.
        missed = (n - correct.sum()) / jnp.maximum(n, 1)
        return total, {
            "loss": total,
            "ce": ce,
            "calibration": cal,
            "correct": correct.sum(),
            "n": n,
            "calibration_active": (cal != 0).astype(jnp.int32),
            "misclassified_share": missed,
        }

    def _train_step_impl(self, state: State, batch: dict[str, jax.Array], epoch: jax.Array) -> tuple[State, dict]:
        self.traces["train"] += 1
        rng, sub = jax.random.split(state["rng"])
        epoch = jnp.clip(epoch, 0, self.config.epochs - 1)
        lam = jnp.asarray(self._lam_table)[epoch]
        scaling = state.get("loss_scale")
        if scaling is None:
            grads, metrics = jax.grad(self._loss, has_aux=True)(state["trainable"], batch, sub, lam)
        else:  # float16: differentiate loss x scale, unscale, skip the update where a gradient overflowed
            scaled = lambda t: (lambda out: (out[0] * scaling["scale"], out[1]))(self._loss(t, batch, sub, lam))
            grads, metrics = jax.grad(scaled, has_aux=True)(state["trainable"])
            grads = jax.tree.map(lambda g: g / scaling["scale"], grads)
        updates, opt_state = self.tx.update(grads, state["opt_state"], state["trainable"], epoch=epoch)
        trainable = optax.apply_updates(state["trainable"], updates)
        new = {"trainable": trainable, "opt_state": opt_state, "rng": rng, "step": state["step"] + 1}
        if scaling is not None:
            new.update(_loss_scale_step(state, new, grads, scaling, self.config.loss_scale_growth_interval))
            finite = new.pop("_finite")
            metrics = {
                k: (jnp.where(finite > 0, v, 0) if k in ("loss", "ce", "calibration", "calibration_active") else v)
                for k, v in metrics.items()
            }
            metrics["skipped_steps"] = 1 - finite
        return new, metrics

    def put(self, batch: Batch[Any]) -> dict[str, jax.Array]:
        """What training reads of a batch (inputs, label, _mask) as global arrays on the mesh (host arrays are this
        process's rows; global arrays pass through)."""
        part = {"inputs": batch["inputs"], "label": batch["label"], "_mask": batch["_mask"]}
        if all(isinstance(x, jax.Array) and not x.is_fully_addressable for x in part.values()):
            return part
        if not self.sharder.multiprocess and all(isinstance(x, jax.Array) for x in part.values()):
            return part
        return self.sharder.put({k: np.asarray(x) for k, x in part.items()})

    def train_step(self, state: State, batch: Batch[Any], epoch: int) -> tuple[State, dict]:
        """One update on a padded batch; lr and calibration weight follow `epoch`."""
        return self._train_step(state, self.put(batch), jnp.asarray(epoch, jnp.int32))

    def fit(
        self,
        state: State,
        epoch_batches: Callable[[int], Iterable[Batch[Any]]],
        *,
        start_epoch: int = 0,
        start_batch: int = 0,
        history: list[dict] | None = None,
        on_step: Callable[[State, int, int, list[dict]], None] | None = None,
        on_epoch_end: Callable[[int, State, dict], None] | None = None,
    ) -> tuple[State, list[dict]]:
        """Train for the configured epochs from (start_epoch, start_batch); NaN stops it.

        `epoch_batches(e)` yields the batches of epoch e (for `start_epoch`, those from `start_batch` on);
        `on_step(state, epoch, next_batch, history)` runs after every step (e.g. to checkpoint a resume point),
        `on_epoch_end(epoch, state, summary)` after every epoch.
        """
        history = list(history or [])
        for epoch in range(start_epoch, self.config.epochs):
            sums: dict[str, Any] = {}
            steps = 0
            first = start_batch if epoch == start_epoch else 0
            for i, batch in enumerate(epoch_batches(epoch), start=first):
                state, m = self.train_step(state, batch, epoch)
                sums = m if not sums else _add_trees(sums, m)
                steps += 1
                if on_step is not None:
                    on_step(state, epoch, i + 1, history)
            if steps == 0:
                if first:
                    continue  # resumed exactly at the end of an epoch
                raise ValueError(f"epoch {epoch} got no training batches (is the labelled set empty?).")
            row = self.epoch_summary(epoch, sums, steps)
            history.append(row)
            if on_epoch_end is not None:
                on_epoch_end(epoch, state, row)
        return state, history

    def epoch_summary(self, epoch: int, sums: dict[str, Any], steps: int) -> dict[str, Any]:
        """Mean loss terms, train accuracy, lr and weight of an epoch from its summed step metrics; NaN raises."""
        s = {k: float(v) for k, v in jax.device_get(sums).items()}
        row = {
            "epoch": epoch,
            "loss": s["loss"] / steps,
            "ce": s["ce"] / steps,
            "calibration": s["calibration"] / steps,
            "train_accuracy": s["correct"] / max(1.0, s["n"]),
            "lr": self.lr(epoch),
            "calibration_weight": self.calibration_weight(epoch),
            "steps": steps,
            "calibration_active_steps": int(s["calibration_active"]),  # steps where the calibration loss was > 0
            "misclassified_share": s["misclassified_share"] / steps,  # of the labelled batch, before the update
        }
        if "skipped_steps" in s:  # float16 loss scaling: steps whose gradients overflowed were not applied
            row["skipped_steps"] = int(s["skipped_steps"])
            applied = max(1, steps - row["skipped_steps"])
            for k in ("loss", "ce", "calibration"):
                row[k] = s[k] / applied
        if not math.isfinite(row["loss"]):
            raise NaNLossError(
                f"training loss is {row['loss']} in epoch {epoch}: lower train.lr or check the inputs; "
                "the round stops and the last checkpoint is kept."
            )
        return row

    # ----------------------------------------------------------------------------------------------
    def _eval_step_impl(
        self, trainable: Any, batch: dict[str, jax.Array], kind: InputKind
    ) -> tuple[dict, jax.Array, jax.Array]:
        self.traces["eval"] += 1
        logits, aux = self.model.logits(trainable, batch["inputs"], kind, train=False)
        return evaluate.batch_stats(logits, batch["label"], batch["_mask"]), logits, aux["features"]

    def evaluate(
        self, trainable: Any, batches: Iterable[Batch[Any]], kind: InputKind | None = None
    ) -> dict[str, float]:
        """Accuracy, NLL, ECE (15 bins), Brier over padded batches (inputs of `kind`, default the trainer's)."""
        stats = None
        for batch in batches:
            s, _, _ = self._eval_step(trainable, self.put(batch), kind or self.kind)
            stats = s if stats is None else jax.tree.map(jnp.add, stats, s)
        if stats is None:
            raise ValueError("evaluation got no batches (empty test split?).")
        return evaluate.finalize(jax.device_get(stats))

    def predict(
        self, trainable: Any, batches: Iterable[Batch[Any]], kind: InputKind | None = None
    ) -> Iterator[tuple[np.ndarray, np.ndarray, Batch[Any]]]:
        """Yield (logits, features, batch) per padded batch (padding rows included; use batch['_mask'])."""
        for batch in batches:
            _, logits, feats = self._eval_step(trainable, self.put(batch), kind or self.kind)
            yield self.sharder.to_host(logits), self.sharder.to_host(feats), batch


@jax.jit
def _add_trees(a: Any, b: Any) -> Any:
    """a + b leaf by leaf in one dispatch (eager adds of replicated scalars cost milliseconds each)."""
    return jax.tree.map(jnp.add, a, b)


def _loss_scale_step(old: State, new: State, grads: Any, scaling: dict, interval: int) -> dict:
    """Dynamic loss scaling: keep the update and count a good step when every gradient is finite (doubling the
    scale after `interval` of them), else keep the old trainables and optimiser state and halve the scale."""
    finite = jnp.all(jnp.asarray([jnp.all(jnp.isfinite(g)) for g in jax.tree.leaves(grads)]))
    keep = lambda a, b: jax.tree.map(lambda x, y: jnp.where(finite, x, y), a, b)
    good = jnp.where(finite, scaling["good_steps"] + 1, 0)
    grow = good >= interval
    scale = jnp.where(
        finite, jnp.where(grow, scaling["scale"] * 2.0, scaling["scale"]), jnp.maximum(scaling["scale"] / 2.0, 1.0)
    )
    return {
        "trainable": keep(new["trainable"], old["trainable"]),
        "opt_state": keep(new["opt_state"], old["opt_state"]),
        "loss_scale": {"scale": scale, "good_steps": jnp.where(grow, 0, good)},
        "_finite": finite.astype(jnp.int32),
    }


def masked_ranking_loss(pred: jax.Array, target: jax.Array, mask: jax.Array, margin: float = 1.0) -> jax.Array:
    """Yoo & Kweon's pairwise ranking loss over the valid (leading, unpadded) rows of a padded batch.

    With m = n rounded down to even (n = number of valid rows; an odd batch drops its last valid row, as the
    unpadded loss does), row i is paired with row m-1-i for i < m//2; the target is not differentiated.
    """
    b = pred.shape[0]
    n = (mask.astype(jnp.int32).sum() // 2) * 2
    i = jnp.arange(b)
    j = jnp.clip(n - 1 - i, 0, b - 1)
    valid = i < n // 2
    target = jax.lax.stop_gradient(target)
    sign = jnp.where(target - target[j] > 0, 1.0, -1.0)
    terms = jnp.maximum(margin - sign * (pred - pred[j]), 0.0)
    return jnp.sum(jnp.where(valid, terms, 0.0)) / jnp.maximum(valid.sum(), 1)
