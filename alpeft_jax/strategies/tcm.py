"""TCM: a typicality/coverage strategy for the first rounds, then an uncertainty strategy (METHOD.md §3.8).

At tiny budgets a model's uncertainty is uninformative and picks that cover the data (TypiClust, ProbCover) win;
once every class has a few labels, uncertainty (margin) wins (Doucet et al. 2024, "TCM"). `select_tcm` asks the
hand-off rule (`hand_off`) before each pick and then selects exactly what `first` or `then` selects with the same
rng, pool and options. The rule, `switch`:

- `labels` (default): hand off once the labelled set holds at least `switch_per_class` x K labels (K the number of
  classes, from pool["logits"]): a fixed round, known in advance (with K labels per round: round switch_per_class).
- `coverage`: hand off once every predicted class is covered: a pool row is covered when a labelled row lies within
  `radius` of it (squared Euclidean distance on L2-normalised features <= radius^2, ProbCover's balls); the
  coverage of class c is the covered share of the rows the model predicts as c (argmax of pool["logits"]); the rule
  fires when the least-covered class (among classes predicted for at least one row) reaches `coverage`. `radius` 0
  takes ProbCover's purity radius (alpha 0.95, K k-means clusters, a fixed key: the same radius every round).

The rule depends only on the labelled mask and the pool, never on the rng, so the picks are those of one strategy.
Each sub-strategy compiles on its first round; the rule's coverage pass has fixed shapes (a padded labelled list),
so a run compiles `first`, the rule and `then` once each.
"""

from __future__ import annotations

import typing
from collections.abc import Mapping
from functools import partial

import jax
import jax.numpy as jnp
import numpy as np
from absl import logging

from alpeft_jax import schema
from alpeft_jax.strategies import spmd
from alpeft_jax.strategies.base import REGISTRY, check_inputs, labelled_ids, register
from alpeft_jax.strategies.coreset import LABELLED_CHUNK, _labelled_min_sq_dist, unit_norm_factors
from alpeft_jax.strategies.distances import DEFAULT_BLOCK
from alpeft_jax.strategies.probcover import purity_delta

FIRST: tuple[str, ...] = typing.get_args(typing.get_type_hints(schema.Tcm)["first"])
THEN: tuple[str, ...] = typing.get_args(typing.get_type_hints(schema.Tcm)["then"])
SWITCH: tuple[str, ...] = typing.get_args(typing.get_type_hints(schema.Tcm)["switch"])


@partial(jax.jit, static_argnames=("k", "block"))
def _class_coverage(
    x: jax.Array, pred: jax.Array, lab_ids: jax.Array, n_lab: jax.Array, r2: jax.Array, k: int, block: int
) -> tuple[jax.Array, jax.Array]:
    """Per predicted class: rows within sqrt(r2) of a labelled row, and rows (x L2-normalised inside)."""
    r, sqn = unit_norm_factors(x)
    md = _labelled_min_sq_dist(x, r, sqn, lab_ids, n_lab, min(block, LABELLED_CHUNK), block, None)
    covered = jnp.bincount(pred, weights=(md <= r2).astype(jnp.float32), length=k)
    return covered, jnp.bincount(pred, length=k).astype(jnp.float32)


def class_coverage(features: np.ndarray, logits: np.ndarray, labeled: np.ndarray, radius: float) -> np.ndarray:
    """Covered share of each predicted class (NaN for classes no row is predicted as); see the module docstring."""
    x = jnp.asarray(spmd.to_host(features), jnp.float32)
    pred = spmd.to_host(logits).argmax(-1).astype(np.int32)
    k = int(np.shape(logits)[-1])
    lab_ids, n_lab = labelled_ids(np.asarray(labeled))
    covered, total = _class_coverage(x, jnp.asarray(pred), lab_ids, n_lab, np.float32(radius) ** 2, k, DEFAULT_BLOCK)
    covered, total = np.asarray(covered, np.float64), np.asarray(total, np.float64)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(total > 0, covered / total, np.nan)


def purity_radius(features: np.ndarray, k: int) -> float:
    """ProbCover's purity radius of the L2-normalised features (alpha 0.95, k clusters, key 0)."""
    x = jnp.asarray(spmd.to_host(features), jnp.float32)
    x = x / jnp.maximum(jnp.linalg.norm(x, axis=-1, keepdims=True), 1e-12)
    return float(purity_delta(jax.random.key(0), x, k))


def hand_off(
    pool: Mapping[str, np.ndarray],
    labeled: np.ndarray,
    switch: str = schema.default("al.tcm.switch"),
    switch_per_class: int = schema.default("al.tcm.switch_per_class"),
    coverage: float = schema.default("al.tcm.coverage"),
    radius: float = schema.default("al.tcm.radius"),
) -> tuple[bool, float]:
    """Whether TCM hands off to `then` now, and the rule's signal (labels per class, or the least class coverage)."""
    if switch not in SWITCH:
        raise ValueError(f"tcm switch={switch!r} is not one of {', '.join(SWITCH)}")
    labeled = np.asarray(labeled, bool)
    k = int(np.shape(pool["logits"])[-1])
    if switch == "labels":
        per_class = float(labeled.sum()) / k
        return bool(labeled.sum() >= int(switch_per_class) * k), per_class
    if not 0.0 < coverage <= 1.0:
        raise ValueError(f"tcm coverage={coverage} must lie in (0, 1]")
    if radius < 0:
        raise ValueError(f"tcm radius={radius} must not be negative")
    if not labeled.any():
        return False, 0.0
    r = float(radius) if radius > 0 else purity_radius(pool["features"], k)
    least = float(np.nanmin(class_coverage(pool["features"], pool["logits"], labeled, r)))
    return bool(least >= coverage), least


@register("tcm", requires=("features", "logits"))
def select_tcm(
    rng: object,
    pool: Mapping[str, np.ndarray],
    labeled: np.ndarray,
    budget: int,
    first: str = schema.default("al.tcm.first"),
    then: str = schema.default("al.tcm.then"),
    switch: str = schema.default("al.tcm.switch"),
    switch_per_class: int = schema.default("al.tcm.switch_per_class"),
    coverage: float = schema.default("al.tcm.coverage"),
    radius: float = schema.default("al.tcm.radius"),
    **options: object,
) -> np.ndarray:
    """What `first` selects until `hand_off` says so, then what `then` selects (same rng, pool and options)."""
    if first not in FIRST:
        raise ValueError(f"tcm first={first!r} is not one of {', '.join(FIRST)}")
    if then not in THEN:
        raise ValueError(f"tcm then={then!r} is not one of {', '.join(THEN)}")
    labeled, _n = check_inputs(pool, labeled, budget, {"features", "logits"})
    switched, signal = hand_off(pool, labeled, switch, switch_per_class, coverage, radius)
    name = then if switched else first
    logging.info("tcm: %s (%s signal %.3f)", name, switch, signal)
    return REGISTRY[name].select(rng, pool, labeled, budget, **options)


__all__ = ["class_coverage", "hand_off", "purity_radius", "select_tcm"]
