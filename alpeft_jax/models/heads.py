"""Heads over a backbone: PEAL's linear probe, CLIP's zero-shot head, and the learning-loss predictor."""

from __future__ import annotations

import math

import flax.linen as nn
import jax
import jax.numpy as jnp

Head = dict[str, jax.Array]


def init_linear(rng: jax.Array, dim: int, num_classes: int) -> Head:
    """A linear head initialised as PyTorch's nn.Linear: U(±1/sqrt(dim)) for weight and bias."""
    bound = 1.0 / math.sqrt(dim)
    k1, k2 = jax.random.split(rng)
    return {
        "kernel": jax.random.uniform(k1, (dim, num_classes), jnp.float32, -bound, bound),
        "bias": jax.random.uniform(k2, (num_classes,), jnp.float32, -bound, bound),
    }


def init_from_text(text_embeddings: jax.Array, logit_scale: float | jax.Array) -> Head:
    """A zero-shot head: normalised class text embeddings times the CLIP logit scale (use with normalize=True)."""
    t = text_embeddings / jnp.linalg.norm(text_embeddings, axis=-1, keepdims=True)
    return {"kernel": (logit_scale * t.T).astype(jnp.float32), "bias": jnp.zeros((t.shape[0],), jnp.float32)}


def apply(head: Head, features: jax.Array, normalize: bool = False, scale: float = 1.0) -> jax.Array:
    """Logits `f @ kernel + bias` where f is the features, optionally L2-normalised and times `scale`; in f32."""
    f = features.astype(jnp.float32)
    if normalize:
        f = scale * f / jnp.maximum(jnp.linalg.norm(f, axis=-1, keepdims=True), 1e-12)
    return f @ head["kernel"] + head["bias"]


class LossPredictionHead(nn.Module):
    """MLP K -> hidden -> 1 with ReLU and Xavier-uniform weights, predicting the per-example loss."""

    hidden: int = 10

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        """Predicted loss [B] from inputs [B,K]."""
        init = nn.initializers.xavier_uniform()
        x = nn.relu(nn.Dense(self.hidden, kernel_init=init, name="fc1")(x))
        return nn.Dense(1, kernel_init=init, name="fc2")(x)[..., 0]
