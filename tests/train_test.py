"""Trainer (alpeft_jax.train): compile-once steps, toy tasks per mode, frozen backbone, SGD vs torch, masks, NaN."""

from __future__ import annotations

import math
from collections.abc import Iterator
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from _tiny_backbones import make_clip_backbone, make_dinov2_backbone

from alpeft_jax import backbones, config, evaluate, loop, metrics, optim, train
from alpeft_jax.convert.common import flatten
from alpeft_jax.models import lora, prompts
from alpeft_jax.models.adapted import AdaptConfig, AdaptedModel
from alpeft_jax.strategies.learning_loss import LossPredictionHead, loss_prediction_loss

# ----------------------------------------------------------------------------------------------- helpers
COLOURS = np.array([[1.5, -1.5, -1.5], [-1.5, 1.5, -1.5], [-1.5, -1.5, 1.5], [1.5, 1.5, -1.5]], np.float32)
NAMES = ["red", "green", "blue", "yellow"]


def _dinov2(seed: int = 0) -> backbones.Backbone:
    return make_dinov2_backbone(depth=1, seed=seed)


def _clip(seed: int = 0) -> backbones.Backbone:
    return make_clip_backbone(depth=1, logit_scale=100.0, seed=seed)  # a trained CLIP's scale


@pytest.fixture(scope="module")
def dino() -> backbones.Backbone:
    return _dinov2()


@pytest.fixture(scope="module")
def clip_bb() -> backbones.Backbone:
    return _clip()


