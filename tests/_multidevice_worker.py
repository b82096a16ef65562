"""Shared setup of the scoring tests, and a script that scores a tiny pool on every visible device.

As a script (`python _multidevice_worker.py CHECKPOINT_DIR OUT.npz`, started with
`XLA_FLAGS=--xla_force_host_platform_device_count=8`) it writes `run_all(jax.devices())` to OUT.npz, for
the test to compare with the same run on one device in its own process.
"""

from __future__ import annotations

import os
import sys
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from alpeft_jax import backbones, data, strategies
from alpeft_jax.inputs import SplitInputs
from alpeft_jax.models.adapted import AdaptConfig, AdaptedModel
from alpeft_jax.models.heads import LossPredictionHead
from alpeft_jax.models.lora import LoraConfig
from alpeft_jax.scoring import FeatureCache, PoolScorer, Sharder, make_mesh

CLASSES = ["a", "b", "c", "d", "e"]
IMAGE = 28  # 4x4 patches of 7 px
N_POOL = 203  # not a multiple of the chunk
CHUNK = 64
MC = 3
# LoRA on every block's q/k/v: nothing to cache; on blocks 1-2 only: cache the hidden state after block 0.
TARGETS = {"images": (r".*/attn/(q|k|v)",), "hidden": (r".*block_[12]/attn/(q|v)",)}


def make_checkpoint(path: str) -> str:
    """Save a random 3-block DINOv2 (width 24, 3 heads) with non-trivial weights under `path`."""
    import torch
    import transformers

    cfg = transformers.Dinov2Config(
        num_hidden_layers=3,
        hidden_size=24,
        num_attention_heads=3,
        mlp_ratio=2,
        image_size=IMAGE,
        patch_size=7,
        layerscale_value=0.5,
    )
    torch.manual_seed(0)
    model = transformers.Dinov2Model(cfg).eval()
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.2 * torch.randn_like(p))
    model.save_pretrained(path)
    return path


def model_for(bb: backbones.Backbone, kind: str, dropout: float = 0.0) -> AdaptedModel:
    """A linear probe ("features") or LoRA + linear head on the targets of `kind` ("images" / "hidden")."""
    if kind == "features":
        return AdaptedModel(bb, CLASSES, AdaptConfig(mode="linear"))
    cfg = LoraConfig(rank=2, alpha=2.0, dropout=dropout, targets=TARGETS[kind])
    return AdaptedModel(bb, CLASSES, AdaptConfig(mode="lora", lora=cfg, head="linear"))


def trainable_for(model: AdaptedModel, seed: int = 1, loss_head: bool = False) -> dict[str, Any]:
    """A trainable tree with non-zero LoRA B factors (so LoRA changes the output) and a random head."""
    tree = model.init(jax.random.key(seed))
    g = np.random.default_rng(seed)
    noise = lambda path, x: jnp.asarray(g.normal(size=x.shape) * 0.3, x.dtype)
    tree = jax.tree_util.tree_map_with_path(noise, tree)  # every leaf random: A, B and the head
    if loss_head:
        tree["loss_pred"] = LossPredictionHead().init(jax.random.key(seed + 7), jnp.zeros((1, len(CLASSES))))["params"]
    return tree


def pool_images(n: int = N_POOL, seed: int = 0) -> np.ndarray:
    """Random normalised images float32[n, 28, 28, 3]."""
    return np.random.default_rng(seed).normal(size=(n, IMAGE, IMAGE, 3)).astype(np.float32)


def image_batches(images: np.ndarray, positions: np.ndarray, batch_size: int, fill: float = 0.0) -> Any:
    """Padded `Batch`es {inputs, label, pos, _mask} of images[positions] in order (already preprocessed images)."""
    positions = np.asarray(positions, np.int64)
    for start in range(0, len(positions), batch_size):
        pos = np.full(batch_size, -1, np.int64)
        part = positions[start : start + batch_size]
        k = len(part)
        pos[:k] = part
        x = np.full((batch_size, *images.shape[1:]), fill, np.float32)
        x[:k] = images[part]
        yield {"inputs": x, "label": np.full(batch_size, -1, np.int32), "pos": pos, "_mask": np.arange(batch_size) < k}


def cached_inputs(cache: FeatureCache, sharder: Sharder | None = None) -> SplitInputs:
    """The driver's inputs of a pool of len(cache) rows read from `cache` (the images are never decoded)."""
    n = len(cache)
    source = data.ArraySource(np.zeros((n, 1, 1, 3), np.uint8), None, CLASSES)
    # the preprocessing spec is never used: the rows come from the cache
    inputs = SplitInputs(source, np.arange(n), sharder or Sharder(), image_size=IMAGE, mean=(0.5,) * 3, std=(0.25,) * 3)
    return inputs.with_cache(cache)


def selections(pool: dict[str, np.ndarray], seed: int = 3) -> dict[str, np.ndarray]:
    """Entropy, coreset and BADGE selections through PCB on `pool` with a fixed labelled set and rng."""
    n = pool["logits"].shape[0]
    g = np.random.default_rng(seed)
    labeled = np.zeros(n, bool)
    labeled[g.choice(n, 10, replace=False)] = True
    labels = np.where(labeled, g.integers(0, len(CLASSES), n), -1)
    pool = dict(pool, labels=labels)
    return {
        s: np.asarray(strategies.select_with_pcb(s, 11, pool, labeled, 8, 30)) for s in ("entropy", "coreset", "badge")
    }


def run_all(ckpt: str, devices: list[Any], state: dict[str, Any] | None = None) -> dict[str, np.ndarray]:
    """Cache and score the pool for every input kind on a mesh over `devices`; arrays and selections by name.

    `state`, when given, receives the backbone, the pool images ("pool"), the sharder and per kind the
    (model, trainable, scorer, cache).
    """
    bb = backbones.load(ckpt)
    sharder = Sharder(make_mesh(devices))
    images = pool_images()
    share = np.arange(N_POOL)
    out: dict[str, np.ndarray] = {}
    if state is not None:
        state.update(bb=bb, pool=images, sharder=sharder)
    for kind in ("images", "hidden", "features"):
        model = model_for(bb, kind, dropout=0.25 if kind == "images" else 0.0)
        trainable = trainable_for(model, loss_head=kind == "images")
        scorer = PoolScorer(model, kind, chunk_size=CHUNK, sharder=sharder)
        cache = None
        if kind == "images":
            batches = image_batches(images, share, CHUNK)
        else:
            cache = FeatureCache.build(
                model, image_batches(images, share, CHUNK), N_POOL, sharder=sharder, chunk_size=CHUNK
            )
            out[f"{kind}/cache"] = np.asarray(cache.array)
            batches = cached_inputs(cache, sharder).batches(share, CHUNK)
        pool = scorer.score(trainable, batches, N_POOL, mc_samples=MC if kind == "images" else 0, rng=jax.random.key(5))
        if state is not None:
            state[kind] = (model, trainable, scorer, cache)
        for k, v in pool.items():
            out[f"{kind}/{k}"] = v
        for s, rows in selections(pool).items():
            out[f"{kind}/select/{s}"] = rows
    return out


if __name__ == "__main__":
    if jax.device_count() != 8:
        sys.exit(f"expected 8 devices (XLA_FLAGS={os.environ.get('XLA_FLAGS')!r}), got {jax.device_count()}")
    np.savez(sys.argv[2], **run_all(sys.argv[1], jax.devices()))
