"""Uncertainty-calibration losses: the C-PEAL entropy loss and the AvUC loss.

Both are jit-able and differentiable, work on fixed-shape padded batches (``mask`` marks the real rows) and
compute in float32 whatever the dtype of the logits (bf16 logits are upcast first), returning a float32
scalar.
No boolean indexing is used: group membership is a 0/1 weight, so shapes stay static under ``jit``.
"""

from __future__ import annotations

import functools
import inspect
from collections.abc import Callable

import jax
import jax.numpy as jnp

WEIGHTINGS = ("none", "balanced", "effective_number")


def _prepare(logits: jax.Array, labels: jax.Array, mask: jax.Array | None) -> tuple[jax.Array, jax.Array]:
    """Upcast logits to f32, zero the padding rows and return them with a f32 row mask."""
    logits = jnp.asarray(logits)
    labels = jnp.asarray(labels)
    if logits.ndim != 2:
        raise ValueError(f"logits must be [batch, classes], got shape {logits.shape}; reshape them first")
    if labels.shape != logits.shape[:1]:
        raise ValueError(f"labels must be [batch]={logits.shape[:1]} class ids, got shape {labels.shape}")
    if mask is None:
        m = jnp.ones(logits.shape[:1], jnp.float32)
    else:
        mask = jnp.asarray(mask)
        if mask.shape != logits.shape[:1]:
            raise ValueError(f"mask must be [batch]={logits.shape[:1]}, got shape {mask.shape}")
        m = mask.astype(jnp.float32)
    # Padding rows may hold anything (zeros, garbage); replacing them keeps value and gradient clean.
    z = jnp.where(m[:, None] > 0, logits.astype(jnp.float32), 0.0)
    return z, m


def predictive_entropy(logits: jax.Array, eps: float = 1e-6) -> jax.Array:
    """Natural-log entropy -sum_k p_k log(p_k + eps) of softmax(logits), per row, in float32."""
    p = jax.nn.softmax(jnp.asarray(logits).astype(jnp.float32), axis=-1)
    return -jnp.sum(p * jnp.log(p + eps), axis=-1)


def calibration_loss(
    logits: jax.Array,
    labels: jax.Array,
    weighting: str = "balanced",
    eps: float = 1e-6,
    clamp: float = 5.0,
    mask: jax.Array | None = None,
    beta: float = 0.999,
) -> jax.Array:
    """C-PEAL uncertainty-calibration loss (METHOD.md §2): high entropy on errors, low entropy on hits.

    u = entropy of softmax(logits); L_inc = mean over misclassified rows of -log(tanh(u) + eps);
    L_cor = mean over correctly classified rows of -log(1 - tanh(u) + eps); an empty group gives 0.
    ``weighting``: "none" -> L_inc + L_cor; "balanced" -> (n_i/N) L_cor + (n_c/N) L_inc;
    "effective_number" -> Cui et al. weights (1-beta)/(1-beta^n_k), normalised to sum 1, the correct-term
    weight from n_c and the incorrect-term weight from n_i. The weighted sum is capped at ``clamp`` (zero
    gradient above) and a NaN value becomes 0. Rows where ``mask`` is false count nowhere.
    Computed in float32 (bf16 logits are upcast); returns a float32 scalar.
    """
    if weighting not in WEIGHTINGS:
        raise ValueError(f"unknown weighting {weighting!r}; use one of {WEIGHTINGS}")
    z, m = _prepare(logits, labels, mask)
    u = predictive_entropy(z, eps)
    t = jnp.tanh(u)
    hit = (jnp.argmax(z, axis=-1) == labels) & (m > 0)
    miss = (~hit) & (m > 0)
    n_c = jnp.sum(hit.astype(jnp.float32))
    n_i = jnp.sum(miss.astype(jnp.float32))
    n = n_c + n_i
    # Sum over the group divided by max(count, 1): an empty group is exactly 0, with no gradient.
    l_inc = jnp.sum(jnp.where(miss, -jnp.log(t + eps), 0.0)) / jnp.maximum(n_i, 1.0)
    l_cor = jnp.sum(jnp.where(hit, -jnp.log(1.0 - t + eps), 0.0)) / jnp.maximum(n_c, 1.0)
    if weighting == "none":
        w_cor, w_inc = jnp.float32(1.0), jnp.float32(1.0)
    elif weighting == "balanced":
        # Each term is weighted by the fraction of the *other* group (inverse frequency).
        w_cor = n_i / jnp.maximum(n, 1.0)
        w_inc = n_c / jnp.maximum(n, 1.0)
    else:
        eff = 1.0 - jnp.power(jnp.float32(beta), jnp.stack([n_c, n_i]))
        eff = jnp.where(eff > 0, eff, 1e-6)
        w = (1.0 - beta) / eff
        w = w / jnp.sum(w)
        w_cor, w_inc = w[0], w[1]
    loss = w_cor * l_cor + w_inc * l_inc
    loss = jnp.minimum(loss, clamp)
    return jnp.where(jnp.isnan(loss), 0.0, loss).astype(jnp.float32)


