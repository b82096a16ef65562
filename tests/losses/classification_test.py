"""Masked cross-entropy against torch.nn.functional.cross_entropy."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
import torch.nn.functional as F

from alpeft_jax.losses import cross_entropy


@pytest.mark.parametrize("smoothing", [0.0, 0.1, 0.5])
def test_matches_torch_value_and_gradient(smoothing):
    rng = np.random.default_rng(0)
    logits = (rng.normal(size=(16, 9)) * 4).astype(np.float32)
    labels = rng.integers(0, 9, size=16).astype(np.int32)
    x = torch.tensor(logits, requires_grad=True)
    ref = F.cross_entropy(x, torch.tensor(labels, dtype=torch.long), label_smoothing=smoothing)
    (g_ref,) = torch.autograd.grad(ref, x)
    v, g = jax.value_and_grad(lambda z: cross_entropy(z, labels, label_smoothing=smoothing))(jnp.asarray(logits))
    np.testing.assert_allclose(float(v), float(ref.detach()), rtol=1e-6)
    np.testing.assert_allclose(np.asarray(g), g_ref.numpy(), rtol=1e-5, atol=1e-7)


def test_padding_rows_are_ignored():
    rng = np.random.default_rng(1)
    logits = rng.normal(size=(20, 5)).astype(np.float32)
    labels = rng.integers(0, 5, size=20).astype(np.int32)
    mask = rng.random(20) < 0.6
    ref = F.cross_entropy(torch.tensor(logits[mask]), torch.tensor(labels[mask], dtype=torch.long), label_smoothing=0.2)
    junk = logits.copy()
    junk[~mask] = 1e4  # anything in the padding rows, including an out-of-range label
    pad_labels = np.where(mask, labels, -1).astype(np.int32)
    fn = lambda z: cross_entropy(z, pad_labels, mask=mask, label_smoothing=0.2)
    v, g = jax.value_and_grad(fn)(jnp.asarray(junk))
    np.testing.assert_allclose(float(v), float(ref.detach()), rtol=1e-6)
    assert not np.any(np.asarray(g)[~mask])
    assert float(cross_entropy(logits, labels, mask=np.zeros(20, bool))) == 0.0


def test_bf16_and_errors():
    rng = np.random.default_rng(2)
    logits = rng.normal(size=(6, 4)).astype(np.float32)
    labels = np.arange(6, dtype=np.int32) % 4
    z16 = jnp.asarray(logits, jnp.bfloat16)
    ref = F.cross_entropy(torch.tensor(np.asarray(z16.astype(jnp.float32))), torch.tensor(labels, dtype=torch.long))
    out = cross_entropy(z16, labels)
    assert out.dtype == jnp.float32
    np.testing.assert_allclose(float(out), float(ref.detach()), rtol=1e-6)
    with pytest.raises(ValueError, match="label_smoothing"):
        cross_entropy(logits, labels, label_smoothing=1.5)
    with pytest.raises(ValueError, match="labels"):
        cross_entropy(logits, labels[:2])
