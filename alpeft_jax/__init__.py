"""alpeft_jax: active learning with parameter-efficient fine-tuning of foundation models in JAX/Flax."""

from __future__ import annotations

from typing import Any

__version__ = "0.1.0"
__all__ = ["load_model"]


def load_model(path: Any, **kwargs: Any) -> Any:
    """A finished run's model with `predict(images)` / `logits(images)`, from a native export or a run's workdir."""
    from alpeft_jax.trained import load_model as load

    return load(path, **kwargs)
