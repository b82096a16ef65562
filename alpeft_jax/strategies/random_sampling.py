"""Uniform random sampling over the unlabelled pool (METHOD 3.5 `random`)."""

from __future__ import annotations

from collections.abc import Mapping
from functools import partial

import jax
import jax.numpy as jnp
import numpy as np

from alpeft_jax.strategies.base import as_key, check_inputs, register

_U32MAX = np.iinfo(np.uint32).max


def _shuffle_rounds(n: int) -> int:
    """Sort rounds of `jax.random.permutation` for n elements (its static rule, evaluated the same way)."""
    return int(np.ceil(3 * np.log(max(1, n)) / np.log(_U32MAX)))


def _round_thresholds(n_max: int) -> tuple[int, ...]:
    """For r = 1, 2, ...: the smallest n in [1, n_max] needing at least r rounds (the rule is monotone in n)."""
    out = []
    for r in range(1, _shuffle_rounds(n_max) + 1):
        lo, hi = 1, n_max
        while lo < hi:
            mid = (lo + hi) // 2
            lo, hi = (mid + 1, hi) if _shuffle_rounds(mid) < r else (lo, mid)
        out.append(lo)
    return tuple(out)


@partial(jax.jit, static_argnames=("budget",))
def _permuted_unlabeled(key: jax.Array, labeled: jax.Array, budget: int) -> jax.Array:
    """The first `budget` of `permutation(key, n_unl)` applied to the unlabelled indices, at fixed shapes.

    `jax.random.permutation(key, n)` sorts arange(n) by fresh 32-bit keys in a few stable rounds. Here the
    unlabelled indices fill the first n_unl of N slots and the rest sort last; the round keys are the
    first n_unl of N random words, the same words (counter-based PRNG) as for an array of n_unl, and
    rounds past the n_unl rule leave the order as it is. So only the mask is data; nothing is traced again.
    """
    n = labeled.shape[0]
    n_unl = jnp.sum(~labeled, dtype=jnp.int32)
    (unl,) = jnp.nonzero(~labeled, size=n, fill_value=n)
    tail = (jnp.arange(n) >= n_unl).astype(jnp.uint32)
    rounds = sum((n_unl >= t).astype(jnp.int32) for t in _round_thresholds(n))
    for r in range(_shuffle_rounds(n)):
        key, sub = jax.random.split(key)
        bits = jax.random.bits(sub, (n,), jnp.uint32)
        _, _, shuffled = jax.lax.sort((tail, bits, unl), num_keys=2, is_stable=True)
        unl = jnp.where(r < rounds, shuffled, unl)
    return unl[:budget]


@register("random", needs_model=False, candidates=False)
def select_random(
    rng: object, pool: Mapping[str, np.ndarray], labeled: np.ndarray, budget: int, **_: object
) -> np.ndarray:
    """`budget` unlabelled examples drawn uniformly without replacement.

    Randomness: the first `budget` of unl[jax.random.permutation(key, n_unl)], unl the unlabelled indices
    in ascending order (computed at the pool's fixed size, see `_permuted_unlabeled`).
    """
    labeled, _n = check_inputs(pool, labeled, budget, set())
    if budget == 0:
        return np.zeros((0,), np.int64)
    return np.asarray(_permuted_unlabeled(as_key(rng), jnp.asarray(labeled), int(budget)), np.int64)
