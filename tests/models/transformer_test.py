"""Attention kernel choice: where cuDNN's fused kernel refuses (here: no cuDNN on CPU), XLA's runs instead."""

import logging

import jax
import jax.numpy as jnp
import numpy as np

from alpeft_jax.models import transformer


def _apply(dtype):
    m = transformer.Attention(num_heads=2, dtype=dtype)
    x = jax.random.normal(jax.random.key(0), (3, 5, 16), dtype)
    params = m.init(jax.random.key(1), x)
    return np.asarray(m.apply(params, x), np.float32)


def test_refused_cudnn_attention_falls_back_to_xla_with_one_warning(monkeypatch, caplog):
    expected = _apply(jnp.bfloat16)  # the CPU default: XLA attention
    monkeypatch.setattr(transformer, "attention_implementation", lambda: "cudnn")
    monkeypatch.setattr(transformer, "_CUDNN_REFUSALS", set())
    with caplog.at_level(logging.WARNING):
        got = _apply(jnp.bfloat16)
        again = _apply(jnp.bfloat16)
    np.testing.assert_array_equal(got, expected)
    np.testing.assert_array_equal(again, expected)
    warned = [r for r in caplog.records if "cuDNN fused attention unavailable" in r.getMessage()]
    assert len(warned) == 1, [r.getMessage() for r in caplog.records]


def test_f32_never_asks_for_cudnn(monkeypatch):
    asked = []
    real = jax.nn.dot_product_attention
    monkeypatch.setattr(transformer, "attention_implementation", lambda: "cudnn")

    def spy(*a, **k):
        asked.append(k["implementation"])
        return real(*a, **k)

    monkeypatch.setattr(jax.nn, "dot_product_attention", spy)
    _apply(jnp.float32)
    assert asked and set(asked) == {"xla"}
