"""Uncertainty sampling from softmax probabilities: entropy, margin, least confidence, and BALD.

All return the most uncertain unlabelled examples first. The authors' lists are ascending in entropy (the
most uncertain last) and ascending in margin / max-probability (the most uncertain first); the sets of the
top n_cand coincide with ours, only entropy's order is reversed (see `pcb.select_with_pcb`).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from functools import partial
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from alpeft_jax.strategies import spmd
from alpeft_jax.strategies.base import check_inputs, masked_scores, register, top_unlabeled

# Rows per block: about 2M logits (8 MB f32), so a block and its temporaries stay in cache and host pools
# are copied to the device piecewise instead of as one large fresh buffer.
_BLOCK_ELEMS = 1 << 21


def block_rows(width: int, lo: int = 1024, hi: int = 65536) -> int:
    """Power-of-two row count giving blocks of about 2M elements for rows of `width` values."""
    rows = 1 << max(0, (_BLOCK_ELEMS // max(1, width)).bit_length() - 1)
    return int(min(hi, max(lo, rows)))


def map_rows(fn: Callable[[jax.Array], jax.Array], x: np.ndarray | jax.Array, rows: int, axis: int = 0) -> jax.Array:
    """Per-row scores fn(block) over fixed-size blocks of x along `axis` (the last block zero-padded)."""
    n = x.shape[axis]
    rows = max(1, min(rows, n))
    outs = []
    for s in range(0, n, rows):
        blk = x[(slice(None),) * axis + (slice(s, s + rows),)]
        if blk.shape[axis] < rows:
            pad = [(0, 0)] * blk.ndim
            pad[axis] = (0, rows - blk.shape[axis])
            blk = np.pad(np.asarray(blk), pad) if isinstance(blk, np.ndarray) else jnp.pad(blk, pad)
        outs.append(fn(jnp.asarray(blk)))
    return outs[0][:n] if len(outs) == 1 else jnp.concatenate(outs)[:n]


@partial(jax.jit, static_argnames=("eps",))
def _entropy(logits: jax.Array, eps: float) -> jax.Array:
    # p = e / s with e = exp(l - max); log(p + eps) = log(e + eps * s) - log(s): one exp and one log per logit.
    z = logits.astype(jnp.float32)
    z = z - jnp.max(z, axis=-1, keepdims=True)
    e = jnp.exp(z)
    s = jnp.sum(e, axis=-1)
    if eps > 0:
        return jnp.log(s) - jnp.sum(e * jnp.log(e + eps * s[:, None]), axis=-1) / s
    # eps = 0: log p = z - log s exactly, with 0 log 0 = 0 (e underflows to 0 exactly where p does).
    return jnp.log(s) - jnp.sum(jnp.where(e > 0, e * z, 0.0), axis=-1) / s


@jax.jit
def _neg_margin(logits: jax.Array) -> jax.Array:
    # p1 - p2 = (1 - exp(l2 - l1)) / s with l1 >= l2 the two largest logits (a tied maximum gives 0).
    z = logits.astype(jnp.float32)
    m1 = jnp.max(z, axis=-1)
    top = z == m1[:, None]
    m2 = jnp.where(jnp.sum(top, axis=-1) > 1, m1, jnp.max(jnp.where(top, -jnp.inf, z), axis=-1))
    s = jnp.sum(jnp.exp(z - m1[:, None]), axis=-1)
    return -(1.0 - jnp.exp(m2 - m1)) / s


@jax.jit
def _neg_max_prob(logits: jax.Array) -> jax.Array:
    z = logits.astype(jnp.float32)
    return -1.0 / jnp.sum(jnp.exp(z - jnp.max(z, axis=-1, keepdims=True)), axis=-1)


def _check_logits(logits: np.ndarray | jax.Array) -> np.ndarray | jax.Array:
    if not isinstance(logits, jax.Array):
        logits = np.asarray(logits)
    if logits.ndim != 2:
        raise ValueError(f"pool['logits'] must be [N,K], got shape {logits.shape}")
    return logits


def entropy_scores(logits: np.ndarray | jax.Array, eps: float = 1e-6, block: int | None = None) -> jax.Array:
    """Predictive entropy -sum p log(p + eps) of softmax(logits), per example."""
    logits = _check_logits(logits)
    return map_rows(lambda lb: _entropy(lb, eps), logits, block or block_rows(logits.shape[-1]))


def margin_scores(logits: np.ndarray | jax.Array, block: int | None = None) -> jax.Array:
    """Negative gap between the two largest softmax probabilities (higher = more uncertain)."""
    logits = _check_logits(logits)
    if logits.shape[-1] < 2:
        raise ValueError("margin needs at least 2 classes in pool['logits']")
    return map_rows(_neg_margin, logits, block or block_rows(logits.shape[-1]))


def least_confidence_scores(logits: np.ndarray | jax.Array, block: int | None = None) -> jax.Array:
    """Negative maximum softmax probability (higher = more uncertain)."""
    logits = _check_logits(logits)
    return map_rows(_neg_max_prob, logits, block or block_rows(logits.shape[-1]))


@jax.jit
def _bald(mc_logits: jax.Array) -> jax.Array:
    # mc_logits: [T, N_block, K]
    logp = jax.nn.log_softmax(mc_logits.astype(jnp.float32), axis=-1)
    p = jnp.exp(logp)
    mean_p = p.mean(axis=0)
    h_mean = -jnp.sum(jnp.where(mean_p > 0, mean_p * jnp.log(jnp.where(mean_p > 0, mean_p, 1.0)), 0.0), -1)
    mean_h = -jnp.sum(p * logp, axis=-1).mean(axis=0)
    return h_mean - mean_h


def bald_scores(mc_logits: np.ndarray | jax.Array, block: int | None = None) -> jax.Array:
    """Mutual information H[mean_t p_t] - mean_t H[p_t] from MC-dropout logits [T,N,K]."""
    mc = mc_logits if isinstance(mc_logits, jax.Array) else np.asarray(mc_logits)
    if mc.ndim != 3:
        raise ValueError(f"pool['mc_logits'] must be [T,N,K], got shape {mc.shape}")
    return map_rows(_bald, mc, block or block_rows(mc.shape[0] * mc.shape[2]), axis=1)


# A sharded pool is scored on its shards: entropy at N = 1M, K = 10 on 8 fake CPU devices took 0.08 s against
# 0.12 s gathering it first (1.5-3x in two runs; benchmarks/sharded_selection.py); `sharded=False` gathers.
ON_MESH = True


def _select(
    kind: str, pool: Mapping[str, np.ndarray], labeled: np.ndarray, budget: int, sharded: bool | None, eps: float = 0.0
) -> np.ndarray:
    key = "mc_logits" if kind == "bald" else "logits"
    labeled, _n = check_inputs(pool, labeled, budget, {key})
    arrays, mesh = spmd.placed(pool, {key}, sharded, ON_MESH)
    if mesh is None:
        scores = {
            "entropy": lambda a: entropy_scores(a, eps),
            "margin": margin_scores,
            "least_confidence": least_confidence_scores,
            "bald": bald_scores,
        }[kind](arrays[key])
        return top_unlabeled(scores, labeled, budget)
    if budget == 0:
        return np.zeros((0,), np.int64)
    _check_shape(kind, arrays[key])
    out = _select_on_mesh(arrays[key], spmd.put(labeled, mesh), kind=kind, budget=int(budget), eps=eps, mesh=mesh)
    return np.asarray(out, np.int64)


def _check_shape(kind: str, arr: jax.Array) -> None:
    if kind == "bald":
        if arr.ndim != 3:
            raise ValueError(f"pool['mc_logits'] must be [T,N,K], got shape {arr.shape}")
        return
    _check_logits(arr)
    if kind == "margin" and arr.shape[-1] < 2:
        raise ValueError("margin needs at least 2 classes in pool['logits']")


@partial(jax.jit, static_argnames=("kind", "budget", "eps", "mesh"))
def _select_on_mesh(
    arr: jax.Array, labeled: jax.Array, kind: str, budget: int, eps: float, mesh: spmd.Mesh
) -> jax.Array:
    """The top `budget` unlabelled scores of `kind`, computed on each shard's rows (no rows move)."""

    def local(a: jax.Array, lab: jax.Array, axis: str | None) -> jax.Array:
        score: dict[str, Callable[[jax.Array], jax.Array]] = {
            "entropy": lambda z: _entropy(z, eps),
            "margin": _neg_margin,
            "least_confidence": _neg_max_prob,
            "bald": _bald,
        }
        s = score[kind](a)
        return spmd.top_k(masked_scores(s, lab), budget, axis)

    spec = spmd.row_spec("mc_logits" if kind == "bald" else "logits")
    return spmd.spmd(local, mesh, (spec, spmd.ROWS), spmd.P())(arr, labeled)


