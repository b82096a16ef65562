"""PCB against a Python transcription of the authors' loop driven by the same random draws, and properties."""

import jax
import numpy as np
import pytest

from alpeft_jax import strategies
from alpeft_jax.strategies.base import as_key
from alpeft_jax.strategies.pcb import pcb_filter, select_with_pcb


def reference_pcb(candidates, pred, statistics, n_query, shuffle, randint):
    """The METHOD 3.4 loop, in the reference's Python style (list shuffle, randint with retry)."""
    statistics = list(statistics)
    q = []
    while len(q) < n_query:
        min_cls = statistics.index(min(statistics))
        sub = [i for i in range(len(pred)) if pred[i] == min_cls]
        if len(sub) == 0:
            num = randint(0, len(pred) - 1)
            if num not in q:
                q.append(num)
        else:
            shuffle(sub)
            for idx in sub:
                if idx not in q:
                    q.append(idx)
                    statistics[min_cls] += 1
                    break
            else:
                num = randint(0, len(pred) - 1)
                if num not in q:
                    q.append(num)
    return [candidates[i] for i in q]


def shims(gen):
    def shuffle(lst):
        lst[:] = [lst[i] for i in gen.permutation(len(lst))]

    def randint(a, b):
        return a + int(gen.integers(b - a + 1))

    return shuffle, randint


@pytest.mark.parametrize("seed", range(10))
def test_same_picks_as_reference_with_same_draws(seed):
    g = np.random.default_rng(seed)
    k = 6
    n_cand = int(g.integers(8, 40))
    cand = g.choice(1000, n_cand, replace=False)
    # some classes never predicted, skewed labelled counts, budget sometimes = all candidates
    pred = g.choice(k - 2, n_cand, p=[0.5, 0.3, 0.15, 0.05])
    counts = g.integers(0, 4, k)
    if seed % 2:  # every class predicted, class 3 rare and least labelled: its members run out
        pred[:4] = [0, 1, 2, 3]
        pred[4:] = np.where(pred[4:] == 3, 0, pred[4:])
        counts = np.array([3, 3, 3, 0, 9, 9])
    budget = int(g.integers(1, n_cand + 1))
    got = pcb_filter(np.random.default_rng(100 + seed), cand, pred, counts, budget)
    ref = reference_pcb(list(cand), list(pred), list(counts), budget, *shims(np.random.default_rng(100 + seed)))
    np.testing.assert_array_equal(got, ref)


def test_balances_when_possible():
    cand = np.arange(300)
    pred = np.repeat(np.arange(3), 100)
    out = pcb_filter(0, cand, pred, np.array([5, 0, 2]), 30)
    assert len(set(out.tolist())) == 30
    final = np.array([5, 0, 2]) + np.bincount(pred[out], minlength=3)
    assert final.max() - final.min() <= 1


def test_missing_class_falls_back_to_random_without_updating():
    # class 0 has the fewest labels but no candidate is predicted 0: every pick is uniform over candidates.
    cand = np.arange(100)
    pred = np.where(np.arange(100) < 90, 1, 2)
    hits = np.zeros(3)
    for s in range(200):
        out = pcb_filter(s, cand, pred, np.array([0, 5, 5]), 10)
        hits += np.bincount(pred[out], minlength=3)
    frac2 = hits[2] / hits.sum()
    assert 0.06 < frac2 < 0.14  # 10% of candidates are predicted 2; a balanced pick would give ~50%


def test_random_through_pcb_is_pure_random():
    # 10% of the pool is predicted class 1, which has no label yet: PCB would spend the budget on class 1,
    # pure random takes it about 10% of the time
    g = np.random.default_rng(0)
    n = 400
    pred = (g.random(n) < 0.1).astype(np.int64)
    logits = (3.0 * np.eye(2)[pred] + g.normal(size=(n, 2))).astype(np.float32)
    logits[np.arange(n), pred] += 10.0  # the noise never flips the predicted class
    labeled = np.zeros(n, bool)
    labeled[np.flatnonzero(pred == 0)[:30]] = True
    pool = {"logits": logits, "labels": np.where(labeled, pred, -1)}
    picks = np.array([select_with_pcb("random", s, pool, labeled, 20, 100) for s in range(60)])
    assert not labeled[picks].any() and all(len(set(p)) == 20 for p in picks)
    share = pred[~labeled].mean()
    assert abs(pred[picks].mean() - share) < 0.04  # 1,200 picks: SE 0.009
    # exactly the random strategy on the first half of split(key) (PCB's own draws would use the second)
    for s in (0, 1):
        np.testing.assert_array_equal(
            picks[s], strategies.get("random")(jax.random.split(as_key(s))[0], pool, labeled, 20)
        )
    # the same pool through PCB behind an informative strategy does fill up on class 1, so the check can tell
    balanced = select_with_pcb("entropy", 0, pool, labeled, 20, 100)
    assert pred[balanced].mean() >= 0.45


