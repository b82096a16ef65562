"""Training and evaluation of the trainable subtree, compiled once for every round.

The labelled set grows every round, so batches have a fixed shape (``batch_size``) with a ``_mask`` for padding;
the learning rate and the calibration weight are arguments of the step, not constants baked into it, so one
compiled update step serves every epoch of every round. Only the trainable tree is differentiated; the
optimiser state covers nothing else.

A batch is ``{"inputs": x, "label": int32[B], "_mask": bool[B]}`` where ``x`` is of the model's input kind
(images, cached hidden states or cached features; see `alpeft_jax.models.adapted`).
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable, Iterable, Iterator
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax

from alpeft_jax import evaluate, losses, optim
from alpeft_jax.models.adapted import AdaptedModel
from alpeft_jax.models.heads import LossPredictionHead

State = dict[str, Any]
Batch = dict[str, Any]


class NaNLossError(FloatingPointError):
    """The training loss became NaN or infinite."""


@dataclasses.dataclass(frozen=True)
class TrainConfig:
    """Optimisation and loss settings of one AL round (METHOD.md §3.2 defaults)."""

    epochs: int = 10
    batch_size: int = 32
    optimizer: str = "sgd"  # "sgd" (coupled weight decay, as the authors) | "adamw"
    lr: float = 0.002
    momentum: float = 0.9
    weight_decay: float = 5e-4
    warmup_epochs: int = 1
    warmup_lr: float = 1e-5
    label_smoothing: float = 0.0
    calibration: str = "cpeal"  # "cpeal" | "avuc" | "none"
    calibration_weight: float = 1.0
    calibration_anneal: bool = True
    calibration_weighting: str = "balanced"
    drop_last: bool = True  # Dassl drops the last partial batch once the set holds a full batch
    loss_prediction: bool = False  # train a learning-loss head alongside (Yoo & Kweon; METHOD.md §3.5 "LL")
    loss_prediction_weight: float = 0.01
    loss_prediction_lr: float = 0.1

    def __post_init__(self) -> None:
        if self.calibration not in ("cpeal", "avuc", "none"):
            raise ValueError(f"calibration must be 'cpeal', 'avuc' or 'none', got {self.calibration!r}.")
        if self.epochs < 1 or self.batch_size < 1:
            raise ValueError("train.epochs and train.batch_size must be >= 1.")


def steps_per_epoch(n: int, batch_size: int, drop_last: bool = True) -> int:
    """Update steps in one epoch over n labelled examples (one padded step when n < batch_size)."""
    if n <= 0:
        return 0
    if drop_last and n >= batch_size:
        return n // batch_size
    return math.ceil(n / batch_size)


class Trainer:
    """Compile-once update and evaluation steps for an `AdaptedModel` on inputs of one kind."""

    def __init__(self, model: AdaptedModel, config: TrainConfig, kind: str = "images") -> None:
        self.model = model
        self.config = config
        self.kind = kind
        main = injectable_optimizer(config)
        if config.loss_prediction:
            # The loss-prediction module has its own SGD (lr 0.1, momentum 0.9, coupled decay 5e-4).
            head_tx = optax.chain(optax.add_decayed_weights(5e-4), optax.sgd(config.loss_prediction_lr, momentum=0.9))
            self.tx = optax.multi_transform(
                {"main": main, "loss_pred": head_tx},
                lambda tree: {k: ("loss_pred" if k == "loss_pred" else "main") for k in tree},
            )
        else:
            self.tx = main
        if config.calibration == "cpeal":
            self._calibration = losses.get("cpeal", weighting=config.calibration_weighting)
        elif config.calibration == "avuc":
            self._calibration = losses.get("avuc")
        else:
            self._calibration = None
        self.traces = {"train": 0, "eval": 0}  # Python-level traces: each is one compilation
        self._train_step = jax.jit(self._train_step_impl, donate_argnums=(0,))
        self._eval_step = jax.jit(self._eval_step_impl, static_argnums=(2,))

    # ----------------------------------------------------------------------------------------------
    def init(self, rng: jax.Array, trainable: Any = None) -> State:
        """A fresh state: new trainable tree (unless given, e.g. warm start) and optimiser state."""
        k_init, k_state = jax.random.split(rng)
        # A given tree (warm start) is copied: the update step donates its state.
        trainable = self.model.init(k_init) if trainable is None else jax.tree.map(jnp.copy, dict(trainable))
        if self.config.loss_prediction and "loss_pred" not in trainable:
            dummy = jnp.zeros((1, self.model.num_classes), jnp.float32)
            trainable["loss_pred"] = LossPredictionHead().init(jax.random.fold_in(k_init, 7), dummy)["params"]
        return {
            "trainable": trainable,
            "opt_state": self.tx.init(trainable),
            "rng": k_state,
            "step": jnp.zeros((), jnp.int32),
        }

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
    def _loss(self, trainable: Any, batch: Batch, rng: jax.Array, lam: jax.Array) -> tuple[jax.Array, dict]:
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
            pred = LossPredictionHead().apply({"params": trainable["loss_pred"]}, logits)
            total = total + self.config.loss_prediction_weight * masked_ranking_loss(pred, per_example, mask)
        correct = (jnp.argmax(logits, -1) == batch["label"]) & mask
        return total, {"loss": total, "ce": ce, "calibration": cal, "correct": correct.sum(), "n": mask.sum()}

    def _train_step_impl(self, state: State, batch: Batch, lr: jax.Array, lam: jax.Array) -> tuple[State, dict]:
        self.traces["train"] += 1
        rng, sub = jax.random.split(state["rng"])
        grads, metrics = jax.grad(self._loss, has_aux=True)(state["trainable"], batch, sub, lam)
        opt_state = _set_lr(state["opt_state"], lr, self.config.loss_prediction)
        updates, opt_state = self.tx.update(grads, opt_state, state["trainable"])
        trainable = optax.apply_updates(state["trainable"], updates)
        new = {"trainable": trainable, "opt_state": opt_state, "rng": rng, "step": state["step"] + 1}
        return new, metrics

    def train_step(self, state: State, batch: Batch, epoch: int) -> tuple[State, dict]:
        """One update on a padded batch; lr and calibration weight follow `epoch`."""
        lr = jnp.asarray(self.lr(epoch), jnp.float32)
        lam = jnp.asarray(self.calibration_weight(epoch), jnp.float32)
        return self._train_step(state, batch, lr, lam)

    def fit(
        self,
        state: State,
        epoch_batches: Callable[[int], Iterable[Batch]],
        *,
        start_epoch: int = 0,
        on_epoch_end: Callable[[int, State, dict], None] | None = None,
    ) -> tuple[State, list[dict]]:
        """Train for the configured epochs; `epoch_batches(e)` yields the batches of epoch e. NaN stops it."""
        history = []
        for epoch in range(start_epoch, self.config.epochs):
            sums: dict[str, Any] = {}
            steps = 0
            for batch in epoch_batches(epoch):
                state, m = self.train_step(state, batch, epoch)
                sums = m if not sums else jax.tree.map(jnp.add, sums, m)
                steps += 1
            if steps == 0:
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
        }
        if not math.isfinite(row["loss"]):
            raise NaNLossError(
                f"training loss is {row['loss']} in epoch {epoch}: lower train.lr or check the inputs; "
                "the round stops and the last checkpoint is kept."
            )
        return row

    # ----------------------------------------------------------------------------------------------
    def _eval_step_impl(self, trainable: Any, batch: Batch, kind: str) -> tuple[dict, jax.Array, jax.Array]:
        self.traces["eval"] += 1
        logits, aux = self.model.logits(trainable, batch["inputs"], kind, train=False)
        return evaluate.batch_stats(logits, batch["label"], batch["_mask"]), logits, aux["features"]

    def evaluate(self, trainable: Any, batches: Iterable[Batch], kind: str | None = None) -> dict[str, float]:
        """Accuracy, NLL, ECE (15 bins), Brier over padded batches (inputs of `kind`, default the trainer's)."""
        stats = None
        for batch in batches:
            s, _, _ = self._eval_step(trainable, batch, kind or self.kind)
            stats = s if stats is None else jax.tree.map(jnp.add, stats, s)
        if stats is None:
            raise ValueError("evaluation got no batches (empty test split?).")
        return evaluate.finalize(jax.device_get(stats))

    def predict(
        self, trainable: Any, batches: Iterable[Batch], kind: str | None = None
    ) -> Iterator[tuple[np.ndarray, np.ndarray, Batch]]:
        """Yield (logits, features, batch) per padded batch (padding rows included; use batch['_mask'])."""
        for batch in batches:
            _, logits, feats = self._eval_step(trainable, batch, kind or self.kind)
            yield np.asarray(logits), np.asarray(feats), batch


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


def injectable_optimizer(config: TrainConfig) -> optax.GradientTransformation:
    """The round's optimiser (`optim.make_optimizer`) with its learning rate a state entry set every step."""

    def factory(learning_rate: jax.Array) -> optax.GradientTransformation:
        return optim.make_optimizer(
            config.optimizer, 1, 1, lr=learning_rate, momentum=config.momentum, weight_decay=config.weight_decay,
            warmup_epochs=0, schedule="constant",
        )

    return optax.inject_hyperparams(factory)(learning_rate=0.0)


def _with_lr(state: Any, lr: jax.Array) -> Any:
    return state._replace(hyperparams={**state.hyperparams, "learning_rate": jnp.asarray(lr, jnp.float32)})


def _set_lr(opt_state: Any, lr: jax.Array, multi: bool) -> Any:
    if not multi:
        return _with_lr(opt_state, lr)
    inner = dict(opt_state.inner_states)
    inner["main"] = inner["main"]._replace(inner_state=_with_lr(inner["main"].inner_state, lr))
    return opt_state._replace(inner_states=inner)
