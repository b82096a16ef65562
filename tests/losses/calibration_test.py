"""Calibration losses against a PyTorch transcription of the authors' code path and NumPy references."""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch

from alpeft_jax import losses
from alpeft_jax.losses import avuc_loss, calibration_loss, calibration_weight

# ----------------------------------------------------------------------------------------------------------
# Independent references


def torch_cpeal(logits, labels, weighting, eps=1e-6, clamp=5.0, beta=0.999):
    """The authors' path in PyTorch: boolean indexing, Python 0.0 for an empty group, clamp, NaN -> 0."""
    p = torch.softmax(logits, dim=1)
    u = -(p * torch.log(p + eps)).sum(dim=1)
    hit = p.argmax(dim=1) == labels
    u_cor, u_inc = u[hit], u[~hit]
    l_inc = 0.0 if u_inc.shape[0] == 0 else torch.mean(-torch.log(torch.tanh(u_inc) + eps))
    l_cor = 0.0 if u_cor.shape[0] == 0 else torch.mean(-torch.log(1 - torch.tanh(u_cor) + eps))
    n_c, n_i = u_cor.shape[0], u_inc.shape[0]
    if weighting == "none":
        loss = l_inc + l_cor
    elif weighting == "balanced":
        loss = (n_i / (n_c + n_i)) * l_cor + (n_c / (n_c + n_i)) * l_inc
    else:
        eff = 1.0 - np.power(beta, np.array([n_c, n_i], dtype=np.float64))
        eff = np.where(eff > 0, eff, 1e-6)
        w = (1.0 - beta) / eff
        w = w / w.sum()
        loss = float(w[0]) * l_cor + float(w[1]) * l_inc
    loss = torch.clamp(torch.as_tensor(loss), max=clamp)
    if math.isnan(loss.item()):
        return torch.tensor(0.0)
    return loss


def torch_value_and_grad(logits_np, labels_np, weighting, **kw):
    x = torch.tensor(logits_np, dtype=torch.float32, requires_grad=True)
    loss = torch_cpeal(x, torch.tensor(labels_np), weighting, **kw)
    if loss.requires_grad:
        (g,) = torch.autograd.grad(loss, x)
        g = g.numpy()
    else:
        g = np.zeros_like(logits_np)
    return float(loss.detach()), g


_value_and_grad = jax.jit(jax.value_and_grad(calibration_loss), static_argnames=("weighting", "eps", "clamp"))


def jax_value_and_grad(logits, labels, weighting, mask=None, **kw):
    v, g = _value_and_grad(jnp.asarray(logits), jnp.asarray(labels), weighting=weighting, mask=mask, **kw)
    return float(v), np.asarray(g, np.float32)


def numpy_cpeal(logits, labels, weighting, eps=1e-6, clamp=5.0, beta=0.999):
    """Plain NumPy float64 value of the loss (no autograd)."""
    z = logits.astype(np.float64)
    p = np.exp(z - z.max(1, keepdims=True))
    p /= p.sum(1, keepdims=True)
    u = -(p * np.log(p + eps)).sum(1)
    hit = p.argmax(1) == labels
    t = np.tanh(u)
    l_inc = np.mean(-np.log(t[~hit] + eps)) if (~hit).any() else 0.0
    l_cor = np.mean(-np.log(1 - t[hit] + eps)) if hit.any() else 0.0
    n_c, n_i = hit.sum(), (~hit).sum()
    if weighting == "none":
        w_c, w_i = 1.0, 1.0
    elif weighting == "balanced":
        w_c, w_i = n_i / (n_c + n_i), n_c / (n_c + n_i)
    else:
        eff = np.maximum(1 - beta ** np.array([n_c, n_i], np.float64), 1e-6)
        w = (1 - beta) / eff
        w_c, w_i = w / w.sum()
    return min(w_c * l_cor + w_i * l_inc, clamp)


