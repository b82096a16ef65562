"""alpeft_jax: active learning with parameter-efficient fine-tuning of foundation models in JAX/Flax."""

__version__ = "0.1.0"
