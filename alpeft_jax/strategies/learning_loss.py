"""Learning loss (Yoo & Kweon 2019): a small loss-prediction head, its ranking loss, and top-loss selection.

The trainer fits `LossPredictionHead` on the K-dim scaled logits jointly with cross-entropy
(CE + 0.01 * loss_prediction_loss, METHOD 3.5 `LL`) and stores its predictions in pool["loss_pred"].
"""

from __future__ import annotations

from collections.abc import Mapping

import jax
import jax.numpy as jnp
import numpy as np

from alpeft_jax.models.heads import LossPredictionHead  # noqa: F401  (the head this strategy reads)
from alpeft_jax.strategies import spmd
from alpeft_jax.strategies.base import check_inputs, register, top_unlabeled, top_unlabeled_on_mesh


def loss_prediction_loss(pred: jax.Array, target_loss: jax.Array, margin: float = 1.0) -> jax.Array:
    """Pairwise margin ranking loss between predicted and true losses (mean over pairs).

    Example i is paired with example B-1-i (the batch against its reverse, first half kept); the pair is
    penalised by max(0, margin - sign * (pred_i - pred_j)) with sign = +1 when target_i > target_j, else -1.
    The target is not differentiated. An odd batch drops its last example.
    """
    pred = jnp.reshape(pred, (-1,))
    target = jax.lax.stop_gradient(jnp.reshape(target_loss, (-1,)))
    if pred.shape != target.shape:
        raise ValueError(f"pred {pred.shape} and target_loss {target.shape} must have the same length")
    b = (pred.shape[0] // 2) * 2
    if b == 0:
        raise ValueError("loss_prediction_loss needs a batch of at least 2 examples")
    pred, target = pred[:b], target[:b]
    dp = (pred - pred[::-1])[: b // 2]
    dt = (target - target[::-1])[: b // 2]
    sign = jnp.where(dt > 0, 1.0, -1.0)
    return jnp.mean(jnp.maximum(margin - sign * dp, 0.0))


# A sharded pool is ranked on its shards, like entropy's scores (measured faster on the shards, uncertainty.ON_MESH);
# `sharded=False` gathers it to the host first.
ON_MESH = True


@register("learning_loss", requires=("loss_pred",))
def select_learning_loss(
    rng: object,
    pool: Mapping[str, np.ndarray],
    labeled: np.ndarray,
    budget: int,
    sharded: bool | None = None,
    **_: object,
) -> np.ndarray:
    """Highest predicted loss first (pool["loss_pred"] from `LossPredictionHead`)."""
    labeled, _n = check_inputs(pool, labeled, budget, {"loss_pred"})
    arrays, mesh = spmd.placed(pool, {"loss_pred"}, sharded, ON_MESH)
    if mesh is None or budget == 0:
        return top_unlabeled(jnp.asarray(arrays["loss_pred"], jnp.float32).reshape(-1), labeled, budget)
    scores = arrays["loss_pred"]
    if scores.ndim != 1:
        raise ValueError(f"sharded pool['loss_pred'] must be [N], got shape {scores.shape}")
    return np.asarray(top_unlabeled_on_mesh(scores, spmd.put(labeled, mesh), int(budget), mesh), np.int64)
