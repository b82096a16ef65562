"""Optimiser and learning-rate schedule of the training recipe (METHOD.md §3.2, §8).

The schedule is a function of the epoch (Dassl steps its scheduler at the last batch of each epoch), evaluated
inside the jitted update step from the epoch it is given: ``warmup_epochs`` epochs at the constant ``warmup_lr``,
then cosine annealing over ``num_epochs`` that starts counting after the warm-up (Dassl's WARMUP_RECOUNT):
lr(e) = warmup_lr for e < W, else lr * 0.5 * (1 + cos(pi * (e - W) / num_epochs)).
The trainer builds a fresh optimiser every active-learning round.
"""

from __future__ import annotations

import math
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
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


def epoch_schedule(
    num_epochs: int,
    lr: float = 0.002,
    warmup_epochs: int = 1,
    warmup_lr: float = 1e-5,
    schedule: str = "cosine",
) -> optax.Schedule:
    """The learning rate as an optax schedule of the 0-based epoch (a table of `lr_at_epoch`, exact in float32)."""
    if num_epochs < 1:
        raise ValueError(f"num_epochs must be >= 1, got {num_epochs}")
    if warmup_epochs < 0:
        raise ValueError(f"warmup_epochs must be >= 0, got {warmup_epochs}")
    table = np.asarray(
        [lr_at_epoch(e, num_epochs, lr, warmup_epochs, warmup_lr, schedule) for e in range(num_epochs)], np.float32
    )

    def fn(epoch: jax.Array) -> jax.Array:
        return jnp.asarray(table)[jnp.clip(jnp.asarray(epoch, jnp.int32), 0, num_epochs - 1)]

    return fn


def scale_by_epoch_schedule(schedule: optax.Schedule) -> optax.GradientTransformationExtraArgs:
    """Multiply updates by -schedule(epoch), the epoch passed to `update` as the extra argument `epoch`."""

    def init_fn(params: Any) -> optax.EmptyState:
        del params
        return optax.EmptyState()

    def update_fn(
        updates: Any, state: optax.EmptyState, params: Any = None, *, epoch: jax.Array | None = None, **extra: Any
    ) -> tuple[Any, optax.EmptyState]:
        del params, extra
        if epoch is None:
            raise ValueError("this optimiser follows an epoch schedule: call tx.update(..., epoch=EPOCH).")
        step = -schedule(epoch)
        return jax.tree.map(lambda u: (step * u).astype(u.dtype), updates), state

    return optax.GradientTransformationExtraArgs(init_fn, update_fn)


def make_optimizer(
    name: str,
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
) -> optax.GradientTransformationExtraArgs:
    """Optimiser of one training round: "sgd" as torch.optim.SGD or "adamw" (decoupled decay).

    "sgd": coupled L2 decay added to the gradient before momentum (torch's ``weight_decay``), heavy-ball
    momentum with dampening 0, no Nesterov. "adamw": Adam with decoupled weight decay scaled by the lr, as
    torch.optim.AdamW. Both follow :func:`epoch_schedule`; `update` takes the epoch as `epoch=`.
    """
    if name not in OPTIMIZERS:
        raise ValueError(f"unknown optimizer {name!r}; use one of {OPTIMIZERS}")
    scale = scale_by_epoch_schedule(epoch_schedule(num_epochs, lr, warmup_epochs, warmup_lr, schedule))
    if name == "sgd":
        parts: list[Any] = []
        if weight_decay:
            parts.append(optax.add_decayed_weights(weight_decay))
        if momentum:
            parts.append(optax.trace(decay=momentum, nesterov=False))
        return optax.chain(*parts, scale)
    return optax.chain(optax.scale_by_adam(b1=b1, b2=b2, eps=eps), optax.add_decayed_weights(weight_decay), scale)
