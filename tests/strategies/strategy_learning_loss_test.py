"""Loss-prediction head and ranking loss against a PyTorch transcription of Yoo & Kweon (2019)."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch

from alpeft_jax import strategies
from alpeft_jax.strategies.learning_loss import LossPredictionHead, loss_prediction_loss


def torch_loss_pred_loss(inp, target, margin=1.0):
    inp = (inp - inp.flip(0))[: len(inp) // 2]
    target = (target - target.flip(0))[: len(target) // 2].detach()
    one = 2 * torch.sign(torch.clamp(target, min=0)) - 1
    return torch.sum(torch.clamp(margin - one * inp, min=0)) / inp.size(0)


def test_head_matches_torch_mlp():
    k = 7
    head = LossPredictionHead()
    params = head.init(jax.random.key(0), jnp.zeros((1, k)))["params"]
    assert params["fc1"]["kernel"].shape == (k, 10) and params["fc2"]["kernel"].shape == (10, 1)
    ref = torch.nn.Sequential(torch.nn.Linear(k, 10), torch.nn.ReLU(), torch.nn.Linear(10, 1))
    with torch.no_grad():
        for i, name in ((0, "fc1"), (2, "fc2")):
            ref[i].weight.copy_(torch.from_numpy(np.array(params[name]["kernel"]).T.copy()))
            ref[i].bias.copy_(torch.from_numpy(np.array(params[name]["bias"])))
    x = np.random.default_rng(0).normal(size=(16, k)).astype(np.float32) * 5
    np.testing.assert_allclose(
        head.apply({"params": params}, x), ref(torch.from_numpy(x))[:, 0].detach(), rtol=1e-5, atol=1e-5
    )
    # Xavier-uniform bound sqrt(6 / (fan_in + fan_out))
    assert np.abs(np.asarray(params["fc1"]["kernel"])).max() <= np.sqrt(6 / (k + 10))


@pytest.mark.parametrize("margin", [1.0, 0.3])
def test_ranking_loss_and_gradient_match_torch(margin):
    g = np.random.default_rng(1)
    pred = g.normal(size=32).astype(np.float32)
    target = g.exponential(size=32).astype(np.float32)
    target[3] = target[-4]  # a tie counts as "not greater"
    t_pred = torch.tensor(pred, requires_grad=True)
    ref = torch_loss_pred_loss(t_pred, torch.tensor(target), margin)
    ref.backward()
    val, grad = jax.value_and_grad(loss_prediction_loss)(jnp.asarray(pred), jnp.asarray(target), margin)
    np.testing.assert_allclose(val, ref.item(), rtol=1e-6)
    np.testing.assert_allclose(grad, t_pred.grad.numpy(), atol=1e-6)


def test_odd_batch_drops_last_and_tiny_batch_errors():
    pred, target = jnp.arange(5.0), jnp.arange(5.0)[::-1]
    np.testing.assert_allclose(loss_prediction_loss(pred, target), loss_prediction_loss(pred[:4], target[:4]))
    with pytest.raises(ValueError, match="at least 2"):
        loss_prediction_loss(pred[:1], target[:1])


def test_selects_highest_predicted_loss():
    lp = np.array([0.1, 5.0, 3.0, 9.0, 4.0], np.float32)
    labeled = np.array([False, False, False, True, False])
    got = strategies.get("learning_loss")(0, {"loss_pred": lp}, labeled, 3)
    np.testing.assert_array_equal(got, [1, 4, 2])
