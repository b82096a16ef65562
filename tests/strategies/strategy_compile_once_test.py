"""Selection compiles once per run: after round 1, rounds that only grow the labelled mask compile nothing."""

import jax
import pytest
from conftest import CompileCounter, al_rounds

from alpeft_jax import strategies

# small blocks and clusters keep the clustering strategies quick; they change no shape across rounds
OPTIONS = {"typiclust": {"k_nn": 5, "block": 64}, "probcover": {"block": 64}}


@pytest.mark.parametrize("name", sorted(strategies.names()))
def test_no_compilation_after_the_first_round(name, make_pool):
    pool, labeled, y = make_pool(n=400, d=8, k=5, n_labeled=20)
    budget, opts = 12, OPTIONS.get(name, {})
    select = strategies.get(name)
    direct, compiles = al_rounds(lambda r, p, lab: select(r, p, lab, budget, **opts), pool, labeled, y, budget, 3)
    assert compiles[1:] == [0, 0], compiles
    # the driver's call: the strategy proposes a fixed number of candidates, PCB keeps `budget`
    via_pcb = lambda r, p, lab: strategies.select_with_pcb(name, r, p, lab, budget, 40, **opts)
    _, compiles = al_rounds(via_pcb, pool, labeled, y, budget, 3)
    assert compiles[1:] == [0, 0], compiles
    assert len({tuple(p) for p in direct}) == 3  # the rounds did select different examples


def test_the_counter_sees_compilations():
    v, w = jax.numpy.arange(7), jax.numpy.ones(7, "int32")
    f = jax.jit(lambda v: v * 3 + 1)
    with CompileCounter() as cc:
        f(v)
        f(w)  # same shape and dtype: cached
    assert cc.count == 1