def colour_images(n: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """n noisy 16x16 images of 4 classes that differ by colour; labels cycle 0..3."""
    rng = np.random.default_rng(seed)
    labels = np.arange(n) % 4
    images = COLOURS[labels][:, None, None, :] + 0.2 * rng.standard_normal((n, 16, 16, 3)).astype(np.float32)
    return images.astype(np.float32), labels.astype(np.int32)


def padded_batches(
    inputs: np.ndarray,
    labels: np.ndarray,
    batch_size: int,
    seed: int | None = None,
    drop_last: bool = True,
    garbage: bool = False,
) -> Iterator[dict[str, np.ndarray]]:
    """Fixed-shape batches {"inputs", "label", "_mask"}; padding rows are zeros (or random garbage)."""
    n = len(labels)
    order = np.arange(n) if seed is None else np.random.default_rng(seed).permutation(n)
    rng = np.random.default_rng(123)
    for s in range(train.steps_per_epoch(n, batch_size, drop_last)):
        idx = order[s * batch_size : (s + 1) * batch_size]
        pad = batch_size - len(idx)
        filler = 5 * rng.standard_normal((pad, *inputs.shape[1:])) if garbage else np.zeros((pad, *inputs.shape[1:]))
        yield {
            "inputs": np.concatenate([inputs[idx], filler.astype(inputs.dtype)]),
            "label": np.concatenate([labels[idx], rng.integers(0, 4, pad) if garbage else np.zeros(pad)]).astype(
                np.int32
            ),
            "_mask": np.arange(batch_size) < len(idx),
        }


def _numpy_tree(tree: Any) -> dict[str, np.ndarray]:
    return {k: np.array(v) for k, v in flatten(tree).items()}


def _shapes(tree: Any) -> list[tuple[int, ...]]:
    return sorted(tuple(x.shape) for x in jax.tree.leaves(tree))


# ------------------------------------------------------------------------------------------ compile once
def test_steps_compile_once_across_growing_rounds(dino):
    model = AdaptedModel(dino, NAMES, AdaptConfig(mode="lora", lora=lora.LoraConfig(rank=2, dropout=0.1)))
    assert model.input_kind == "images"
    trainer = train.Trainer(model, train.TrainConfig(epochs=2, batch_size=32, calibration="cpeal", loss_scale="none"))
    pool_x, pool_y = colour_images(70, seed=1)
    test_x, test_y = colour_images(37, seed=2)
    for round_, n in enumerate((5, 17, 40, 70)):
        state = trainer.init(jax.random.key(round_))
        state, history = trainer.fit(
            state,
            lambda e, n=n: padded_batches(pool_x[:n], pool_y[:n], 32, seed=e),  # noqa: B023
        )
        assert [h["steps"] for h in history] == [train.steps_per_epoch(n, 32)] * 2
        metrics = trainer.evaluate(state["trainable"], padded_batches(test_x, test_y, 32, drop_last=False))
        assert metrics["n"] == 37
    assert trainer.traces == {"train": 1, "eval": 1}


# --------------------------------------------------------------------------------------------- toy tasks
def _run_toy(backbone, config, kind_of_inputs, train_config, n=32):
    model = AdaptedModel(backbone, NAMES, config)
    images, labels = colour_images(n, seed=3)
    inputs = np.asarray(jax.jit(model.prefix)(images)) if kind_of_inputs != "images" else images
    trainer = train.Trainer(model, train_config, kind=kind_of_inputs)
    frozen_before = _numpy_tree(backbone.params)
    state = trainer.init(jax.random.key(0))
    initial = _numpy_tree(state["trainable"])
    # The optimiser state covers only the trainable tree: its array leaves are one momentum per trainable leaf.
    assert _shapes([x for x in jax.tree.leaves(state["opt_state"]) if x.ndim]) == _shapes(state["trainable"])
    state, history = trainer.fit(state, lambda e: padded_batches(inputs, labels, 16, seed=e))
    frozen_after = _numpy_tree(backbone.params)
    assert frozen_before.keys() == frozen_after.keys()
    for k, v in frozen_before.items():
        np.testing.assert_array_equal(frozen_after[k], v, err_msg=k)
    final = _numpy_tree(state["trainable"])
    assert final.keys() == initial.keys()
    metrics = trainer.evaluate(state["trainable"], padded_batches(inputs, labels, 16, drop_last=False))
    return model, trainer, state, history, metrics, initial, final


@pytest.mark.parametrize("mode", ["lora", "prompt"])
def test_clip_toy_task(clip_bb, mode):
    if mode == "lora":  # LoRA on the image tower; the text tower (frozen "X"*16 prompts) is encoded once
        cfg = lora.LoraConfig(rank=4, alpha=4.0, dropout=0.0, targets=lora.TOWER_TARGETS["vision"])
        config = AdaptConfig(mode="lora", lora=cfg)
        tc = train.TrainConfig(epochs=12, batch_size=16, lr=0.1, calibration="none", loss_scale="none")
    else:
        config = AdaptConfig(mode="prompt", prompt=prompts.PromptConfig(n_ctx=4))
        tc = train.TrainConfig(epochs=20, batch_size=16, lr=0.005, calibration="none", loss_scale="none")
    model = AdaptedModel(clip_bb, NAMES, config)
    kind = model.input_kind
    assert kind == ("images" if mode == "lora" else "features")
    _, _, state, history, metrics, initial, final = _run_toy(clip_bb, config, kind, tc)
    assert history[-1]["loss"] < 0.5 * history[0]["loss"], [h["loss"] for h in history]
    assert metrics["accuracy"] == 1.0 and history[-1]["train_accuracy"] == 1.0
    assert set(state["trainable"]) == ({"lora"} if mode == "lora" else {"prompt"})
    assert any(not np.array_equal(initial[k], final[k]) for k in initial)


def test_linear_head_toy_task_and_gradients_only_for_trainable(dino):
    config = AdaptConfig(mode="linear")
    tc = train.TrainConfig(epochs=10, batch_size=16, lr=1.0, calibration="avuc", loss_scale="none")
    model, trainer, state, history, metrics, initial, final = _run_toy(dino, config, "features", tc)
    assert model.input_kind == "features" and set(state["trainable"]) == {"head"}
    assert history[-1]["loss"] < 0.5 * history[0]["loss"], [h["loss"] for h in history]
    assert metrics["accuracy"] == 1.0

    # Gradients: exactly the trainable tree, non-zero; the backbone is a constant of the loss.
    lora_model = AdaptedModel(dino, NAMES, AdaptConfig(mode="lora", lora=lora.LoraConfig(dropout=0.0), head="linear"))
    lora_trainer = train.Trainer(lora_model, train.TrainConfig(calibration="none", loss_scale="none"))
    trainable = lora_model.init(jax.random.key(1))
    trainable["lora"] = jax.tree.map(lambda x: x + 0.1, trainable["lora"])  # B != 0: A gets gradients too
    batch = next(padded_batches(*colour_images(8), 8))
    grads, _ = jax.jit(jax.grad(lora_trainer._loss, has_aux=True))(trainable, batch, jax.random.key(0), 0.0)
    assert jax.tree.structure(grads) == jax.tree.structure(trainable)
    assert set(grads) == {"lora", "head"}
    assert all(float(jnp.abs(g).max()) > 0 for g in jax.tree.leaves(grads))


# ------------------------------------------------------------------------------------- lr and torch SGD
@pytest.mark.parametrize("optimizer", ["sgd", "adamw"])
def test_lr_sequence_and_optimizer_match_torch(dino, optimizer):
    torch = pytest.importorskip("torch")
    epochs, base_lr, wd = 5, (0.5 if optimizer == "sgd" else 0.05), 5e-4
    model = AdaptedModel(dino, NAMES, AdaptConfig(mode="linear"))
    images, labels = colour_images(20, seed=4)
    feats = np.asarray(jax.jit(model.prefix)(images))
    tc = train.TrainConfig(
        epochs=epochs,
        batch_size=8,
        lr=base_lr,
        calibration="none",
        weight_decay=wd,
        optimizer=optimizer,
        loss_scale="none",
    )
    trainer = train.Trainer(model, tc, kind="features")
    seen: list[float] = []
    step = trainer._train_step

    def recording(state, batch, epoch):
        seen.append(trainer.lr(int(epoch)))
        return step(state, batch, epoch)

    trainer._train_step = recording

    def batches(e):  # 8 + 8 + 4 padded rows per epoch, a new order each epoch
        return padded_batches(feats, labels, 8, seed=e, drop_last=False)

    state = trainer.init(jax.random.key(0))
    head0 = jax.tree.map(np.array, state["trainable"]["head"])
    state, _ = trainer.fit(state, batches)

    expected = [1e-5] + [base_lr * 0.5 * (1 + math.cos(math.pi * (e - 1) / epochs)) for e in range(1, epochs)]
    assert expected == pytest.approx([optim.lr_at_epoch(e, epochs, base_lr) for e in range(epochs)], rel=1e-12)
    np.testing.assert_allclose(seen, np.repeat(expected, 3), rtol=1e-6)

    lin = torch.nn.Linear(16, 4).double()
    with torch.no_grad():
        lin.weight.copy_(torch.tensor(head0["kernel"].T))
        lin.bias.copy_(torch.tensor(head0["bias"]))
    if optimizer == "sgd":
        opt = torch.optim.SGD(lin.parameters(), lr=expected[0], momentum=0.9, weight_decay=wd)
    else:
        opt = torch.optim.AdamW(lin.parameters(), lr=expected[0], betas=(0.9, 0.999), eps=1e-8, weight_decay=wd)
    for e in range(epochs):
        for group in opt.param_groups:
            group["lr"] = expected[e]
        for batch in batches(e):
            m = batch["_mask"]
            x = torch.tensor(batch["inputs"][m], dtype=torch.float64)
            y = torch.tensor(batch["label"][m], dtype=torch.long)
            opt.zero_grad()
            torch.nn.functional.cross_entropy(lin(x), y).backward()
            opt.step()
    head = state["trainable"]["head"]
    assert np.abs(lin.weight.detach().numpy().T - head0["kernel"]).max() > 0.05  # it really trained
    np.testing.assert_allclose(np.asarray(head["kernel"]), lin.weight.detach().numpy().T, atol=1e-5)
    np.testing.assert_allclose(np.asarray(head["bias"]), lin.bias.detach().numpy(), atol=1e-5)


# ------------------------------------------------------------------------------------------- bad input
def test_nan_loss_raises(dino):
    model = AdaptedModel(dino, NAMES, AdaptConfig(mode="linear"))
    tc = train.TrainConfig(epochs=2, batch_size=8, calibration="none", loss_scale="none")
    trainer = train.Trainer(model, tc, kind="features")
    feats = np.full((8, 16), np.nan, np.float32)
    state = trainer.init(jax.random.key(0))
    with pytest.raises(train.NaNLossError, match=r"training loss is nan in epoch 0.*lower train.lr"):
        trainer.fit(state, lambda e: padded_batches(feats, np.zeros(8, np.int32), 8))


# ----------------------------------------------------------------------------------------------- masks
@pytest.mark.parametrize("calibration,loss_prediction", [("cpeal", False), ("none", True)])
def test_padding_rows_do_not_change_the_update(dino, calibration, loss_prediction):
    model = AdaptedModel(dino, NAMES, AdaptConfig(mode="linear"))
    tc = train.TrainConfig(
        epochs=3,
        calibration=calibration,
        calibration_anneal=False,
        loss_prediction=loss_prediction,
        lr=0.3,
        loss_scale="none",
    )
    trainer = train.Trainer(model, tc, kind="features")
    images, labels = colour_images(6, seed=5)
    feats = np.asarray(jax.jit(model.prefix)(images))
    state = trainer.init(jax.random.key(0))
    exact = next(padded_batches(feats, labels, 6))
    padded = next(padded_batches(feats, labels, 32, drop_last=False, garbage=True))
    assert padded["_mask"].sum() == 6 and np.abs(padded["inputs"][6:]).max() > 1
    results = []
    for batch in (exact, padded):
        new, metrics = trainer.train_step(jax.tree.map(jnp.array, state), batch, epoch=1)
        new, metrics = trainer.train_step(new, batch, epoch=2)  # momentum in play
        results.append((_numpy_tree(new["trainable"]), float(metrics["loss"]), float(metrics["n"])))
    (a, loss_a, n_a), (b, loss_b, n_b) = results
    assert n_a == n_b == 6 and loss_a == pytest.approx(loss_b, rel=1e-5)
    for k in a:
        np.testing.assert_allclose(b[k], a[k], rtol=1e-5, atol=1e-6, err_msg=k)
    if loss_prediction:
        assert any(not np.allclose(a[k], _numpy_tree(state["trainable"])[k]) for k in a if k.startswith("loss_pred"))


def _numpy_ranking_loss(pred: np.ndarray, target: np.ndarray, margin: float = 1.0) -> float:
    """The reference's LossPredLoss (Yoo & Kweon): row i against row n-1-i over the first half, hinge on the sign."""
    m = len(pred) // 2 * 2
    pred, target = pred[:m], target[:m]
    d_pred = (pred - pred[::-1])[: m // 2]
    sign = np.where(target - target[::-1] > 0, 1.0, -1.0)[: m // 2]
    return float(np.maximum(margin - sign * d_pred, 0.0).sum() / (m // 2))


def test_learning_loss_branch_has_no_calibration_term_as_the_reference(dino):
    # The reference's LL branch (alvlm.py forward_backward): mean CE + 0.01 x LossPredLoss, never the calibration
    # loss, even with its calibration flag on.
    model = AdaptedModel(dino, NAMES, AdaptConfig(mode="linear"))
    tc = train.TrainConfig(
        epochs=2,
        batch_size=8,
        calibration="cpeal",
        calibration_anneal=False,
        calibration_weighting="none",
        loss_prediction=True,
        loss_scale="none",
    )
    trainer = train.Trainer(model, tc, kind="features")
    images, labels = colour_images(8, seed=9)
    feats = np.asarray(jax.jit(model.prefix)(images))
    state = trainer.init(jax.random.key(1))
    batch = next(padded_batches(feats, labels, 8))
    total, aux = trainer._loss(state["trainable"], batch, jax.random.key(2), jnp.float32(1.0))
    head = {k: np.asarray(v, np.float64) for k, v in state["trainable"]["head"].items()}
    logits = feats.astype(np.float64) @ head["kernel"] + head["bias"]
    z = logits - logits.max(-1, keepdims=True)
    ce = -(z - np.log(np.exp(z).sum(-1, keepdims=True)))[np.arange(8), labels]
    pred = np.asarray(LossPredictionHead().apply({"params": state["trainable"]["loss_pred"]}, logits), np.float64)
    want = ce.mean() + 0.01 * _numpy_ranking_loss(pred, ce)
    p = np.exp(z) / np.exp(z).sum(-1, keepdims=True)
    t = np.tanh(-(p * np.log(p + 1e-6)).sum(-1))
    miss = logits.argmax(-1) != labels
    assert miss.any() and -np.log(t[miss] + 1e-6).mean() > 0.1  # an unweighted calibration term would not be 0
    assert float(total) == pytest.approx(want, rel=1e-5) and float(aux["calibration"]) == 0.0
    _, history = trainer.fit(state, lambda e: padded_batches(feats, labels, 8, seed=e))
    assert [h["calibration_weight"] for h in history] == [0.0, 0.0]


@pytest.mark.parametrize("n", [2, 5, 8, 31, 32])
def test_masked_ranking_loss_equals_reference_on_prefix(n):
    rng = np.random.default_rng(n)
    pred, target = rng.standard_normal(32).astype(np.float32), rng.standard_normal(32).astype(np.float32)
    mask = np.arange(32) < n
    got = train.masked_ranking_loss(jnp.asarray(pred), jnp.asarray(target), jnp.asarray(mask))
    ref = loss_prediction_loss(jnp.asarray(pred[:n]), jnp.asarray(target[:n]))
    assert float(got) == pytest.approx(float(ref), rel=1e-6)
    g_got = jax.grad(lambda p: train.masked_ranking_loss(p, jnp.asarray(target), jnp.asarray(mask)))(jnp.asarray(pred))
    g_ref = jax.grad(lambda p: loss_prediction_loss(p, jnp.asarray(target[:n])))(jnp.asarray(pred[:n]))
    np.testing.assert_allclose(np.asarray(g_got[:n]), np.asarray(g_ref), atol=1e-7)
    np.testing.assert_array_equal(np.asarray(g_got[n:]), 0.0)


def test_loss_prediction_head_trains(dino):
    model = AdaptedModel(dino, NAMES, AdaptConfig(mode="linear"))
    tc = train.TrainConfig(epochs=8, batch_size=16, lr=0.5, calibration="none", loss_prediction=True, loss_scale="none")
    trainer = train.Trainer(model, tc, kind="features")
    images, labels = colour_images(32, seed=6)
    feats = np.asarray(jax.jit(model.prefix)(images))
    state = trainer.init(jax.random.key(0))
    assert set(state["trainable"]) == {"head", "loss_pred"}
    before = _numpy_tree(state["trainable"]["loss_pred"])
    # First step in epoch 0: the main tree moves at the warm-up lr 1e-5, the loss head at its own lr 0.1
    # (both SGD with coupled decay 5e-4; no momentum yet).
    batch = next(padded_batches(feats, labels, 16))
    grads, _ = jax.jit(jax.grad(trainer._loss, has_aux=True))(
        state["trainable"], batch, jax.random.split(state["rng"])[1], jnp.float32(0.0)
    )
    stepped, _ = trainer.train_step(jax.tree.map(jnp.array, state), batch, epoch=0)
    for part, lr in (("head", 1e-5), ("loss_pred", 0.1)):
        w, g, new = (_numpy_tree(t[part]) for t in (state["trainable"], grads, stepped["trainable"]))
        for k in w:
            np.testing.assert_allclose(
                new[k], w[k] - lr * (g[k] + 5e-4 * w[k]), rtol=1e-5, atol=1e-7, err_msg=f"{part}/{k}"
            )
    state, history = trainer.fit(state, lambda e: padded_batches(feats, labels, 16, seed=e))
    after = _numpy_tree(state["trainable"]["loss_pred"])
    # Every weight moves; fc2's bias gets no gradient (the ranking loss sees only differences of predictions).
    assert all(not np.allclose(before[k], after[k]) for k in before if k != "fc2/bias")
    np.testing.assert_array_equal(after["fc2/bias"], before["fc2/bias"])
    assert history[-1]["train_accuracy"] == 1.0

    def ranking(loss_pred_params):
        logits, _ = model.logits(state["trainable"], jnp.asarray(feats), "features")
        ce = -jax.nn.log_softmax(logits)[jnp.arange(32), labels]
        pred = LossPredictionHead().apply({"params": loss_pred_params}, logits)
        return float(loss_prediction_loss(pred, ce))

    assert ranking(state["trainable"]["loss_pred"]) < ranking(jax.tree.map(jnp.asarray, before_tree(before)))


def before_tree(flat: dict[str, np.ndarray]) -> Any:
    from alpeft_jax.convert.common import unflatten

    return unflatten(flat)


# ------------------------------------------------------------------------------------------ evaluation
def test_evaluation_on_padded_batches_equals_unpadded_metrics(dino):
    model = AdaptedModel(dino, NAMES, AdaptConfig(mode="linear"))
    trainer = train.Trainer(model, train.TrainConfig(calibration="none", loss_scale="none"), kind="features")
    trainable = model.init(jax.random.key(0))
    images, labels = colour_images(37, seed=7)
    labels[::5] = (labels[::5] + 1) % 4  # some wrong predictions
    feats = np.asarray(jax.jit(model.prefix)(images))
    head = jax.tree.map(np.asarray, trainable["head"])
    logits = feats.astype(np.float64) @ head["kernel"] + head["bias"]  # NumPy logits of the real rows
    ref = evaluate.metrics(jnp.asarray(logits, jnp.float32), jnp.asarray(labels))
    got = trainer.evaluate(trainable, padded_batches(feats, labels, 16, drop_last=False, garbage=True))
    assert got["n"] == ref["n"] == 37
    for k in ("accuracy", "nll", "ece", "brier"):
        assert got[k] == pytest.approx(ref[k], rel=1e-5, abs=1e-6), k
    rows = [
        (lg[b["_mask"]], f[b["_mask"]])
        for lg, f, b in trainer.predict(trainable, padded_batches(feats, labels, 16, drop_last=False, garbage=True))
    ]
    np.testing.assert_allclose(np.concatenate([r[0] for r in rows]), logits, atol=1e-4)
    np.testing.assert_array_equal(np.concatenate([r[1] for r in rows]), feats)
    assert trainer.traces["eval"] == 1


# ------------------------------------------------------------------------------------------ float16
@pytest.mark.skipif(jax.default_backend() == "cpu", reason="XLA's CPU backend has no float16 matmuls (F16_F16_F32)")
def test_float16_lora_with_dynamic_loss_scaling_trains_the_toy_task_like_float32():
    cfg = AdaptConfig(mode="lora", lora=lora.LoraConfig(rank=2, alpha=2.0, dropout=0.0), head="linear")
    results = {}
    for dtype in ("float32", "float16"):
        bb = _dinov2()
        if dtype == "float16":
            bb.model = bb.model.clone(dtype=jnp.float16)
        tc = train.TrainConfig(
            epochs=12,
            batch_size=16,
            lr=0.5,
            calibration="cpeal",
            loss_scale="dynamic" if dtype == "float16" else "none",
        )
        _, _, state, history, metrics, _, _ = _run_toy(bb, cfg, "images", tc)
        results[dtype] = (state, history, metrics)
    state16, hist16, m16 = results["float16"]
    _, hist32, m32 = results["float32"]
    assert m32["accuracy"] == 1.0 and m16["accuracy"] == 1.0
    assert hist16[-1]["loss"] == pytest.approx(hist32[-1]["loss"], rel=0.05, abs=0.01), (hist16[-1], hist32[-1])
    assert sum(h["skipped_steps"] for h in hist16[-3:]) == 0 and "skipped_steps" not in hist32[0]
    assert 1.0 <= float(state16["loss_scale"]["scale"]) <= 2.0**15


def test_loss_scaling_is_exact_without_overflow(dino):
    # Scaling by a power of two and back is exact in float32: the same trainables as an unscaled run.
    tc = dict(epochs=6, batch_size=16, lr=1.0, calibration="cpeal")
    _, _, scaled, hist, _, _, _ = _run_toy(
        dino,
        AdaptConfig(mode="linear"),
        "features",
        train.TrainConfig(**tc, loss_scale="dynamic", loss_scale_growth_interval=3),
    )
    _, _, plain, _, _, _, _ = _run_toy(
        dino, AdaptConfig(mode="linear"), "features", train.TrainConfig(**tc, loss_scale="none")
    )
    a, b = _numpy_tree(scaled["trainable"]), _numpy_tree(plain["trainable"])
    for k in a:
        np.testing.assert_array_equal(a[k], b[k], err_msg=k)
    assert sum(h["skipped_steps"] for h in hist) == 0
    assert float(scaled["loss_scale"]["scale"]) == 2.0**15 * 2 ** (sum(h["steps"] for h in hist) // 3)


def test_loss_scale_step_skips_an_overflow_and_halves_the_scale():
    old = {"trainable": {"w": jnp.ones(3)}, "opt_state": {"m": jnp.zeros(3)}}
    new = {"trainable": {"w": jnp.full(3, 2.0)}, "opt_state": {"m": jnp.ones(3)}}
    scaling = {"scale": jnp.float32(1024.0), "good_steps": jnp.int32(1)}
    bad = train._loss_scale_step(old, new, {"w": jnp.array([1.0, jnp.inf, 0.0])}, scaling, interval=2)
    np.testing.assert_array_equal(bad["trainable"]["w"], 1.0)  # the update is not applied
    np.testing.assert_array_equal(bad["opt_state"]["m"], 0.0)
    assert float(bad["loss_scale"]["scale"]) == 512.0 and int(bad["loss_scale"]["good_steps"]) == 0
    assert int(bad["_finite"]) == 0
    nan = train._loss_scale_step(old, new, {"w": jnp.array([jnp.nan, 0.0, 0.0])}, scaling, interval=2)
    assert int(nan["_finite"]) == 0
    good = train._loss_scale_step(old, new, {"w": jnp.ones(3)}, scaling, interval=2)  # 2nd good step: grow
    np.testing.assert_array_equal(good["trainable"]["w"], 2.0)
    assert float(good["loss_scale"]["scale"]) == 2048.0 and int(good["loss_scale"]["good_steps"]) == 0
    floor = train._loss_scale_step(
        old, new, {"w": jnp.full(3, jnp.inf)}, {"scale": jnp.float32(1.0), "good_steps": jnp.int32(0)}, interval=2
    )
    assert float(floor["loss_scale"]["scale"]) == 1.0


def test_float16_loss_scale_overflow_skips_halves_and_grows_on_cpu(dino):
    # The driver's float16 set-up with cached features (it runs on XLA:CPU; a float16 tower's attention does not):
    # the head reads float16 features, and dynamic loss scaling multiplies its gradients by the scale. With the
    # scale at 2^127 the scaled gradients overflow exactly when the largest |gradient| exceeds f32max / 2^127 (~2);
    # at 2^126 they stay finite while it is below ~4. The batch below makes it 3, so by hand, with a growth interval
    # of 2: step 1 overflows (skipped, scale 2^127 -> 2^126), steps 2 and 3 apply (the scale doubles after the
    # second), step 4 overflows again at 2^127, and so on.
    c = config.base()
    c.dtype = "float16"
    c.train.update(
        epochs=1,
        batch_size=8,
        lr=1e-3,
        calibration="none",
        label_smoothing=0.0,
        loss_scale_init=2.0**127,
        loss_scale_growth_interval=2,
    )
    tc = loop.train_config(c)
    assert tc.loss_scale == "dynamic" and tc.loss_scale_init == 2.0**127 and tc.loss_scale_growth_interval == 2
    c32 = config.base()
    c32.train.update(epochs=1, batch_size=8, lr=1e-3, calibration="none", label_smoothing=0.0)
    assert loop.train_config(c32).loss_scale == "none"

    model = AdaptedModel(dino, NAMES, AdaptConfig(mode="linear"))
    rng = np.random.default_rng(0)
    labels = np.arange(8) % 4
    feats = np.zeros((8, model.feature_dim), np.float32)
    feats[np.arange(8), labels] = 16.0  # the class's own feature, the same sign in every row of that class
    feats[:, 4:] = 0.01 * rng.standard_normal((8, model.feature_dim - 4))
    batch = {"inputs": feats.astype(np.float16), "label": labels.astype(np.int32), "_mask": np.ones(8, bool)}
    f = batch["inputs"].astype(np.float64)

    # A zero head predicts 1/4 everywhere: d(mean cross-entropy)/d(kernel) = f^T (1/4 - onehot) / 8, whose largest
    # entries are 2 rows x 16 x 3/4 / 8 = 3 (the learning rate is too small to move that noticeably in 6 steps).
    zero_head = {"head": {"kernel": np.zeros((model.feature_dim, 4), np.float32), "bias": np.zeros(4, np.float32)}}
    grad = f.T @ (np.full((8, 4), 0.25) - np.eye(4)[labels]) / 8
    assert np.abs(grad).max() == 3.0
    scaled = train.Trainer(model, tc, kind="features")
    state = scaled.init(jax.random.key(0), trainable=zero_head)
    f32max = float(np.finfo(np.float32).max)
    assert f32max / 2.0**127 * 1.3 < np.abs(grad).max() < f32max / 2.0**126 / 1.3, np.abs(grad).max()

    seen = []  # after every step: scale, good-step count, trainable tree
    record = lambda st, epoch, i, hist: seen.append(
        (float(st["loss_scale"]["scale"]), int(st["loss_scale"]["good_steps"]), _numpy_tree(st["trainable"]))
    )
    initial = _numpy_tree(state["trainable"])
    state, history = scaled.fit(state, lambda e: iter([batch] * 6), on_step=record)
    assert [s for s, _, _ in seen] == [2.0**126, 2.0**126, 2.0**127, 2.0**126, 2.0**126, 2.0**127]
    assert [g for _, g, _ in seen] == [0, 1, 0, 0, 1, 0]
    assert history[0]["steps"] == 6 and history[0]["skipped_steps"] == 2
    assert metrics.skipped_steps(history) == {"skipped_steps": 2} and metrics.skipped_steps([]) == {}

    # The applied steps are exactly those of a float32 run without loss scaling on the 4 good steps; the skipped
    # ones leave the trainables (and the optimiser state) untouched.
    plain = train.Trainer(model, loop.train_config(c32), kind="features")
    ref_trees = [initial]
    ref_state = plain.init(jax.random.key(0), trainable=zero_head)
    ref_state, ref_history = plain.fit(
        ref_state, lambda e: iter([batch] * 4), on_step=lambda st, *_: ref_trees.append(_numpy_tree(st["trainable"]))
    )
    applied = np.cumsum([0, 1, 1, 0, 1, 1])  # good steps so far after each of the 6 steps
    for step, (_, _, tree) in enumerate(seen):
        for k, v in ref_trees[applied[step]].items():
            np.testing.assert_array_equal(tree[k], v, err_msg=f"step {step + 1} {k}")
    assert ref_trees[1]["head/kernel"].tolist() != initial["head/kernel"].tolist()  # a good step does train
    assert history[0]["loss"] == ref_history[0]["loss"]  # the epoch's mean loss is over the applied steps


# ------------------------------------------------------------------------- how often the calibration loss acts
def _numpy_cpeal(logits: np.ndarray, labels: np.ndarray) -> float:
    """C-PEAL's balanced loss (METHOD.md §2) written out in NumPy, float64."""
    z = logits - logits.max(-1, keepdims=True)
    p = np.exp(z) / np.exp(z).sum(-1, keepdims=True)
    t = np.tanh(-(p * np.log(p + 1e-6)).sum(-1))
    hit = logits.argmax(-1) == labels
    n_c, n_i = hit.sum(), (~hit).sum()
    l_inc = -np.log(t[~hit] + 1e-6).mean() if n_i else 0.0
    l_cor = -np.log(1 - t[hit] + 1e-6).mean() if n_c else 0.0
    return min(5.0, n_i / len(hit) * l_cor + n_c / len(hit) * l_inc)


def test_calibration_activity_counts_steps_and_misclassified_share(dino):
    from alpeft_jax.metrics import calibration_activity

    model = AdaptedModel(dino, NAMES, AdaptConfig(mode="linear"))
    tc = train.TrainConfig(
        epochs=4, batch_size=8, lr=0.5, calibration="cpeal", calibration_anneal=False, loss_scale="none"
    )
    trainer = train.Trainer(model, tc, kind="features")
    images, labels = colour_images(20, seed=6)
    feats = np.asarray(jax.jit(model.prefix)(images))
    expected: list[tuple[int, bool, float]] = []  # (epoch, loss non-zero, misclassified share) per step
    step = trainer._train_step

    def recording(state, batch, epoch):
        head = {k: np.asarray(v, np.float64) for k, v in state["trainable"]["head"].items()}
        m = np.asarray(batch["_mask"])
        logits = np.asarray(batch["inputs"], np.float64)[m] @ head["kernel"] + head["bias"]
        y = np.asarray(batch["label"])[m]
        expected.append((int(epoch), _numpy_cpeal(logits, y) > 1e-6, float((logits.argmax(-1) != y).mean())))
        return step(state, batch, epoch)

    trainer._train_step = recording
    state = trainer.init(jax.random.key(3))
    state, history = trainer.fit(state, lambda e: padded_batches(feats, labels, 8, seed=e, drop_last=False))
    assert len(expected) == 12 and any(e[1] for e in expected) and not all(e[1] for e in expected)
    for h in history:
        mine = [e for e in expected if e[0] == h["epoch"]]
        assert h["calibration_active_steps"] == sum(e[1] for e in mine)
        assert h["misclassified_share"] == pytest.approx(np.mean([e[2] for e in mine]), abs=1e-6)
    summary = calibration_activity(history, calibration=True)
    assert summary["calibration_active_share"] == pytest.approx(np.mean([e[1] for e in expected]))
    assert summary["train_misclassified_share"] == pytest.approx(np.mean([e[2] for e in expected]), abs=1e-6)
    assert set(calibration_activity(history, calibration=False)) == {"train_misclassified_share"}


def test_cosine_head_reads_normalised_features_times_scale(dino):
    model = AdaptedModel(dino, NAMES, AdaptConfig(mode="linear", head_scale=16.0))
    trainable = model.init(jax.random.key(0))
    feats = np.random.default_rng(0).standard_normal((5, model.feature_dim)).astype(np.float32) * 7
    logits, _ = model.logits(trainable, jnp.asarray(feats), "features")
    k, b = (np.asarray(trainable["head"][n], np.float64) for n in ("kernel", "bias"))
    unit = feats / np.linalg.norm(feats, axis=-1, keepdims=True)
    np.testing.assert_allclose(np.asarray(logits), 16.0 * unit @ k + b, rtol=1e-5, atol=1e-5)
    raw, _ = AdaptedModel(dino, NAMES, AdaptConfig(mode="linear")).logits(trainable, jnp.asarray(feats), "features")
    np.testing.assert_allclose(np.asarray(raw), feats @ k + b, rtol=1e-4, atol=1e-4)
    with pytest.raises(ValueError, match=r"adapt.head_scale=-1.0 must not be negative"):
        AdaptConfig(mode="linear", head_scale=-1.0)


def test_the_reference_bare_calibration_flag_is_weight_001_constant_unweighted(dino):
    # The reference's `--secondary_calib_loss` alone: SECONDARY_CALIB_LOSSW=0.01, no annealing, no inter-weighting:
    # loss = CE + 0.01 x (L_inc + L_cor) in every epoch. Documented as these four settings (configs/coop.py).
    model = AdaptedModel(dino, NAMES, AdaptConfig(mode="linear"))
    tc = train.TrainConfig(
        epochs=4,
        batch_size=8,
        calibration="cpeal",
        calibration_weight=0.01,
        calibration_anneal=False,
        calibration_weighting="none",
        loss_scale="none",
    )
    trainer = train.Trainer(model, tc, kind="features")
    assert [trainer.calibration_weight(e) for e in range(4)] == [0.01] * 4
    images, labels = colour_images(8, seed=4)
    feats = np.asarray(jax.jit(model.prefix)(images))
    state = trainer.init(jax.random.key(5))
    state["trainable"]["head"]["kernel"] = jnp.asarray(np.random.default_rng(0).normal(size=(model.feature_dim, 4)))
    batch = next(padded_batches(feats, labels, 8))
    total, _ = trainer._loss(state["trainable"], batch, jax.random.key(2), jnp.float32(trainer.calibration_weight(2)))
    head = {k: np.asarray(v, np.float64) for k, v in state["trainable"]["head"].items()}
    logits = feats.astype(np.float64) @ head["kernel"] + head["bias"]
    z = logits - logits.max(-1, keepdims=True)
    logp = z - np.log(np.exp(z).sum(-1, keepdims=True))
    t = np.tanh(-(np.exp(logp) * np.log(np.exp(logp) + 1e-6)).sum(-1))
    hit = logits.argmax(-1) == labels
    assert hit.any() and (~hit).any()
    cal = min(5.0, -np.log(t[~hit] + 1e-6).mean() + -np.log(1 - t[hit] + 1e-6).mean())
    assert float(total) == pytest.approx(-logp[np.arange(8), labels].mean() + 0.01 * cal, rel=1e-5)
