"""Shared plumbing for query strategies: the registry, rng handling and input checks."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from functools import partial

import jax
import jax.numpy as jnp
import numpy as np

from alpeft_jax.schema import StrategyFacts
from alpeft_jax.strategies import spmd

SelectFn = Callable[..., np.ndarray]


@dataclass(frozen=True, kw_only=True)
class Strategy(StrategyFacts):
    """A registered strategy: its name, its select function and its facts (the pool keys it reads, whether it needs
    a model and proposes candidates; see `schema.StrategyFacts`)."""

    name: str
    select: SelectFn


REGISTRY: dict[str, Strategy] = {}


def register(name: str, requires: tuple[str, ...] = (), **facts: bool) -> Callable[[SelectFn], SelectFn]:
    """Decorator adding a select function to the registry under `name`, with its facts (`schema.StrategyFacts`:
    needs_model, candidates; both True unless said).

    Write the facts as literals: preflight reads them from the decorator's source without importing JAX.
    """

    def deco(fn: SelectFn) -> SelectFn:
        if name in REGISTRY:
            raise ValueError(f"strategy {name!r} registered twice; pick a unique name")
        REGISTRY[name] = Strategy(name=name, select=fn, requires=frozenset(requires), **facts)
        return fn

    return deco


def as_key(rng: object) -> jax.Array:
    """A JAX PRNG key from an int seed or an existing key."""
    if isinstance(rng, int | np.integer):
        return jax.random.key(int(rng))
    if isinstance(rng, jax.Array | np.ndarray):
        if jnp.issubdtype(rng.dtype, jax.dtypes.prng_key):
            return jnp.asarray(rng)
        if rng.shape == (2,) and rng.dtype == np.uint32:
            return jax.random.wrap_key_data(jnp.asarray(rng))
    raise TypeError(f"rng must be an int seed or a JAX PRNG key, got {type(rng).__name__}")


def numpy_rng(rng: object) -> np.random.Generator:
    """A NumPy Generator seeded deterministically from an int seed or a JAX key."""
    seed = jax.random.randint(as_key(rng), (4,), 0, np.iinfo(np.int32).max)
    return np.random.default_rng(np.asarray(seed, dtype=np.uint64))


def check_inputs(
    pool: Mapping[str, np.ndarray], labeled: np.ndarray, budget: int, requires: frozenset[str] | set[str]
) -> tuple[np.ndarray, int]:
    """Validate pool/labeled/budget; return the labeled mask as bool and the pool size."""
    missing = sorted(set(requires) - set(pool))
    if missing:
        raise KeyError(f"pool lacks {missing}; compute them before selecting (see strategies.requires)")
    labeled = np.asarray(labeled)
    if labeled.dtype != bool or labeled.ndim != 1:
        raise ValueError(f"labeled must be a 1-D bool mask, got dtype {labeled.dtype} shape {labeled.shape}")
    n = labeled.shape[0]
    for k in requires:
        arr = pool[k]
        axis = 1 if k == "mc_logits" else 0
        if np.shape(arr)[axis] != n:
            raise ValueError(f"pool[{k!r}] has {np.shape(arr)[axis]} examples but labeled has {n}")
    if not isinstance(budget, int | np.integer) or budget < 0:
        raise ValueError(f"budget must be a non-negative int, got {budget!r}")
    n_unl = int(n - labeled.sum())
    if budget > n_unl:
        raise ValueError(f"budget {budget} exceeds the {n_unl} unlabelled examples; lower the budget")
    return labeled, n


def labelled_ids(labeled: np.ndarray) -> tuple[np.ndarray, np.int32]:
    """The labelled indices in ascending order, padded with 0 to the pool size (int32 [N]), and their count."""
    ids = np.flatnonzero(labeled)
    out = np.zeros(labeled.shape[0], np.int32)
    out[: ids.size] = ids
    return out, np.int32(ids.size)


def l2_normalize(x: jax.Array, eps: float = 1e-12) -> jax.Array:
    """Rows of x scaled to unit L2 norm."""
    x = jnp.asarray(x, jnp.float32)
    return x / jnp.maximum(jnp.linalg.norm(x, axis=-1, keepdims=True), eps)


def masked_scores(scores: jax.Array, labeled: jax.Array) -> jax.Array:
    """Scores as finite float32 (NaN lowest) with -inf at labelled examples, ready for a top-k."""
    scores = jnp.asarray(scores, jnp.float32)
    lo = jnp.finfo(jnp.float32).min
    scores = jnp.clip(jnp.where(jnp.isnan(scores), lo, scores), lo, jnp.finfo(jnp.float32).max)
    return jnp.where(labeled, -jnp.inf, scores)


@partial(jax.jit, static_argnames=("budget",))
def _top_masked(scores: jax.Array, labeled: jax.Array, budget: int) -> jax.Array:
    return jax.lax.top_k(masked_scores(scores, labeled), budget)[1]


def top_unlabeled(scores: jax.Array, labeled: np.ndarray, budget: int) -> np.ndarray:
    """Indices of the `budget` highest scores among unlabelled examples, best first."""
    if budget == 0:
        return np.zeros((0,), np.int64)
    return np.asarray(_top_masked(scores, jnp.asarray(labeled), int(budget)), np.int64)


@partial(jax.jit, static_argnames=("budget", "mesh"))
def top_unlabeled_on_mesh(scores: jax.Array, labeled: jax.Array, budget: int, mesh: spmd.Mesh) -> jax.Array:
    """`top_unlabeled` for scores [N] and mask sharded over `mesh`: a top-k per shard, then one over their union."""
    local = lambda s, lab, axis: spmd.top_k(masked_scores(s, lab), budget, axis)
    return spmd.spmd(local, mesh, (spmd.ROWS, spmd.ROWS), spmd.P())(scores, labeled)


@partial(jax.jit, static_argnames=("k",))
def _bad_label_count(labels: jax.Array, labeled: jax.Array, k: int) -> jax.Array:
    return jnp.sum(labeled & ((labels < 0) | (labels >= k)))


def check_labels(labels: np.ndarray | jax.Array, labeled: np.ndarray | jax.Array, k: int, what: str) -> None:
    """Raise unless every labelled example's pool label lies in [0, k)."""
    if isinstance(labels, jax.Array):
        bad = int(_bad_label_count(labels, labeled, k))
    else:
        y = np.asarray(labels)[np.asarray(labeled)]
        bad = int(np.sum((y < 0) | (y >= k)))
    if bad:
        raise ValueError(
            f"{bad} labelled examples have labels outside [0, {k}) for {what}; fill pool['labels'] "
            "for every labelled example"
        )
