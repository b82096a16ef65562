"""PCB class-balanced filter (Bang et al. 2024, METHOD 3.4) and its composition with a query strategy."""

from __future__ import annotations

from collections.abc import Mapping
from functools import partial

import jax
import jax.numpy as jnp
import numpy as np

from alpeft_jax.strategies import spmd
from alpeft_jax.strategies.base import REGISTRY, as_key, check_inputs, check_labels, numpy_rng


def candidate_count(initial_pool_size: int, gamma: float = 0.1) -> int:
    """n_cand = int(gamma * initial pool size), fixed once per run (METHOD 3.3)."""
    return int(gamma * initial_pool_size)


def pcb_filter(
    rng: int | jax.Array | np.random.Generator,
    candidates: np.ndarray,
    pseudo_labels: np.ndarray,
    labeled_counts: np.ndarray,
    budget: int,
) -> np.ndarray:
    """Pick `budget` of `candidates`, each time from the pseudo-class with the fewest labels so far.

    Loop: c = argmin(stats); shuffle the candidates predicted c and take the first unchosen one, then
    stats[c] += 1. If no candidate is predicted c, or all of them are chosen, take a uniformly random
    unchosen candidate (drawn by rejection, as the reference) without touching stats.
    Expected O(n log n) draws when budget is close to the number of candidates.
    Randomness (a NumPy Generator from rng): shuffle = gen.permutation(n_c); random = gen.integers(n_cand).
    """
    candidates = np.asarray(candidates, np.int64)
    pseudo_labels = np.asarray(pseudo_labels, np.int64)
    if candidates.shape != pseudo_labels.shape:
        raise ValueError(f"candidates {candidates.shape} and pseudo_labels {pseudo_labels.shape} differ in shape")
    if budget > candidates.size:
        raise ValueError(f"PCB budget {budget} exceeds the {candidates.size} candidates; pass more candidates")
    gen = rng if isinstance(rng, np.random.Generator) else numpy_rng(rng)
    stats = np.asarray(labeled_counts, np.int64).copy()
    if stats.ndim != 1 or stats.size == 0:
        raise ValueError("labeled_counts must be a non-empty 1-D per-class count array")
    if pseudo_labels.size and (pseudo_labels.min() < 0 or pseudo_labels.max() >= stats.size):
        raise ValueError(f"pseudo_labels must lie in [0, {stats.size}) to match labeled_counts")
    members = [np.flatnonzero(pseudo_labels == c) for c in range(stats.size)]
    chosen = np.zeros(candidates.size, bool)
    out: list[int] = []
    while len(out) < budget:
        c = int(np.argmin(stats))
        pick = -1
        if members[c].size:
            for i in members[c][gen.permutation(members[c].size)]:
                if not chosen[i]:
                    pick = int(i)
                    stats[c] += 1
                    break
        if pick < 0:
            # One uniform draw; a draw that hits a chosen candidate repeats the whole step, as the reference.
            j = int(gen.integers(candidates.size))
            if chosen[j]:
                continue
            pick = j
        chosen[pick] = True
        out.append(pick)
    return candidates[np.asarray(out, np.int64)]


@partial(jax.jit, static_argnames=("k", "mesh"))
def _pcb_inputs_on_mesh(
    logits: jax.Array, labels: jax.Array, labeled: jax.Array, cand: jax.Array, k: int, mesh: spmd.Mesh
) -> tuple[jax.Array, jax.Array]:
    def local(lg: jax.Array, y: jax.Array, lab: jax.Array, c: jax.Array, axis: str | None) -> tuple:
        counts = spmd.gsum(jnp.bincount(jnp.where(lab, y, k), length=k + 1)[:k], axis)
        return jnp.argmax(spmd.take(lg, c, axis), axis=-1), counts

    return spmd.spmd(local, mesh, (spmd.ROWS,) * 3 + (spmd.P(),), spmd.P())(logits, labels, labeled, cand)


