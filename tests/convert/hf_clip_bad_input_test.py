"""Broken or mismatched CLIP checkpoints fail with one clear CheckpointError."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest

pytest.importorskip("transformers")

from safetensors.numpy import load_file, save_file  # noqa: E402

from alpeft_jax import backbones  # noqa: E402
from alpeft_jax.convert import hf_clip  # noqa: E402
from alpeft_jax.convert.common import CheckpointError  # noqa: E402


@pytest.fixture
def clip_dir(tiny_clip_dir, tmp_path):
    """A private copy of the tiny CLIP checkpoint that a test may damage."""
    d = tmp_path / "clip"
    shutil.copytree(tiny_clip_dir, d)
    return d


def _edit_config(d, fn):
    config = json.loads((d / "config.json").read_text())
    fn(config)
    (d / "config.json").write_text(json.dumps(config))


def _edit_weights(d, fn):
    state = load_file(str(d / "model.safetensors"))
    fn(state)
    save_file(state, str(d / "model.safetensors"), metadata={"format": "pt"})


def test_the_undamaged_copy_loads(clip_dir):
    assert backbones.load(str(clip_dir)).family == "clip"


def test_missing_directory(tmp_path):
    with pytest.raises(CheckpointError, match="not found"):
        backbones.load(str(tmp_path / "nowhere"))
    with pytest.raises(CheckpointError, match="not found"):
        hf_clip.load(str(tmp_path / "nowhere"))


def test_directory_without_config(tmp_path):
    with pytest.raises(CheckpointError, match="no config.json"):
        backbones.load(str(tmp_path))


def test_directory_without_weights(clip_dir):
    (clip_dir / "model.safetensors").unlink()
    with pytest.raises(CheckpointError, match=r"No weights in .*model\.safetensors.*save_pretrained"):
        backbones.load(str(clip_dir))


def test_truncated_safetensors(clip_dir):
    path = clip_dir / "model.safetensors"
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointError, match="Corrupt or unreadable safetensors file"):
        backbones.load(str(clip_dir))


def test_unknown_model_type(clip_dir):
    _edit_config(clip_dir, lambda c: c.update(model_type="not_a_model"))
    with pytest.raises(CheckpointError, match="unsupported model_type 'not_a_model'"):
        backbones.load(str(clip_dir))
    with pytest.raises(CheckpointError, match="not 'clip'"):
        hf_clip.load(str(clip_dir))


def test_config_disagrees_with_weights(clip_dir):
    _edit_config(clip_dir, lambda c: c["vision_config"].update(intermediate_size=40))  # weights have 37
    with pytest.raises(CheckpointError) as e:
        backbones.load(str(clip_dir))
    msg = str(e.value)
    assert "shape mismatch 6" in msg  # fc1 kernel and bias, fc2 kernel, in each of the 2 blocks
    assert "vision_model.encoder.layers.0.mlp.fc1.weight -> img/encoder/block_0/mlp/fc1/kernel" in msg
    assert "checkpoint (24, 37) vs model (24, 40)" in msg
    assert "missing" not in msg and "unexpected" not in msg


def test_inconsistent_config(clip_dir):
    _edit_config(clip_dir, lambda c: c["text_config"].update(num_attention_heads=5))
    with pytest.raises(CheckpointError, match="hidden_size 36 is not divisible by num_attention_heads 5"):
        backbones.load(str(clip_dir))


def test_missing_tensor(clip_dir):
    _edit_weights(clip_dir, lambda s: s.pop("text_model.encoder.layers.2.self_attn.k_proj.bias"))
    with pytest.raises(CheckpointError, match=r"missing 1: txt/encoder/block_2/attn/k/bias\)"):
        backbones.load(str(clip_dir))


def test_extra_tensor(clip_dir):
    _edit_weights(clip_dir, lambda s: s.update({"vision_model.extra_head.weight": np.zeros((2, 2), np.float32)}))
    with pytest.raises(CheckpointError, match=r"unexpected 1: vision_model\.extra_head\.weight\)"):
        backbones.load(str(clip_dir))


def test_extra_block_from_a_deeper_model(clip_dir):
    # A checkpoint deeper than its config says: the surplus block is reported, not silently dropped.
    def add_block(state):
        for name in [k for k in state if k.startswith("vision_model.encoder.layers.1.")]:
            state[name.replace("layers.1.", "layers.2.")] = state[name]

    _edit_weights(clip_dir, add_block)
    with pytest.raises(CheckpointError, match=r"unexpected 16: .*vision_model\.encoder\.layers\.2\."):
        backbones.load(str(clip_dir))


@pytest.mark.parametrize("order", ["arange", "shuffled"])
def test_position_ids_buffers_are_ignored(clip_dir, tiny_clip_dir, tiny_clip_config, order):
    # transformers keeps position_ids as a non-persistent buffer (always arange); old checkpoints carry it. Loading
    # must ignore it: the outputs equal PyTorch's on the checkpoint without it, even when the stored ids are shuffled.
    import torch
    from transformers import CLIPModel

    g = np.random.default_rng(0)
    pos = {"text": np.arange(16, dtype=np.int64)[None], "vision": np.arange(26, dtype=np.int64)[None]}
    if order == "shuffled":
        pos = {k: g.permutation(v[0])[None] for k, v in pos.items()}
    _edit_weights(clip_dir, lambda s: s.update({f"{k}_model.embeddings.position_ids": v for k, v in pos.items()}))
    assert "text_model.embeddings.position_ids" in load_file(str(clip_dir / "model.safetensors"))
    bb = backbones.load(str(clip_dir))
    assert bb.family == "clip"
    t = tiny_clip_config["text_config"]
    images = g.normal(size=(2, 3, 40, 40)).astype(np.float32)
    ids = g.integers(2, 59, size=(3, 16))
    ids[:, 0] = t["bos_token_id"]
    for i, end in enumerate((5, 9, 15)):
        ids[i, end:] = t["eos_token_id"]
    ref = CLIPModel.from_pretrained(str(tiny_clip_dir)).eval()
    with torch.no_grad():
        out = ref(input_ids=torch.from_numpy(ids), pixel_values=torch.from_numpy(images))
    img = np.asarray(bb.encode_image(np.transpose(images, (0, 2, 3, 1))))
    txt = np.asarray(bb.encode_text(ids))
    unit = lambda v: v / np.linalg.norm(v, axis=-1, keepdims=True)
    np.testing.assert_allclose(unit(img), out.image_embeds.numpy(), atol=1e-5)
    np.testing.assert_allclose(unit(txt), out.text_embeds.numpy(), atol=1e-5)
