"""Stopping rules: kappa against scikit-learn, the learning-curve gain against a closed-form fit, the rules' firing,
and a driver run that stops by itself, says why, stays stopped, and goes on when rerun with more rounds."""

import json
import os
import sys
import types

import numpy as np
import pytest
from sklearn.metrics import cohen_kappa_score

from alpeft_jax import config, loop, report, stopping, workdir

TINY = os.path.join(os.path.dirname(os.path.abspath(__file__)), "configs", "tiny.py")


@pytest.mark.parametrize("seed", range(4))
def test_kappa_is_sklearns(seed):
    g = np.random.default_rng(seed)
    a = g.integers(0, 6, 200)
    b = np.where(g.random(200) < 0.7, a, g.integers(0, 4, 200))  # partly agreeing, another class set
    assert stopping.cohen_kappa(a, b) == pytest.approx(cohen_kappa_score(a, b), abs=1e-12)
    assert stopping.cohen_kappa(a, a) == pytest.approx(1.0)
    assert stopping.cohen_kappa(np.full(5, 3), np.full(5, 3)) == 1.0  # one class on both sides: stable
    with pytest.raises(ValueError, match="equal-length"):
        stopping.cohen_kappa(a, b[:-1])


def _rows(accs, step=10):
    return [{"round": i, "n_labeled": step * (i + 1), "accuracy": a} for i, a in enumerate(accs)]


def test_gain_is_the_log_linear_trend_at_the_next_round():
    rows = _rows([0.3, 0.5, 0.55, 0.62, 0.64])
    x, y = np.log([30.0, 40, 50]), np.array([0.55, 0.62, 0.64])
    slope = ((x - x.mean()) * (y - y.mean())).sum() / ((x - x.mean()) ** 2).sum()
    assert stopping.expected_gain(rows, 2) == pytest.approx(slope * np.log(60 / 50), rel=1e-9)
    assert stopping.expected_gain(rows[:2], 2) is None  # too few rounds for the window
    assert stopping.expected_gain([*rows[:-1], {"n_labeled": 50}], 2) is None  # a row without an accuracy


def test_signals_and_where_each_rule_fires():
    rows = []
    kappas = [None, 0.5, 0.95, 0.97, 0.99, 1.0]
    accs = [0.3, 0.5, 0.6, 0.61, 0.615, 0.616]
    for i, (k, a) in enumerate(zip(kappas, accs)):
        row = {"round": i, "n_labeled": 10 * (i + 1), "accuracy": a}
        row.update(stopping.round_signals(rows, row, k, window=2, kappa_threshold=0.98, gain_threshold=0.01))
        rows.append(row)
    assert [r["stop_kappa_mean"] for r in rows] == [None, None, pytest.approx(0.725), 0.96, 0.98, 0.995]
    assert stopping.first_stop(rows, "kappa") == 4
    # gain: fit over 3 rounds; 0.6 -> 0.61 -> 0.615 at 30..50 labels gives less than one point next round
    gains = [r["stop_gain"] for r in rows]
    assert gains[:2] == [None, None] and gains[2] > 0.01 and gains[4] < 0.01
    assert stopping.first_stop(rows, "gain") == next(i for i, g in enumerate(gains) if g is not None and g < 0.01)
    # at other thresholds, read off the recorded signals (means 0.725, 0.96, 0.98, 0.995 from row 2 on)
    assert [stopping.first_stop(rows, "kappa", t) for t in (0.7, 0.96, 0.99, 0.999)] == [2, 3, 5, None]
    want = next(i for i, g in enumerate(gains) if g is not None and g < 0.05)
    assert stopping.first_stop(rows, "gain", 0.05) == want and stopping.first_stop(rows, "gain", -1.0) is None
    with pytest.raises(ValueError, match="unknown stopping rule"):
        stopping.first_stop(rows, "nope")


def _tiny(arg, **al):
    sys.path.insert(0, os.path.dirname(TINY))
    try:
        import tiny
    finally:
        sys.path.pop(0)
    c = tiny.get_config(arg)
    c.train.calibration = "cpeal"  # tcm composes with PCB (on by default) and the calibration loss
    c.al.stop_set_size = 40
    for k, v in al.items():
        setattr(c.al, k, v)
    return c


