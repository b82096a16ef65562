"""The driver with a CLIP backbone: C-PEAL's prompt-learning and LoRA modes and a zero-shot-initialised probe."""

import jax
import numpy as np
import pytest

from alpeft_jax import loop
from alpeft_jax.config import base

TINY_CLIP_STD_VOCAB = dict(  # the released 49,408-token vocabulary, so real prompts tokenize
    text_config=dict(
        vocab_size=49408,
        hidden_size=32,
        intermediate_size=48,
        num_hidden_layers=2,
        num_attention_heads=2,
        max_position_embeddings=77,
        hidden_act="quick_gelu",
    ),
    vision_config=dict(
        hidden_size=24,
        intermediate_size=40,
        num_hidden_layers=2,
        num_attention_heads=2,
        image_size=32,
        patch_size=8,
        hidden_act="quick_gelu",
    ),
    projection_dim=16,
)


@pytest.fixture(scope="module")
def clip_dir(tiny_clip_factory):
    return tiny_clip_factory(TINY_CLIP_STD_VOCAB, seed=5)[1]


def _config(clip_dir, mode, **adapt):
    c = base()
    c.backbone = str(clip_dir)
    c.data.name = "digits"
    c.data.max_pool = 120
    c.data.max_test = 40
    c.data.coop_names = False
    c.data.num_threads = 1
    c.adapt.mode = mode
    c.adapt.prompt.n_ctx = 4
    for k, v in adapt.items():
        setattr(c.adapt, k, v)
    c.train.epochs = 2
    c.train.batch_size = 8
    c.train.augment = mode == "lora"  # LoRA on the image tower trains on augmented images
    c.al.rounds = 2
    c.al.budget = 6
    c.al.initial = 10
    c.scoring.batch_size = 32
    return c


@pytest.mark.parametrize(
    "mode, adapt, kind",
    [("prompt", {}, "features"), ("lora", {}, "images"), ("linear", {"head": "zeroshot"}, "features")],
)
def test_clip_modes_run_two_rounds(tmp_path, clip_dir, mode, adapt, kind):
    run = loop.Run(_config(clip_dir, mode, **adapt), str(tmp_path))
    assert run.model.input_kind == kind  # prompts and probes never recompute the frozen image tower
    results = run.run()
    assert [r["n_labeled"] for r in results] == [10, 16]
    for r in results:
        assert 0.0 <= r["accuracy"] <= 1.0 and np.isfinite(r["nll"]) and len(r["selected_ids"]) in (10, 6)
    assert not set(results[0]["selected_ids"]) & set(results[1]["selected_ids"])
    # Each round's metrics are those of its saved model: restore the checkpoint, predict the 40 test images and
    # score them in NumPy (a wrong round, a lost mask or padding rows counted would all show).
    like = run.trainer.init(jax.random.key(0))
    for r, res in enumerate(results):
        state, _ = run.rounds_store.restore(r, like)
        test = run.inputs.get("test")
        logits, labels = [], []
        for lg, _, batch in run.trainer.predict(
            state["trainable"], test.batches(np.arange(len(test)), 16, labels=run.test.labels), kind=test.kind
        ):
            keep = np.asarray(batch["_mask"], bool)
            logits.append(np.asarray(lg, np.float64)[keep])
            labels.append(np.asarray(batch["label"])[keep])
        logits, labels = np.concatenate(logits), np.concatenate(labels)
        assert len(labels) == 40 and np.array_equal(labels, run.test.labels)
        logp = logits - logits.max(1, keepdims=True)
        logp -= np.log(np.exp(logp).sum(1, keepdims=True))
        assert res["accuracy"] == pytest.approx(np.mean(logits.argmax(1) == labels), abs=1e-6)
        assert res["nll"] == pytest.approx(-logp[np.arange(40), labels].mean(), rel=1e-4)
