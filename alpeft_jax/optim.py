"""Optimiser and learning-rate schedule of the training recipe (METHOD.md §3.2, §8).

The schedule is indexed by optimiser step but changes once per epoch, as Dassl steps its scheduler at the
last batch of each epoch: ``warmup_epochs`` epochs at the constant ``warmup_lr``, then cosine annealing
over ``num_epochs`` that starts counting after the warm-up (Dassl's WARMUP_RECOUNT):
lr(e) = warmup_lr for e < W, else lr * 0.5 * (1 + cos(pi * (e - W) / num_epochs)).
The trainer builds a fresh optimiser every active-learning round.
"""

from __future__ import annotations

import math

import jax.numpy as jnp
import optax

OPTIMIZERS = ("sgd", "adamw")
SCHEDULES = ("cosine", "constant")


def lr_at_epoch(
    epoch: int,
    num_epochs: int,
    lr: float = 0.002,
    warmup_epochs: int = 1,
    warmup_lr: float = 1e-5,
    schedule: str = "cosine",
) -> float:
    """Learning rate used throughout a 0-based epoch (host-side float)."""
    if schedule not in SCHEDULES:
        raise ValueError(f"unknown schedule {schedule!r}; use one of {SCHEDULES}")
    if epoch < warmup_epochs:
        return float(warmup_lr)
    if schedule == "constant":
        return float(lr)
    return float(lr * 0.5 * (1.0 + math.cos(math.pi * (epoch - warmup_epochs) / num_epochs)))


def lr_schedule(
    steps_per_epoch: int,
    num_epochs: int,
    lr: float = 0.002,
    warmup_epochs: int = 1,
    warmup_lr: float = 1e-5,
    schedule: str = "cosine",
) -> optax.Schedule:
    """Step-indexed, epoch-stepped schedule: constant warm-up, then cosine (or constant) from ``lr``."""
    if steps_per_epoch < 1 or num_epochs < 1:
        raise ValueError(f"steps_per_epoch and num_epochs must be >= 1, got {steps_per_epoch}, {num_epochs}")
    if warmup_epochs < 0:
        raise ValueError(f"warmup_epochs must be >= 0, got {warmup_epochs}")
    if schedule not in SCHEDULES:
        raise ValueError(f"unknown schedule {schedule!r}; use one of {SCHEDULES}")

    def fn(step: jnp.ndarray) -> jnp.ndarray:
        epoch = (jnp.asarray(step) // steps_per_epoch).astype(jnp.float32)
        if schedule == "constant":
            main = jnp.full_like(epoch, lr)
        else:
            main = lr * 0.5 * (1.0 + jnp.cos(jnp.pi * (epoch - warmup_epochs) / num_epochs))
        return jnp.where(epoch < warmup_epochs, jnp.float32(warmup_lr), main).astype(jnp.float32)

    return fn


def make_optimizer(
    name: str,
    steps_per_epoch: int,
    num_epochs: int,
    lr: float = 0.002,
    momentum: float = 0.9,
    weight_decay: float = 5e-4,
    warmup_epochs: int = 1,
    warmup_lr: float = 1e-5,
    schedule: str = "cosine",
    b1: float = 0.9,
    b2: float = 0.999,
    eps: float = 1e-8,
) -> optax.GradientTransformation:
    """Optimiser of one training round: "sgd" as torch.optim.SGD or "adamw" (decoupled decay).

    "sgd": coupled L2 decay added to the gradient before momentum (torch's ``weight_decay``), heavy-ball
    momentum with dampening 0, no Nesterov. "adamw": Adam with decoupled weight decay scaled by the lr, as
    torch.optim.AdamW. Both follow :func:`lr_schedule`.
    """
    sched = lr_schedule(steps_per_epoch, num_epochs, lr, warmup_epochs, warmup_lr, schedule)
    if name == "sgd":
        parts = []
        if weight_decay:
            parts.append(optax.add_decayed_weights(weight_decay))
        parts.append(optax.sgd(sched, momentum=momentum or None, nesterov=False))
        return optax.chain(*parts)
    if name == "adamw":
        return optax.adamw(sched, b1=b1, b2=b2, eps=eps, weight_decay=weight_decay)
    raise ValueError(f"unknown optimizer {name!r}; use one of {OPTIMIZERS}")
