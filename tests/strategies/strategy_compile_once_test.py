"""Selection compiles once per run: after round 1, rounds that only grow the labelled mask compile nothing."""

import jax
import pytest
from conftest import CompileCounter, al_rounds

from alpeft_jax import strategies


@pytest.mark.parametrize("name", sorted(strategies.names()))
def test_no_compilation_after_the_first_round(name, make_pool):
    # the pool and budget of test_contract, so a session compiles each strategy once for both tests
    pool, labeled, y = make_pool()
    budget = 40
    select = strategies.get(name)
    jax.clear_caches()  # nothing compiled before: round 1 must compile, so the counter is seen to count
    picks, compiles = al_rounds(lambda r, p, lab: select(r, p, lab, budget), pool, labeled, y, budget, 3)
    assert compiles[0] > 0 and compiles[1:] == [0, 0], compiles
    assert len({tuple(p) for p in picks}) == 3  # the rounds did select different examples


def test_the_counter_sees_compilations():
    v, w = jax.numpy.arange(7), jax.numpy.ones(7, "int32")
    longer, floats = jax.numpy.arange(8), jax.numpy.ones(7, "float32")  # made outside: eager ops compile too
    f = jax.jit(lambda v: v * 3 + 1)
    with CompileCounter() as cc:
        f(v)
        f(w)  # same shape and dtype: cached
        assert cc.count == 1
        f(longer)  # a new shape compiles again
        f(floats)  # and so does a new dtype
    assert cc.count == 3