def mixed_batch(rng, b=24, k=7, scale=3.0, frac_correct=0.5):
    logits = (rng.normal(size=(b, k)) * scale).astype(np.float32)
    labels = rng.integers(0, k, size=b)
    pred = logits.argmax(1)
    take = rng.random(b) < frac_correct
    labels = np.where(take, pred, labels).astype(np.int32)
    return logits, labels


WEIGHTINGS = ["none", "balanced", "effective_number"]

# ----------------------------------------------------------------------------------------------------------
# Value and gradient parity


@pytest.mark.parametrize("weighting", WEIGHTINGS)
@pytest.mark.parametrize("seed,scale", [(0, 1.0), (1, 3.0), (2, 0.3)])
def test_random_batches_match_torch(weighting, seed, scale):
    logits, labels = mixed_batch(np.random.default_rng(seed), scale=scale)
    v_t, g_t = torch_value_and_grad(logits, labels, weighting)
    v_j, g_j = jax_value_and_grad(logits, labels, weighting)
    assert 0 < v_t < 5  # a mixed batch below the clamp: the comparison is informative
    np.testing.assert_allclose(v_j, v_t, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(g_j, g_t, rtol=1e-4, atol=1e-6)
    np.testing.assert_allclose(v_j, numpy_cpeal(logits, labels, weighting), rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("weighting", WEIGHTINGS)
@pytest.mark.parametrize("case", ["all_correct", "all_incorrect", "single_correct", "single_incorrect"])
def test_degenerate_groups_match_torch(weighting, case):
    rng = np.random.default_rng(3)
    b = 1 if case.startswith("single") else 16
    logits = (rng.normal(size=(b, 5)) * 2).astype(np.float32)
    pred = logits.argmax(1)
    labels = pred if case.endswith("correct") and "incorrect" not in case else (pred + 1) % 5
    labels = labels.astype(np.int32)
    v_t, g_t = torch_value_and_grad(logits, labels, weighting)
    v_j, g_j = jax_value_and_grad(logits, labels, weighting)
    np.testing.assert_allclose(v_j, v_t, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(g_j, g_t, rtol=1e-4, atol=1e-6)
    if weighting == "balanced":  # METHOD.md §2.6: single-group batches give exactly 0 with balanced weights
        assert v_j == 0.0 and not np.any(g_j)
    if weighting == "none":
        assert v_j > 0


def test_equal_groups_balanced_is_half_sum():
    rng = np.random.default_rng(4)
    logits = rng.normal(size=(10, 6)).astype(np.float32)
    pred = logits.argmax(1)
    labels = np.where(np.arange(10) < 5, pred, (pred + 1) % 6).astype(np.int32)
    bal = float(calibration_loss(logits, labels, weighting="balanced"))
    none = float(calibration_loss(logits, labels, weighting="none"))
    np.testing.assert_allclose(bal, 0.5 * none, rtol=1e-6)


@pytest.mark.parametrize("weighting", WEIGHTINGS)
def test_padding_rows_change_neither_value_nor_gradient(weighting):
    rng = np.random.default_rng(5)
    logits, labels = mixed_batch(rng, b=12)
    pad = 20
    junk = (rng.normal(size=(pad, logits.shape[1])) * 50).astype(np.float32)
    big_logits = np.concatenate([logits, junk])
    big_labels = np.concatenate([labels, rng.integers(0, 7, size=pad).astype(np.int32)])
    mask = np.concatenate([np.ones(12, bool), np.zeros(pad, bool)])
    order = rng.permutation(12 + pad)  # padding interleaved, not only at the end
    v_t, g_t = torch_value_and_grad(logits, labels, weighting)
    for m in (mask, mask.astype(np.float32)):
        v_j, g_j = jax_value_and_grad(big_logits[order], big_labels[order], weighting, mask=jnp.asarray(m[order]))
        np.testing.assert_allclose(v_j, v_t, rtol=1e-5, atol=1e-6)
        inv = np.argsort(order)
        np.testing.assert_allclose(g_j[inv][:12], g_t, rtol=1e-4, atol=1e-6)
        assert not np.any(g_j[inv][12:])


def test_all_padding_is_zero():
    v, g = jax_value_and_grad(np.ones((4, 3), np.float32), np.zeros(4, np.int32), "balanced", mask=jnp.zeros(4))
    assert v == 0.0 and not np.any(g)


@pytest.mark.parametrize("weighting", ["none", "balanced"])
def test_clamp_caps_value_and_zeroes_gradient(weighting):
    # Correct rows with near-uniform probabilities over 50 classes (L_cor ~ 7) and, for the balanced case,
    # confidently wrong rows (L_inc ~ 10): the weighted sum is above 5 before the clamp.
    rng = np.random.default_rng(6)
    logits = (rng.normal(size=(8, 50)) * 1e-3).astype(np.float32)
    labels = logits.argmax(1).astype(np.int32)
    if weighting == "balanced":
        wrong = (rng.normal(size=(8, 50)) * 20).astype(np.float32)
        logits = np.concatenate([logits, wrong])
        labels = np.concatenate([labels, (wrong.argmax(1) + 1) % 50]).astype(np.int32)
    v_t, g_t = torch_value_and_grad(logits, labels, weighting)
    v_j, g_j = jax_value_and_grad(logits, labels, weighting)
    assert v_t == pytest.approx(5.0) and v_j == pytest.approx(5.0)
    assert not np.any(g_t) and not np.any(g_j)
    assert numpy_cpeal(logits, labels, weighting, clamp=np.inf) > 5.5
    assert float(calibration_loss(logits, labels, weighting=weighting, clamp=100.0)) > 5.5


def test_nan_gives_zero():
    logits = np.full((4, 3), np.nan, np.float32)
    labels = np.zeros(4, np.int32)
    for w in WEIGHTINGS:
        assert float(calibration_loss(logits, labels, weighting=w)) == 0.0
    x = torch.tensor(logits)
    assert float(torch_cpeal(x, torch.tensor(labels), "none")) == 0.0


def test_saturated_clip_scale_logits_match_torch():
    # logit_scale ~ 100: probabilities are nearly one-hot, entropies near the eps floor.
    rng = np.random.default_rng(7)
    logits, labels = mixed_batch(rng, b=32, k=10, scale=100 * 0.05)
    v_t, g_t = torch_value_and_grad(logits, labels, "balanced")
    v_j, g_j = jax_value_and_grad(logits, labels, "balanced")
    np.testing.assert_allclose(v_j, v_t, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(g_j, g_t, rtol=1e-4, atol=1e-6)


@pytest.mark.parametrize("weighting", WEIGHTINGS)
def test_bf16_logits_computed_in_f32(weighting):
    # bf16 logits are upcast: the result equals the f32 loss of the bf16-rounded values (tol 1e-5), and the
    # gradient (returned in bf16, ~3 significant digits) matches torch's f32 gradient to rtol 1e-2.
    logits, labels = mixed_batch(np.random.default_rng(8))
    z16 = jnp.asarray(logits, jnp.bfloat16)
    rounded = np.asarray(z16.astype(jnp.float32))
    v_t, g_t = torch_value_and_grad(rounded, labels, weighting)
    v, g = jax.value_and_grad(lambda z: calibration_loss(z, jnp.asarray(labels), weighting=weighting))(z16)
    assert v.dtype == jnp.float32 and g.dtype == jnp.bfloat16
    np.testing.assert_allclose(float(v), v_t, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(np.asarray(g, np.float32), g_t, rtol=1e-2, atol=1e-3 * np.abs(g_t).max())


def test_effective_number_weights_follow_group_counts():
    # 2 correct / 6 incorrect: the correct term gets the larger weight (inverse frequency, from n_c).
    rng = np.random.default_rng(9)
    logits = rng.normal(size=(8, 4)).astype(np.float32)
    pred = logits.argmax(1)
    labels = np.where(np.arange(8) < 2, pred, (pred + 1) % 4).astype(np.int32)
    none_cor = float(calibration_loss(logits[:2], labels[:2], weighting="none"))
    none_inc = float(calibration_loss(logits[2:], labels[2:], weighting="none"))
    beta = 0.999
    w = (1 - beta) / (1 - beta ** np.array([2.0, 6.0]))
    w /= w.sum()
    assert w[0] > w[1]
    got = float(calibration_loss(logits, labels, weighting="effective_number"))
    np.testing.assert_allclose(got, w[0] * none_cor + w[1] * none_inc, rtol=1e-5)


def test_jit_and_bad_input():
    logits, labels = mixed_batch(np.random.default_rng(10))
    f = jax.jit(calibration_loss, static_argnames=("weighting",))
    np.testing.assert_allclose(
        float(f(logits, labels, weighting="balanced")), float(calibration_loss(logits, labels)), rtol=1e-6
    )
    with pytest.raises(ValueError, match="unknown weighting"):
        calibration_loss(logits, labels, weighting="inverse")
    with pytest.raises(ValueError, match="labels"):
        calibration_loss(logits, labels[:3])


# ----------------------------------------------------------------------------------------------------------
# Weight schedule (METHOD.md §2.4 / §6.4)


def test_calibration_weight_schedule():
    got = [calibration_weight(e, 10, 1.0) for e in range(10)]
    np.testing.assert_allclose(got, [0, 0.01, 0.12, 0.23, 0.34, 0.45, 0.56, 0.67, 0.78, 0.89], atol=1e-12)
    # E = 200: ramp 0 -> 0.01 over epochs 0..19, then linear to ~0.995 at epoch 199.
    assert calibration_weight(10, 200, 1.0) == pytest.approx(0.005)
    assert calibration_weight(20, 200, 1.0) == pytest.approx(0.01)
    assert calibration_weight(199, 200, 1.0) == pytest.approx(0.01 + 0.99 * 179 / 180)
    # int(0.1 * E) == 0: no warm-up branch, epoch 0 already gives final/100.
    assert calibration_weight(0, 5, 2.0) == pytest.approx(0.02)
    assert calibration_weight(4, 5, 2.0) == pytest.approx(0.02 + 1.98 * 4 / 5)
    assert calibration_weight(3, 10, 0.7, anneal=False) == 0.7
    with pytest.raises(ValueError, match="epoch"):
        calibration_weight(10, 10, 1.0)


# ----------------------------------------------------------------------------------------------------------
# AvUC


def torch_avuc(logits, labels, threshold, eps=1e-10):
    """Per-sample loop over accurate/inaccurate x certain/uncertain, as in the AvUC reference code."""
    probs = torch.softmax(logits, dim=1)
    conf, pred = probs.max(dim=1)
    unc = -(probs * torch.log(probs + eps)).sum(dim=-1)
    n_ac = n_au = n_ic = n_iu = torch.zeros(())
    for i in range(len(labels)):
        accurate = labels[i].item() == pred[i].item()
        certain = unc[i].item() <= threshold
        if accurate and certain:
            n_ac = n_ac + conf[i] * (1 - torch.tanh(unc[i]))
        elif accurate:
            n_au = n_au + conf[i] * torch.tanh(unc[i])
        elif certain:
            n_ic = n_ic + (1 - conf[i]) * (1 - torch.tanh(unc[i]))
        else:
            n_iu = n_iu + (1 - conf[i]) * torch.tanh(unc[i])
    avu = (n_ac + n_iu) / (n_ac + n_au + n_ic + n_iu + eps)
    return -torch.log(avu + eps), (n_ac, n_au, n_ic, n_iu)


def numpy_best_threshold(logits, labels, eps=1e-10, n=21):
    z = logits.astype(np.float64)
    p = np.exp(z - z.max(1, keepdims=True))
    p /= p.sum(1, keepdims=True)
    u = -(p * np.log(p + eps)).sum(1)
    acc = p.argmax(1) == labels
    best, best_t = -1.0, None
    for t in np.linspace(0, 1, n):
        th = u.min() + t * (u.max() - u.min())
        cert = u <= th
        avu = np.mean((acc & cert) | (~acc & ~cert))
        if avu > best + 1e-12:
            best, best_t = avu, th
    return best_t


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_avuc_matches_torch_loop(seed):
    logits, labels = mixed_batch(np.random.default_rng(20 + seed), b=20, k=5, scale=1.5)
    x = torch.tensor(logits, requires_grad=True)
    p = torch.softmax(x.detach(), 1)
    u = np.sort((-(p * torch.log(p + 1e-10)).sum(1)).numpy())
    th = float(0.5 * (u[9] + u[10]))  # between two samples, so ulp-level entropy differences cannot flip it
    ref, (n_ac, n_au, n_ic, n_iu) = torch_avuc(x, torch.tensor(labels), th)
    (g_t,) = torch.autograd.grad(ref, x)
    v, g = jax.value_and_grad(lambda z: avuc_loss(z, jnp.asarray(labels), threshold=th))(jnp.asarray(logits))
    np.testing.assert_allclose(float(v), float(ref.detach()), rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(np.asarray(g), g_t.numpy(), rtol=1e-4, atol=1e-6)
    # The paper's form: log(1 + (n_AU + n_IC) / (n_AC + n_IU)).
    paper = math.log(1 + float((n_au + n_ic).detach()) / float((n_ac + n_iu).detach()))
    np.testing.assert_allclose(float(v), paper, rtol=1e-5)


def test_avuc_optimal_threshold_and_padding():
    rng = np.random.default_rng(30)
    logits, labels = mixed_batch(rng, b=24, k=6, scale=1.5)
    th_np = numpy_best_threshold(logits, labels)
    th = float(losses.avu_threshold(logits, labels))
    np.testing.assert_allclose(th, th_np, rtol=1e-4)
    ref, _ = torch_avuc(torch.tensor(logits), torch.tensor(labels), th)
    np.testing.assert_allclose(float(avuc_loss(logits, labels)), float(ref.detach()), rtol=1e-5)
    # Padding rows: same value and gradient for the real rows, zero gradient for the padding.
    junk = (rng.normal(size=(8, 6)) * 9).astype(np.float32)
    zz = np.concatenate([logits, junk])
    yy = np.concatenate([labels, np.zeros(8, np.int32)])
    mask = np.arange(32) < 24
    fn = lambda z, y, m: avuc_loss(z, y, mask=m)
    v0, g0 = jax.value_and_grad(fn)(jnp.asarray(logits), labels, None)
    v1, g1 = jax.value_and_grad(fn)(jnp.asarray(zz), yy, jnp.asarray(mask))
    np.testing.assert_allclose(float(v1), float(v0), rtol=1e-6)
    np.testing.assert_allclose(np.asarray(g1)[:24], np.asarray(g0), rtol=1e-5, atol=1e-7)
    assert not np.any(np.asarray(g1)[24:])


def test_avuc_all_padding_is_zero():
    z = jnp.ones((4, 3))
    v, g = jax.value_and_grad(lambda x: avuc_loss(x, jnp.zeros(4, jnp.int32), mask=jnp.zeros(4)))(z)
    assert float(v) == 0.0 and not np.any(np.asarray(g))


def test_jit_compiles_once_for_any_mask():
    traces = []

    @jax.jit
    def f(z, y, m):
        traces.append(1)
        return calibration_loss(z, y, mask=m) + avuc_loss(z, y, mask=m)

    rng = np.random.default_rng(50)
    for _ in range(3):
        logits, labels = mixed_batch(rng, b=16)
        f(logits, labels, rng.random(16) < 0.7)
    assert len(traces) == 1


def test_registry():
    logits, labels = mixed_batch(np.random.default_rng(40))
    f = losses.get("cpeal", weighting="none")
    assert float(f(logits, labels)) == pytest.approx(float(calibration_loss(logits, labels, weighting="none")))
    g = losses.get("avuc", threshold=0.5)
    assert float(g(logits, labels, mask=None)) == pytest.approx(float(avuc_loss(logits, labels, threshold=0.5)))
    with pytest.raises(ValueError, match="unknown calibration loss"):
        losses.get("focal")
    with pytest.raises(ValueError, match="no option"):
        losses.get("avuc", weighting="balanced")