def test_errors():
    with pytest.raises(ValueError, match="exceeds"):
        pcb_filter(0, np.arange(3), np.zeros(3, int), np.zeros(2, int), 4)
    with pytest.raises(ValueError, match="pseudo_labels"):
        pcb_filter(0, np.arange(3), np.array([0, 1, 5]), np.zeros(2, int), 2)


def test_select_with_pcb_quirks(make_pool):
    pool, labeled, _ = make_pool(n=400, k=5, n_labeled=25)
    k = 5
    n_cand = 60
    # PCB picks only among the strategy's top n_cand
    cand = strategies.get("margin")(0, pool, labeled, n_cand)
    out = select_with_pcb("margin", 1, pool, labeled, k, n_cand)
    assert set(out.tolist()) <= set(cand.tolist()) and len(set(out.tolist())) == k
    # featdist proposes K directly, PCB only permutes
    fd = strategies.get("featdist")(0, pool, labeled, k)
    assert sorted(select_with_pcb("featdist", 2, pool, labeled, k, n_cand).tolist()) == sorted(fd.tolist())
    # no PCB: the most informative K; authors' quirk: idx[-K:] of their ordering
    np.testing.assert_array_equal(select_with_pcb("margin", 0, pool, labeled, k, n_cand, use_pcb=False), cand[:k])
    np.testing.assert_array_equal(
        select_with_pcb("margin", 0, pool, labeled, k, n_cand, use_pcb=False, authors_quirk=True), cand[-k:]
    )
    ent = strategies.get("entropy")(0, pool, labeled, n_cand)
    np.testing.assert_array_equal(
        select_with_pcb("entropy", 0, pool, labeled, k, n_cand, use_pcb=False, authors_quirk=True), ent[:k][::-1]
    )
    # random is pure random over the unlabelled pool
    r = select_with_pcb("random", 3, pool, labeled, 50, n_cand)
    assert len(set(r.tolist())) == 50 and not labeled[r].any()
    # fewer remaining than n_cand: all of them are candidates
    out = select_with_pcb("entropy", 0, pool, labeled, k, 10**6)
    assert len(out) == k and not labeled[out].any()


@pytest.mark.parametrize("strategy, use_pcb", [("entropy", True), ("margin", False), ("featdist", True)])
def test_excluded_rows_are_as_if_not_in_the_pool(strategy, use_pcb):
    """Rows excluded as "can't tell" (no label, never picked): the pick equals the one over the pool without them
    (PCB's class counts and featdist's class means see the labelled rows only)."""
    g = np.random.default_rng(3)
    n, k = 300, 4
    logits = g.normal(size=(n, k)).astype(np.float32) * 2
    truth = g.integers(0, k, n)
    labeled = np.zeros(n, bool)
    labeled[g.choice(n, 25, replace=False)] = True
    excluded = np.zeros(n, bool)
    excluded[g.choice(np.flatnonzero(~labeled), 40, replace=False)] = True
    labels = np.where(labeled, truth, -1)
    got = select_with_pcb(
        strategy, 7, {"logits": logits, "labels": labels}, labeled, 12, 60, use_pcb=use_pcb, excluded=excluded
    )
    keep = np.flatnonzero(~excluded)
    reduced = {"logits": logits[keep], "labels": labels[keep]}
    expected = keep[select_with_pcb(strategy, 7, reduced, labeled[keep], 12, 60, use_pcb=use_pcb)]
    np.testing.assert_array_equal(got, expected)
    assert not excluded[got].any() and not labeled[got].any()


def test_excluded_rows_are_never_picked_by_coverage_strategies():
    g = np.random.default_rng(4)
    n = 200
    feats = g.normal(size=(n, 8)).astype(np.float32)
    logits = g.normal(size=(n, 3)).astype(np.float32)
    labeled = np.zeros(n, bool)
    labeled[:5] = True
    excluded = np.zeros(n, bool)
    excluded[5:185] = True  # 15 rows left to pick from: a budget of 15 takes exactly them
    pool = {"features": feats, "logits": logits, "labels": np.where(labeled, 0, -1)}
    for strategy in ("coreset", "badge", "random"):
        got = select_with_pcb(strategy, 1, pool, labeled, 15, 100, excluded=excluded)
        assert sorted(got.tolist()) == list(range(185, 200)), strategy
    with pytest.raises(ValueError, match="exceeds the 15"):
        select_with_pcb("entropy", 1, pool, labeled, 16, 100, excluded=excluded)