def _pseudo_labels_and_counts(
    pool: Mapping[str, np.ndarray], labeled: np.ndarray, cand: np.ndarray, k: int
) -> tuple[np.ndarray, np.ndarray]:
    """argmax of the candidates' logits and the per-class labelled counts; sharded pools stay on their mesh."""
    arrays, mesh = spmd.placed(pool, {"logits", "labels"}, True, True)
    if mesh is None:
        y = spmd.to_host(arrays["labels"])[labeled]
        return spmd.to_host(arrays["logits"])[cand].argmax(-1), np.bincount(y, minlength=k)
    pseudo, counts = _pcb_inputs_on_mesh(
        arrays["logits"],
        arrays["labels"],
        spmd.put(labeled, mesh),
        spmd.put(cand.astype(np.int32), mesh, spmd.P()),
        k,
        mesh,
    )
    return np.asarray(pseudo, np.int64), np.asarray(counts, np.int64)


def select_with_pcb(
    strategy: str,
    rng: int | jax.Array,
    pool: Mapping[str, np.ndarray],
    labeled: np.ndarray,
    budget: int,
    gamma_count: int,
    *,
    use_pcb: bool = True,
    authors_quirk: bool = False,
    excluded: np.ndarray | None = None,
    **options: object,
) -> np.ndarray:
    """One AL round's query (METHOD 3.3): `strategy` proposes candidates, PCB (or a cut) keeps `budget`.

    gamma_count is n_cand = int(gamma * initial pool size) (`candidate_count`), raised to `budget` if smaller;
    fewer remaining examples means all of them. A strategy registered with `needs_model=False` (`random`) is pure
    random; one with `candidates=False` (`featdist`) proposes `budget` directly (PCB only permutes).
    Without PCB the first `budget` candidates (the most informative) are kept. The reference code keeps
    idx[-budget:], right for its ascending entropy list but the least informative of the candidates for
    margin/least-confidence/learning-loss and the last-chosen centres for BADGE/Coreset;
    `authors_quirk=True` reproduces that (for entropy: the top `budget` in ascending order).

    `excluded`: bool[N], rows the annotator could not label ("can't tell"): never picked. A strategy sees them as
    taken, like the labelled rows (a coverage strategy counts them as queried); one that reads pool['labels']
    (featdist) gets them apart (`excluded=`), and PCB's class counts are the labelled rows' only.
    """
    if strategy not in REGISTRY:
        raise KeyError(f"unknown strategy {strategy!r}; choose one of {sorted(REGISTRY)}")
    labeled = np.asarray(labeled)
    taken = labeled if excluded is None else labeled | np.asarray(excluded, bool)
    taken, _n = check_inputs(pool, taken, budget, REGISTRY[strategy].requires)
    k_sel, k_pcb = jax.random.split(as_key(rng))
    select = REGISTRY[strategy].select
    if not REGISTRY[strategy].needs_model:  # pure random: no pseudo-labels for PCB
        return select(k_sel, pool, taken, budget, **options)
    n_unl = int((~taken).sum())
    n_cand = min(max(int(gamma_count), budget), n_unl) if REGISTRY[strategy].candidates else budget
    if excluded is not None and "labels" in REGISTRY[strategy].requires:
        cand = np.asarray(select(k_sel, pool, labeled, n_cand, excluded=taken & ~labeled, **options), np.int64)
    else:
        cand = np.asarray(select(k_sel, pool, taken, n_cand, **options), np.int64)
    if use_pcb:
        if "logits" not in pool or "labels" not in pool:
            raise KeyError("PCB needs pool['logits'] (pseudo-labels) and pool['labels'] (labelled counts)")
        k = np.shape(pool["logits"])[-1]
        check_labels(pool["labels"], labeled, k, "PCB")
        pseudo, counts = _pseudo_labels_and_counts(pool, labeled, cand, k)
        return pcb_filter(k_pcb, cand, pseudo, counts, budget)
    if authors_quirk:
        # Reference bug (METHOD 3.6): `--disable_pcb` keeps idx[-K:] for every strategy, which is only right
        # for entropy, whose list is ascending; for the others it keeps the weakest of the candidates.
        return cand[:budget][::-1].copy() if strategy == "entropy" else cand[-budget:]
    return cand[:budget]