def _monitor(**al):
    c = config.base()
    c.al.update(al)
    return stopping.StopMonitor(types.SimpleNamespace(c=c, pool=range(500)))


def test_the_rule_stops_once_says_why_and_a_higher_rounds_lifts_it(capfd):
    rec = workdir.RunRecord()
    mon = _monitor(stop="gain", rounds=6, stop_window=2, stop_gain=0.02)
    assert mon.rows.size == 500  # the whole pool when the stop set is larger
    row = {"round": 2, "n_labeled": 30, "stop_gain": 0.004, "stop_rules": ["gain"]}
    assert _monitor(stop="kappa", rounds=6).decide(rec, dict(row)) == ""  # another rule: no stop
    reason = mon.decide(rec, row)
    assert reason == (
        "al.stop=gain: stopped after round 2 (30 labels): expected gain of the next round +0.40 accuracy points "
        "< al.stop_gain 2.00"
    )
    assert row["stop_reason"] == reason and rec.stops == [{"round": 2, "rounds": 6, "reason": reason}]
    assert mon.halted(rec) and reason in capfd.readouterr().err
    more = _monitor(stop="gain", rounds=9, stop_window=2, stop_gain=0.02)
    assert not more.halted(rec)  # a higher al.rounds goes on
    assert more.decide(rec, dict(row, round=3)) == ""  # re-armed only stop_window rounds after the lifted stop
    assert more.decide(rec, dict(row, round=4)) != "" and rec.stops[-1]["rounds"] == 9
    assert more.halted(rec)
    assert more.decide(workdir.RunRecord(), dict(row, round=8)) == ""  # the last round ends the run anyway


@pytest.mark.slow  # three driver runs (~30 s on a quiet machine); the test above covers the decisions
def test_kappa_stop_stays_stopped_and_goes_on_with_more_rounds(tmp_path_factory, capfd):
    cache = str(tmp_path_factory.getbasetemp() / "shared_cache")
    wd = str(tmp_path_factory.mktemp("stop"))
    # kappa >= -1 always holds: the rule fires as soon as it has a kappa (round 1, window 1)
    stop = dict(stop="kappa", stop_kappa=-1.0, stop_window=1)
    rows = loop.run(_tiny(f"rounds=3,epochs=1,strategy=tcm,cache={cache}", **stop), wd)
    assert [r["round"] for r in rows] == [0, 1] and rows[1]["strategy"] == "tcm"
    assert rows[0]["stop_kappa"] is None and -1 <= rows[1]["stop_kappa"] <= 1 and "kappa" in rows[1]["stop_rules"]
    reason = rows[1]["stop_reason"]
    assert reason.startswith("al.stop=kappa: stopped after round 1 (15 labels): mean kappa") and "\n" not in reason
    assert reason in capfd.readouterr().err
    with open(os.path.join(wd, "al_state.json")) as f:
        state = json.load(f)
    assert state["stops"] == [{"round": 1, "rounds": 3, "reason": reason}] and len(state["stop_predictions"]) == 40
    # the same config again: nothing new, the reason said again
    assert len(loop.run(_tiny(f"rounds=3,epochs=1,strategy=tcm,cache={cache}", **stop), wd)) == 2
    assert "--config.al.rounds" in capfd.readouterr().err
    # more rounds: it goes on; re-armed after stop_window rounds, the rule stops it again after round 2 of 4
    more = loop.run(_tiny(f"rounds=4,epochs=1,strategy=tcm,cache={cache}", **stop), wd, allow_config_change=True)
    assert [r["round"] for r in more] == [0, 1, 2] and "stopped after round 2" in more[2]["stop_reason"]
    # the report shows where each rule would have stopped
    table = report.stop_table(report.group_runs_by_seed([wd]))
    assert "| tiny | kappa | 1 | 1 of 1 | 1.0 ± 0.0 | 5.0 ± 0.0 |" in table
