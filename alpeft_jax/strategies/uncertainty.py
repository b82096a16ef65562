"""Uncertainty sampling from softmax probabilities: entropy, margin, least confidence, and BALD.

All return the most uncertain unlabelled examples first. The authors' lists are ascending in entropy (the
most uncertain last) and ascending in margin / max-probability (the most uncertain first); the sets of the
top n_cand coincide with ours, only entropy's order is reversed (see `pcb.select_with_pcb`).
"""

from __future__ import annotations

from collections.abc import Mapping
from functools import partial

import jax
import jax.numpy as jnp
import numpy as np

from alpeft_jax.strategies.base import check_inputs, register, top_unlabeled
from alpeft_jax.strategies.distances import map_row_blocks


@partial(jax.jit, static_argnames=("eps",))
def _entropy(logits: jax.Array, eps: float) -> jax.Array:
    p = jax.nn.softmax(logits.astype(jnp.float32), axis=-1)
    if eps > 0:
        return -jnp.sum(p * jnp.log(p + eps), axis=-1)
    return -jnp.sum(jnp.where(p > 0, p * jnp.log(jnp.where(p > 0, p, 1.0)), 0.0), axis=-1)


@jax.jit
def _neg_margin(logits: jax.Array) -> jax.Array:
    p = jax.nn.softmax(logits.astype(jnp.float32), axis=-1)
    first = jnp.argmax(p, axis=-1)
    p1 = jnp.take_along_axis(p, first[:, None], axis=-1)[:, 0]
    p2 = jnp.max(jnp.where(jnp.arange(p.shape[-1])[None, :] == first[:, None], -jnp.inf, p), axis=-1)
    return -(p1 - p2)


@jax.jit
def _neg_max_prob(logits: jax.Array) -> jax.Array:
    return -jnp.max(jax.nn.softmax(logits.astype(jnp.float32), axis=-1), axis=-1)


def entropy_scores(logits: jax.Array, eps: float = 1e-6, block: int = 65536) -> jax.Array:
    """Predictive entropy -sum p log(p + eps) of softmax(logits), per example."""
    return map_row_blocks(lambda lb: _entropy(lb, eps), (jnp.asarray(logits),), block)


def margin_scores(logits: jax.Array, block: int = 65536) -> jax.Array:
    """Negative gap between the two largest softmax probabilities (higher = more uncertain)."""
    if np.shape(logits)[-1] < 2:
        raise ValueError("margin needs at least 2 classes in pool['logits']")
    return map_row_blocks(_neg_margin, (jnp.asarray(logits),), block)


def least_confidence_scores(logits: jax.Array, block: int = 65536) -> jax.Array:
    """Negative maximum softmax probability (higher = more uncertain)."""
    return map_row_blocks(_neg_max_prob, (jnp.asarray(logits),), block)


@register("entropy", requires=("logits",))
def select_entropy(rng: object, pool: Mapping[str, np.ndarray], labeled: np.ndarray, budget: int,
                   eps: float = 1e-6, **_: object) -> np.ndarray:
    """Highest predictive entropy first (METHOD 3.5 `entropy`, eps 1e-6 inside the log)."""
    labeled, _n = check_inputs(pool, labeled, budget, {"logits"})
    return top_unlabeled(entropy_scores(pool["logits"], eps), labeled, budget)


@register("margin", requires=("logits",))
def select_margin(rng: object, pool: Mapping[str, np.ndarray], labeled: np.ndarray, budget: int,
                  **_: object) -> np.ndarray:
    """Smallest top-1 minus top-2 probability first (METHOD 3.5 `margin`)."""
    labeled, _n = check_inputs(pool, labeled, budget, {"logits"})
    return top_unlabeled(margin_scores(pool["logits"]), labeled, budget)


@register("least_confidence", requires=("logits",))
def select_least_confidence(rng: object, pool: Mapping[str, np.ndarray], labeled: np.ndarray, budget: int,
                            **_: object) -> np.ndarray:
    """Lowest maximum probability first (METHOD 3.5 `softmax`)."""
    labeled, _n = check_inputs(pool, labeled, budget, {"logits"})
    return top_unlabeled(least_confidence_scores(pool["logits"]), labeled, budget)


@jax.jit
def _bald(mc_logits: jax.Array) -> jax.Array:
    # mc_logits: [N_block, T, K]
    logp = jax.nn.log_softmax(mc_logits.astype(jnp.float32), axis=-1)
    p = jnp.exp(logp)
    mean_p = p.mean(axis=1)
    h_mean = -jnp.sum(jnp.where(mean_p > 0, mean_p * jnp.log(jnp.where(mean_p > 0, mean_p, 1.0)), 0.0), -1)
    mean_h = -jnp.sum(p * logp, axis=-1).mean(axis=1)
    return h_mean - mean_h


def bald_scores(mc_logits: jax.Array, block: int = 16384) -> jax.Array:
    """Mutual information H[mean_t p_t] - mean_t H[p_t] from MC-dropout logits [T,N,K]."""
    mc = jnp.asarray(mc_logits)
    if mc.ndim != 3:
        raise ValueError(f"pool['mc_logits'] must be [T,N,K], got shape {mc.shape}")
    return map_row_blocks(_bald, (jnp.swapaxes(mc, 0, 1),), block)


@register("bald", requires=("mc_logits",))
def select_bald(rng: object, pool: Mapping[str, np.ndarray], labeled: np.ndarray, budget: int,
                **_: object) -> np.ndarray:
    """Highest mutual information between prediction and MC-dropout weights first (Houlsby et al. 2011)."""
    labeled, _n = check_inputs(pool, labeled, budget, {"mc_logits"})
    return top_unlabeled(bald_scores(pool["mc_logits"]), labeled, budget)


__all__ = ["entropy_scores", "margin_scores", "least_confidence_scores", "bald_scores"]
