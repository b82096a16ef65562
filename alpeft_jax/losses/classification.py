"""Classification losses over fixed-shape padded batches."""

from __future__ import annotations

import jax
import jax.numpy as jnp


def cross_entropy(
    logits: jax.Array, labels: jax.Array, mask: jax.Array | None = None, label_smoothing: float = 0.0
) -> jax.Array:
    """Mean softmax cross-entropy over the rows where ``mask`` is true, as torch's F.cross_entropy.

    With ``label_smoothing`` e the target is (1 - e) one_hot + e / K. Computed in float32; an all-padding
    batch gives 0.
    """
    logits = jnp.asarray(logits)
    labels = jnp.asarray(labels)
    if logits.ndim != 2 or labels.shape != logits.shape[:1]:
        raise ValueError(f"expected logits [batch, classes] and labels [batch], got {logits.shape} and {labels.shape}")
    if not 0.0 <= label_smoothing <= 1.0:
        raise ValueError(f"label_smoothing must be in [0, 1], got {label_smoothing}")
    m = jnp.ones(logits.shape[:1], jnp.float32) if mask is None else jnp.asarray(mask).astype(jnp.float32)
    if m.shape != logits.shape[:1]:
        raise ValueError(f"mask must be [batch]={logits.shape[:1]}, got shape {m.shape}")
    z = jnp.where(m[:, None] > 0, logits.astype(jnp.float32), 0.0)
    logp = jax.nn.log_softmax(z, axis=-1)
    # one_hot of an out-of-range padding label (e.g. -1) is all zeros, so padding rows stay finite.
    nll = -jnp.sum(jax.nn.one_hot(labels, z.shape[-1], dtype=jnp.float32) * logp, axis=-1)
    per_row = nll
    if label_smoothing > 0.0:
        per_row = (1.0 - label_smoothing) * nll - label_smoothing * jnp.mean(logp, axis=-1)
    return jnp.sum(jnp.where(m > 0, m * per_row, 0.0)) / jnp.maximum(jnp.sum(m), 1.0)
