"""Shared fixtures: tiny random Hugging Face checkpoints saved with `save_pretrained`."""

from __future__ import annotations

import pathlib
from collections.abc import Callable
from typing import Any

import pytest

# A tiny CLIP with odd widths, 3 heads, a non-default image size and towers of different depth.
# eos_token_id 60 is not the largest id, so first-EOS pooling and argmax pooling disagree.
TINY_CLIP = dict(
    text_config=dict(
        vocab_size=99,
        hidden_size=36,
        intermediate_size=50,
        num_hidden_layers=3,
        num_attention_heads=3,
        max_position_embeddings=16,
        hidden_act="quick_gelu",
        bos_token_id=97,
        eos_token_id=60,
        pad_token_id=1,
    ),
    vision_config=dict(
        hidden_size=24,
        intermediate_size=37,
        num_hidden_layers=2,
        num_attention_heads=3,
        image_size=40,
        patch_size=8,
        hidden_act="quick_gelu",
    ),
    projection_dim=20,
)


def build_tiny_clip(config: dict[str, Any] | None = None, seed: int = 0, noise: float = 0.1) -> Any:
    """A random `transformers.CLIPModel` in eval mode; every tensor is perturbed so no weight is trivial."""
    import torch
    from transformers import CLIPConfig, CLIPModel

    torch.manual_seed(seed)
    model = CLIPModel(CLIPConfig(**(config or TINY_CLIP))).eval()
    with torch.no_grad():
        for p in model.parameters():
            p.add_(noise * torch.randn_like(p))  # LayerNorm weights away from 1, biases away from 0
    return model


@pytest.fixture(scope="session")
def tiny_clip_config() -> dict[str, Any]:
    """CLIPConfig kwargs of the default tiny CLIP."""
    return TINY_CLIP


@pytest.fixture(scope="session")
def tiny_clip_factory(tmp_path_factory: pytest.TempPathFactory) -> Callable[..., tuple[Any, pathlib.Path]]:
    """Factory `(config=None, seed=0, pytorch_bin=False, **save_kwargs) -> (torch CLIPModel, directory)`."""

    def make(
        config: dict[str, Any] | None = None, seed: int = 0, pytorch_bin: bool = False, **save_kwargs: Any
    ) -> tuple[Any, pathlib.Path]:
        import torch

        model = build_tiny_clip(config, seed)
        path = tmp_path_factory.mktemp("tiny_clip")
        model.save_pretrained(path, **save_kwargs)
        if pytorch_bin:  # the pre-safetensors format: transformers 5 no longer writes it itself
            for f in path.glob("model*.safetensors*"):
                f.unlink()
            torch.save(model.state_dict(), path / "pytorch_model.bin")
        return model, path

    return make


@pytest.fixture(scope="session")
def tiny_clip_dir(tiny_clip_factory: Callable[..., tuple[Any, pathlib.Path]]) -> pathlib.Path:
    """A saved tiny CLIPModel directory (config.json + model.safetensors); copy it before editing."""
    return tiny_clip_factory()[1]
