"""Optimiser and schedule against torch.optim (SGD, AdamW, CosineAnnealingLR) on the same problem."""

import math

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
import torch

from alpeft_jax import optim


def torch_lr_sequence(num_epochs, lr, warmup_lr, warmup_epochs=1):
    """Per-epoch lr: constant warm-up, then torch's CosineAnnealingLR(T_max=num_epochs) counted from 0."""
    p = torch.nn.Parameter(torch.zeros(1))
    opt = torch.optim.SGD([p], lr=lr)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=num_epochs)
    out = [warmup_lr] * warmup_epochs
    while len(out) < num_epochs:
        out.append(opt.param_groups[0]["lr"])
        opt.step()
        sched.step()
    return out


def test_lr_sequence_e10():
    sched = optim.epoch_schedule(num_epochs=10)
    ours = np.array([float(sched(e)) for e in range(10)])
    np.testing.assert_allclose(ours, torch_lr_sequence(10, 0.002, 1e-5), rtol=1e-6)
    assert ours[0] == pytest.approx(1e-5)
    assert ours[1] == pytest.approx(0.002)
    assert ours[9] == pytest.approx(0.002 * 0.5 * (1 + math.cos(math.pi * 0.8)), rel=1e-6)
    assert ours[9] == pytest.approx(1.9e-4, abs=2e-6)
    host = np.asarray([optim.lr_at_epoch(e, 10) for e in range(10)], np.float32)
    np.testing.assert_array_equal(ours.astype(np.float32), host)  # the host values, bit for bit in float32


def test_no_warmup_and_constant():
    sched = optim.epoch_schedule(num_epochs=4, lr=0.1, warmup_epochs=0)
    np.testing.assert_allclose([float(sched(e)) for e in range(4)], torch_lr_sequence(4, 0.1, 0.0, 0), rtol=1e-6)
    const = optim.epoch_schedule(num_epochs=4, lr=0.1, schedule="constant")
    np.testing.assert_allclose([float(const(e)) for e in range(3)], [1e-5, 0.1, 0.1], rtol=1e-6)


def _problem(seed=0):
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(4, 16, 5)).astype(np.float32)  # 4 mini-batches
    y = rng.normal(size=(4, 16, 3)).astype(np.float32)
    w0 = rng.normal(size=(5, 3)).astype(np.float32)
    b0 = rng.normal(size=(3,)).astype(np.float32)
    return x, y, w0, b0


def _run_jax(tx, x, y, w0, b0, steps, steps_per_epoch=None):
    params = {"w": jnp.asarray(w0), "b": jnp.asarray(b0)}
    state = tx.init(params)
    loss = lambda p, xb, yb: jnp.mean((xb @ p["w"] + p["b"] - yb) ** 2)

    @jax.jit
    def step(params, state, xb, yb, epoch):
        g = jax.grad(loss)(params, xb, yb)
        extra = {} if steps_per_epoch is None else {"epoch": epoch}
        upd, state = tx.update(g, state, params, **extra)
        return optax.apply_updates(params, upd), state

    for s in range(steps):
        params, state = step(params, state, x[s % 4], y[s % 4], s // (steps_per_epoch or 1))
    return np.asarray(params["w"]), np.asarray(params["b"])


def _run_torch(make_opt, lrs_per_epoch, steps_per_epoch, x, y, w0, b0, steps):
    w = torch.nn.Parameter(torch.tensor(w0))
    b = torch.nn.Parameter(torch.tensor(b0))
    opt = make_opt([w, b])
    for s in range(steps):
        for g in opt.param_groups:
            g["lr"] = lrs_per_epoch[s // steps_per_epoch]
        opt.zero_grad()
        xb, yb = torch.tensor(x[s % 4]), torch.tensor(y[s % 4])
        torch.mean((xb @ w + b - yb) ** 2).backward()
        opt.step()
    return w.detach().numpy(), b.detach().numpy()


@pytest.mark.parametrize("weight_decay", [5e-4, 5e-2])
def test_sgd_matches_torch(weight_decay):
    x, y, w0, b0 = _problem()
    e, spe, lr, wlr = 4, 3, 0.05, 0.01
    tx = optim.make_optimizer("sgd", e, lr=lr, weight_decay=weight_decay, warmup_lr=wlr)
    lrs = torch_lr_sequence(e, lr, wlr)
    make = lambda p: torch.optim.SGD(p, lr=lr, momentum=0.9, weight_decay=weight_decay, dampening=0, nesterov=False)
    wj, bj = _run_jax(tx, x, y, w0, b0, e * spe, spe)
    wt, bt = _run_torch(make, lrs, spe, x, y, w0, b0, e * spe)
    np.testing.assert_allclose(wj, wt, atol=1e-6, rtol=1e-6)
    np.testing.assert_allclose(bj, bt, atol=1e-6, rtol=1e-6)
    assert np.abs(wj - w0).max() > 1e-2  # the parameters actually moved
    # Decoupled decay (applied after momentum) is measurably different: the comparison above can fail.
    step_lr = lambda count: optim.epoch_schedule(e, lr, warmup_lr=wlr)(count // spe)
    decoupled = optax.chain(optax.sgd(step_lr, momentum=0.9), optax.add_decayed_weights(-lr * weight_decay))
    wd_, _ = _run_jax(decoupled, x, y, w0, b0, e * spe)
    assert np.abs(wd_ - wt).max() > 1e-5


def test_adamw_matches_torch():
    x, y, w0, b0 = _problem(1)
    e, spe, lr, wlr = 3, 2, 0.01, 1e-3
    tx = optim.make_optimizer("adamw", e, lr=lr, weight_decay=0.05, warmup_lr=wlr)
    lrs = torch_lr_sequence(e, lr, wlr)
    make = lambda p: torch.optim.AdamW(p, lr=lr, betas=(0.9, 0.999), eps=1e-8, weight_decay=0.05)
    wj, bj = _run_jax(tx, x, y, w0, b0, e * spe, spe)
    wt, bt = _run_torch(make, lrs, spe, x, y, w0, b0, e * spe)
    np.testing.assert_allclose(wj, wt, atol=1e-6, rtol=1e-5)
    np.testing.assert_allclose(bj, bt, atol=1e-6, rtol=1e-5)


def test_errors():
    with pytest.raises(ValueError, match="unknown optimizer"):
        optim.make_optimizer("lamb", 1)
    with pytest.raises(ValueError, match="unknown schedule"):
        optim.epoch_schedule(1, schedule="step")
    with pytest.raises(ValueError, match="num_epochs"):
        optim.epoch_schedule(0)
    tx = optim.make_optimizer("sgd", 2)
    params = {"w": jnp.ones(3)}
    with pytest.raises(ValueError, match="epoch="):
        tx.update(params, tx.init(params), params)
