"""Fixtures for the adaptation tests: tiny randomly initialised CLIP (real 49,408-token vocabulary) and DINOv2."""

from __future__ import annotations

import pytest
from _tiny_backbones import make_clip_backbone, make_dinov2_backbone

from alpeft_jax import backbones


@pytest.fixture(scope="session")
def vocab_clip() -> backbones.Backbone:
    """Tiny CLIP with the real CLIP vocabulary: 2 image blocks, 1 text block, widths 16, 16x16 images."""
    return make_clip_backbone()


@pytest.fixture(scope="session")
def tiny_dinov2() -> backbones.Backbone:
    """Tiny DINOv2 with 2 blocks of width 16."""
    return make_dinov2_backbone()


@pytest.fixture(scope="module")
def clip_text_512() -> backbones.Backbone:
    """A CLIP whose text tower has ViT-B's width 512 (one block; zero weights: for shapes and counts)."""
    return make_clip_backbone(text_width=512, text_depth=1, heads=8, embed_dim=16, zeros=True)