def calibration_weight(
    epoch: int, num_epochs: int, final_weight: float, warmup_ratio: float = 0.1, anneal: bool = True
) -> float:
    """Weight lambda of the calibration loss at a 0-based epoch of a round (METHOD.md §2.4).

    With annealing: a linear ramp 0 -> final/100 over the first int(warmup_ratio * num_epochs) epochs, then
    linear final/100 -> final over the rest (the last epoch stays below ``final_weight``).
    """
    if not anneal:
        return float(final_weight)
    if num_epochs < 1:
        raise ValueError(f"num_epochs must be >= 1, got {num_epochs}")
    if not 0 <= epoch < num_epochs:
        raise ValueError(f"epoch must be in [0, {num_epochs}), got {epoch}")
    if not 0.0 <= warmup_ratio < 1.0:
        raise ValueError(f"warmup_ratio must be in [0, 1), got {warmup_ratio}")
    initial = final_weight / 100.0
    n_warm = int(warmup_ratio * num_epochs)
    if epoch < n_warm:
        return float(initial * epoch / n_warm)
    return float(initial + (final_weight - initial) * (epoch - n_warm) / (num_epochs - n_warm))


def _avu_parts(
    logits: jax.Array, labels: jax.Array, eps: float, mask: jax.Array | None
) -> tuple[jax.Array, jax.Array, jax.Array, jax.Array, jax.Array]:
    """Row mask, accuracy indicator, confidence, entropy and tanh(entropy) for the AvU quantities."""
    z, m = _prepare(logits, labels, mask)
    p = jax.nn.softmax(z, axis=-1)
    conf = jnp.max(p, axis=-1)
    acc = (jnp.argmax(z, axis=-1) == labels).astype(jnp.float32)
    u = -jnp.sum(p * jnp.log(p + eps), axis=-1)
    return m, acc, conf, u, jnp.tanh(u)


def avu_threshold(
    logits: jax.Array,
    labels: jax.Array,
    mask: jax.Array | None = None,
    num_thresholds: int = 21,
    eps: float = 1e-10,
) -> jax.Array:
    """Entropy threshold maximising the (hard-count) AvU metric over an even grid from min to max entropy."""
    m, acc, _, u, _ = _avu_parts(logits, labels, eps, mask)
    u = jax.lax.stop_gradient(u)
    big = jnp.finfo(jnp.float32).max
    u_min = jnp.min(jnp.where(m > 0, u, big))
    u_max = jnp.max(jnp.where(m > 0, u, -big))
    has_rows = jnp.sum(m) > 0
    u_min, u_max = jnp.where(has_rows, u_min, 0.0), jnp.where(has_rows, u_max, 0.0)
    grid = u_min + jnp.linspace(0.0, 1.0, num_thresholds, dtype=jnp.float32) * (u_max - u_min)
    certain = (u[None, :] <= grid[:, None]).astype(jnp.float32)
    # AvU = (n_AC + n_IU) / N: accurate-and-certain plus inaccurate-and-uncertain.
    good = jnp.sum(m * (acc * certain + (1.0 - acc) * (1.0 - certain)), axis=-1)
    return grid[jnp.argmax(good)]


def avuc_loss(
    logits: jax.Array,
    labels: jax.Array,
    threshold: float | jax.Array | None = None,
    eps: float = 1e-10,
    mask: jax.Array | None = None,
) -> jax.Array:
    """Accuracy-versus-uncertainty calibration loss (Krishnan & Tickoo, NeurIPS 2020).

    Soft counts with u = entropy and a threshold on u (certain: u <= threshold):
    n_AC = sum conf (1 - tanh u), n_AU = sum conf tanh u over accurate rows; n_IC = sum (1-conf)(1 - tanh u),
    n_IU = sum (1-conf) tanh u over inaccurate rows. Loss = -log(AvU + eps) with
    AvU = (n_AC + n_IU) / (n_AC + n_AU + n_IC + n_IU + eps), i.e. log(1 + (n_AU + n_IC)/(n_AC + n_IU)).
    ``threshold=None`` uses :func:`avu_threshold` of the batch (no gradient through the threshold).
    Computed in float32; returns a float32 scalar.
    """
    m, acc, conf, u, t = _avu_parts(logits, labels, eps, mask)
    if threshold is None:
        threshold = avu_threshold(logits, labels, mask=mask, eps=eps)
    certain = (u <= jax.lax.stop_gradient(jnp.asarray(threshold, jnp.float32))).astype(jnp.float32)
    acc_m, inacc_m = m * acc, m * (1.0 - acc)
    n_ac = jnp.sum(acc_m * certain * conf * (1.0 - t))
    n_au = jnp.sum(acc_m * (1.0 - certain) * conf * t)
    n_ic = jnp.sum(inacc_m * certain * (1.0 - conf) * (1.0 - t))
    n_iu = jnp.sum(inacc_m * (1.0 - certain) * (1.0 - conf) * t)
    avu = (n_ac + n_iu) / (n_ac + n_au + n_ic + n_iu + eps)
    loss = jnp.where(jnp.sum(m) > 0, -jnp.log(avu + eps), 0.0)  # an all-padding batch contributes 0
    return loss.astype(jnp.float32)


_REGISTRY: dict[str, Callable[..., jax.Array]] = {"cpeal": calibration_loss, "avuc": avuc_loss}


def get(kind: str, **options: object) -> Callable[..., jax.Array]:
    """Calibration loss by name ("cpeal" or "avuc") with options bound: fn(logits, labels, mask=None)."""
    if kind not in _REGISTRY:
        raise ValueError(f"unknown calibration loss {kind!r}; use one of {sorted(_REGISTRY)}")
    fn = _REGISTRY[kind]
    params = inspect.signature(fn).parameters
    bad = [k for k in options if k not in params or k in ("logits", "labels", "mask")]
    if bad:
        allowed = [k for k in params if k not in ("logits", "labels", "mask")]
        raise ValueError(f"calibration loss {kind!r} takes no option(s) {bad}; allowed: {allowed}")
    return functools.partial(fn, **options)
