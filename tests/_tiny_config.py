"""The tiny run config (tests/configs/tiny.py) as `--config=tests/configs/tiny.py:ARG` builds it."""

from __future__ import annotations

import os

import ml_collections

from alpeft_jax.config import load_config_file

TINY = os.path.join(os.path.dirname(os.path.abspath(__file__)), "configs", "tiny.py")


def tiny_config(arg: str = "") -> ml_collections.ConfigDict:
    """The tiny config with its comma-separated arguments (e.g. 'rounds=2,epochs=1')."""
    return load_config_file(f"{TINY}:{arg}")
