"""Active-learning query strategies behind one signature, registered by name.

`get(name)` returns `select(rng, pool, labeled, budget, **options) -> int[budget]` (distinct unlabelled
indices in pick order); `requires(name)` lists the pool keys it reads; `facts(name)` says what the driver must
know (needs a model, proposes candidates, needs MC dropout, trains the loss head); `names()` lists the registry.

Pool arrays are host NumPy arrays or global `jax.Array`s sharded on the example axis over a mesh axis "data"
(`spmd`); every process of a multi-host run gets the same ids. On a sharded pool each strategy runs where the
rows are or gathers them to the host first, whichever measured faster (`ON_MESH` in its module;
benchmarks/sharded_selection.py); the option `sharded=True/False` overrides that. Shapes depend only on the pool
size and the budget, never on the labelled mask, so a run compiles each strategy once.
"""

from __future__ import annotations

from alpeft_jax.strategies import (  # noqa: F401  (imports register the strategies)
    badge,
    coreset,
    featdist,
    learning_loss,
    probcover,
    random_sampling,
    tcm,
    typiclust,
    uncertainty,
)
from alpeft_jax.strategies.base import REGISTRY, SelectFn, Strategy
from alpeft_jax.strategies.pcb import candidate_count, pcb_filter, select_with_pcb


def names() -> list[str]:
    """Registered strategy names, sorted."""
    return sorted(REGISTRY)


def get(name: str) -> SelectFn:
    """The select function registered as `name`."""
    if name not in REGISTRY:
        raise KeyError(f"unknown strategy {name!r}; choose one of {names()}")
    return REGISTRY[name].select


def facts(name: str) -> Strategy:
    """The registered strategy `name`: its select function and facts (needs_model, candidates, needs_dropout, ...)."""
    if name not in REGISTRY:
        raise KeyError(f"unknown strategy {name!r}; choose one of {names()}")
    return REGISTRY[name]


def requires(name: str) -> set[str]:
    """Pool keys the strategy `name` reads."""
    if name not in REGISTRY:
        raise KeyError(f"unknown strategy {name!r}; choose one of {names()}")
    return set(REGISTRY[name].requires)


__all__ = ["names", "get", "facts", "requires", "select_with_pcb", "pcb_filter", "candidate_count"]
