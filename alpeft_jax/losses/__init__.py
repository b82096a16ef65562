"""Training losses: cross-entropy and the uncertainty-calibration losses (C-PEAL, AvUC)."""

from alpeft_jax.losses.calibration import (
    WEIGHTINGS,
    avu_threshold,
    avuc_loss,
    calibration_loss,
    calibration_weight,
    get,
    predictive_entropy,
)
from alpeft_jax.losses.classification import cross_entropy

__all__ = [
    "WEIGHTINGS",
    "avu_threshold",
    "avuc_loss",
    "calibration_loss",
    "calibration_weight",
    "cross_entropy",
    "get",
    "predictive_entropy",
]