@register("entropy", requires=("logits",))
def select_entropy(
    rng: object,
    pool: Mapping[str, np.ndarray],
    labeled: np.ndarray,
    budget: int,
    eps: float = 1e-6,
    sharded: bool | None = None,
    **_: object,
) -> np.ndarray:
    """Highest predictive entropy first (METHOD 3.5 `entropy`, eps 1e-6 inside the log)."""
    return _select("entropy", pool, labeled, budget, sharded, eps)


@register("margin", requires=("logits",))
def select_margin(
    rng: object,
    pool: Mapping[str, np.ndarray],
    labeled: np.ndarray,
    budget: int,
    sharded: bool | None = None,
    **_: object,
) -> np.ndarray:
    """Smallest top-1 minus top-2 probability first (METHOD 3.5 `margin`)."""
    return _select("margin", pool, labeled, budget, sharded)


@register("least_confidence", requires=("logits",))
def select_least_confidence(
    rng: object,
    pool: Mapping[str, np.ndarray],
    labeled: np.ndarray,
    budget: int,
    sharded: bool | None = None,
    **_: object,
) -> np.ndarray:
    """Lowest maximum probability first (METHOD 3.5 `softmax`)."""
    return _select("least_confidence", pool, labeled, budget, sharded)


@register("bald", requires=("mc_logits",))
def select_bald(
    rng: object,
    pool: Mapping[str, np.ndarray],
    labeled: np.ndarray,
    budget: int,
    sharded: bool | None = None,
    **_: object,
) -> np.ndarray:
    """Highest mutual information between prediction and MC-dropout weights first (Houlsby et al. 2011)."""
    return _select("bald", pool, labeled, budget, sharded)


__all__ = ["entropy_scores", "margin_scores", "least_confidence_scores", "bald_scores"]


def row_scores(name: str, pool: Mapping[str, np.ndarray | jax.Array], eps: float = 1e-6) -> np.ndarray | None:
    """Per-example scores of a score-ranked strategy (higher is asked first), None for any other strategy."""
    kinds: dict[str, Callable[[Any], jax.Array]] = {
        "entropy": lambda a: entropy_scores(a, eps),
        "margin": margin_scores,
        "least_confidence": least_confidence_scores,
        "bald": bald_scores,
    }
    key = "mc_logits" if name == "bald" else "logits"
    if name not in kinds or key not in pool:
        return None
    return np.asarray(kinds[name](np.asarray(pool[key])), np.float32)
