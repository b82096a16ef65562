"""TCM against its parts: before the hand-off it picks what `first` picks, after it what `then` picks (same seeds
and pool), and the hand-off round is the one a NumPy reimplementation of the rule gives."""

import jax
import numpy as np
import pytest
from conftest import CompileCounter

from alpeft_jax import strategies
from alpeft_jax.strategies import tcm

K = 5  # make_pool's classes
SUB = {"k_nn": 5}  # TypiClust's neighbours on a 300-row pool


def _rule_numpy(pool, labeled, switch, per_class=3, coverage=0.5, radius=0.5):
    """The hand-off rule of tcm's docstring, in NumPy: whether to hand off."""
    if switch == "labels":
        return labeled.sum() >= per_class * K
    x = pool["features"].astype(np.float64)
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    d2 = ((x[:, None, :] - x[labeled][None, :, :]) ** 2).sum(-1).min(1)
    pred = pool["logits"].argmax(1)
    shares = [np.mean(d2[pred == c] <= radius**2) for c in range(K) if (pred == c).any()]
    return min(shares) >= coverage


def _rounds(pool, labeled, y, opts, rounds, budget=10):
    """Select `rounds` times with tcm, labelling each pick; per round the tcm picks and the reference's."""
    pool = dict(pool, labels=pool["labels"].copy())
    labeled = labeled.copy()
    out = []
    for r in range(rounds):
        rule = {k: opts[k] for k in ("switch", "switch_per_class", "coverage", "radius") if k in opts}
        renamed = {"per_class": rule.pop("switch_per_class", 3), **rule}
        name = opts["then"] if _rule_numpy(pool, labeled, **renamed) else opts["first"]
        picks = strategies.get("tcm")(r, pool, labeled, budget, **opts, **SUB)
        ref = strategies.get(name)(r, pool, labeled, budget, **SUB)
        out.append((name, picks, ref))
        labeled[picks] = True
        pool["labels"][picks] = y[picks]
    return out


@pytest.mark.parametrize(
    "first,then,per_class",
    [("typiclust", "margin", 5), pytest.param("probcover", "entropy", 7, marks=pytest.mark.slow)],
)
def test_labels_rule_hands_off_at_its_round_and_picks_what_each_part_picks(make_pool, first, then, per_class):
    pool, labeled, y = make_pool()  # 20 labels: 4 per class, then 10 more a round (test_contract's budget)
    opts = {"first": first, "then": then, "switch": "labels", "switch_per_class": per_class}
    rounds = _rounds(pool, labeled, y, opts, 3)
    # 20, 30, 40 labels against per_class x 5: the hand-off round is where the count first reaches it
    expect = [first if 20 + 10 * r < per_class * K else then for r in range(3)]
    assert [name for name, _, _ in rounds] == expect and first in expect and then in expect
    for _, picks, ref in rounds:
        np.testing.assert_array_equal(picks, ref)


def test_coverage_rule_hands_off_when_the_least_covered_class_passes_the_threshold(make_pool):
    pool, labeled, y = make_pool()
    opts = {"first": "typiclust", "then": "margin", "switch": "coverage", "coverage": 0.75, "radius": 0.4}
    rounds = _rounds(pool, labeled, y, opts, 4, budget=25)
    names = [name for name, _, _ in rounds]
    assert names[0] == "typiclust" and names[-1] == "margin", names  # the rule fires inside these rounds
    for _, picks, ref in rounds:
        np.testing.assert_array_equal(picks, ref)


def test_class_coverage_matches_numpy(make_pool):
    pool, labeled, _ = make_pool()
    got = tcm.class_coverage(pool["features"], pool["logits"], labeled, 0.6)
    x = pool["features"].astype(np.float64)
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    d2 = ((x[:, None, :] - x[labeled][None, :, :]) ** 2).sum(-1).min(1)
    pred = pool["logits"].argmax(1)
    want = [np.mean(d2[pred == c] <= 0.36) for c in range(K)]
    np.testing.assert_allclose(got, want, atol=1e-12)
    assert 0 < min(want) < 1  # neither trivially covered nor empty
    switched, least = tcm.hand_off(pool, labeled, "coverage", coverage=min(want), radius=0.6)
    assert switched and least == pytest.approx(min(want))
    assert not tcm.hand_off(pool, labeled, "coverage", coverage=min(want) + 1e-3, radius=0.6)[0]


def test_default_radius_is_probcovers_purity_radius(make_pool):
    pool, labeled, _ = make_pool()
    r = tcm.purity_radius(pool["features"], K)
    assert r > 0
    assert tcm.hand_off(pool, labeled, "coverage", coverage=0.3) == tcm.hand_off(
        pool, labeled, "coverage", coverage=0.3, radius=r
    )


def test_through_pcb_it_is_the_part_through_pcb(make_pool):
    pool, labeled, _ = make_pool()
    for per_class, part in ((9, "typiclust"), (1, "margin")):
        opts = {"switch_per_class": per_class}
        got = strategies.select_with_pcb("tcm", 4, pool, labeled, 6, 30, **opts, **SUB)
        np.testing.assert_array_equal(got, strategies.select_with_pcb(part, 4, pool, labeled, 6, 30, **SUB))


@pytest.mark.slow  # compiles TypiClust afresh (~10 s); the compile-once test covers tcm's own rounds
def test_each_part_compiles_in_its_first_round_only(make_pool):
    pool, labeled, y = make_pool()
    pool = dict(pool, labels=pool["labels"].copy())
    labeled = labeled.copy()
    opts = {"switch": "coverage", "coverage": 0.75, "radius": 0.4, **SUB}
    names, compiles = [], []
    jax.clear_caches()  # nothing compiled before: each part must be seen to compile
    for r in range(5):
        with CompileCounter() as cc:
            picks = strategies.get("tcm")(r, pool, labeled, 15, **opts)
        names.append("margin" if tcm.hand_off(pool, labeled, "coverage", coverage=0.75, radius=0.4)[0] else "typi")
        compiles.append(cc.count)
        labeled[picks] = True
        pool["labels"][picks] = y[picks]
    switch = names.index("margin")
    assert 0 < switch < 4, names
    assert [c > 0 for c in compiles] == [r in (0, switch) for r in range(5)], (names, compiles)


def test_bad_parts_are_refused_naming_the_choices(make_pool):
    pool, labeled, _ = make_pool()
    with pytest.raises(ValueError, match="first='badge' is not one of typiclust, probcover"):
        strategies.get("tcm")(0, pool, labeled, 3, first="badge")
    with pytest.raises(ValueError, match="then='bald' is not one of margin"):
        strategies.get("tcm")(0, pool, labeled, 3, then="bald")
    with pytest.raises(ValueError, match="switch='never'"):
        strategies.get("tcm")(0, pool, labeled, 3, switch="never")
