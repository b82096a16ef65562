"""Uniform random sampling over the unlabelled pool (METHOD 3.5 `random`)."""

from __future__ import annotations

from collections.abc import Mapping

import jax
import numpy as np

from alpeft_jax.strategies.base import as_key, check_inputs, register


@register("random")
def select_random(rng: object, pool: Mapping[str, np.ndarray], labeled: np.ndarray, budget: int,
                  **_: object) -> np.ndarray:
    """`budget` unlabelled examples drawn uniformly without replacement."""
    labeled, _n = check_inputs(pool, labeled, budget, set())
    unl = np.flatnonzero(~labeled)
    perm = np.asarray(jax.random.permutation(as_key(rng), unl.shape[0]))
    return unl[perm[:budget]].astype(np.int64)
