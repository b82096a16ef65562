"""Exports of a finished run against transformers and PEFT: after a short LoRA run and a short prompt-learning run
on tiny random CLIP ViT and DINOv2 checkpoints, the `hf` export in transformers and the `peft` adapter on the
original checkpoint give the run's logits (within 1e-4, f32); `load_model` of the native export equals the
workdir's model; formats with no meaning are one error line."""

import json
import os

import jax
import numpy as np
import pytest

from alpeft_jax import export, load_model, loop, trained
from alpeft_jax.config import base

TINY_CLIP = dict(  # the released 49,408-token vocabulary, so prompts tokenize
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
    return tiny_clip_factory(TINY_CLIP, seed=3)[1]


@pytest.fixture(scope="module")
def dinov2_dir(tmp_path_factory):
    import torch
    from transformers import Dinov2Config, Dinov2Model

    torch.manual_seed(0)
    config = Dinov2Config(
        hidden_size=24, num_hidden_layers=2, num_attention_heads=2, intermediate_size=40, patch_size=8, image_size=32
    )
    model = Dinov2Model(config).eval()
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.1 * torch.randn_like(p))
    path = tmp_path_factory.mktemp("tiny_dinov2")
    model.save_pretrained(path)
    return path


def _config(backbone, mode, **adapt):
    c = base()
    c.backbone = str(backbone)
    c.data.name = "digits"
    c.data.max_pool = 20
    c.data.max_test = 8
    c.data.coop_names = False
    c.data.num_threads = 1
    c.adapt.mode = mode
    c.adapt.prompt.n_ctx = 4
    for k, v in adapt.items():
        setattr(c.adapt, k, v)
    c.train.epochs = 2
    c.train.batch_size = 5
    c.train.lr = 0.5  # a LoRA update far from zero in two epochs: parity with the base model would prove nothing
    c.train.augment = False
    c.al.rounds = 1
    c.al.initial = 10
    c.scoring.batch_size = 16
    return c


@pytest.fixture(scope="module")
def runs(tmp_path_factory, clip_dir, dinov2_dir):
    """`runs(name)` -> (workdir, its TrainedModel, the run's own logits function): finished one-round runs, made once
    for the module. The logits function is the training-time model (LoRA unmerged, text tower run each call) on
    the run's saved trainable tree."""
    made = {}

    def get(name):
        if name not in made:
            backbone, mode = {
                "clip_lora": (clip_dir, "lora"),
                "clip_prompt": (clip_dir, "prompt"),
                "dinov2_lora": (dinov2_dir, "lora"),
            }[name]
            workdir = tmp_path_factory.mktemp(name)
            loop.run(_config(backbone, mode), str(workdir))
            model = trained.TrainedModel.from_workdir(workdir)
            ours = jax.jit(lambda t, x: model.model.logits(t, x)[0])
            made[name] = workdir, model, lambda x: np.asarray(ours(model.trainable, x), np.float64)
        return made[name]

    return get


def _images(n=5, seed=0):
    rng = np.random.default_rng(seed)
    return [rng.integers(0, 256, (int(rng.integers(30, 60)), int(rng.integers(30, 60)), 3), np.uint8) for _ in range(n)]


def _torch_logits(features, out_dir):
    import torch
    from safetensors.torch import load_file

    head = load_file(os.path.join(out_dir, export.CLASSIFIER_FILE))
    how = json.loads(open(os.path.join(out_dir, export.CLASSIFIER_JSON)).read())
    f = getattr(features, "pooler_output", features)
    if how["normalize"]:
        f = how["scale"] * f / f.norm(dim=-1, keepdim=True)
    return (f @ head["weight"].T + head["bias"]).to(torch.float64).numpy()


def _hf_features(model, family, x):
    import torch

    pixels = torch.from_numpy(np.ascontiguousarray(x.transpose(0, 3, 1, 2)))
    with torch.no_grad():
        if family == "clip":
            return model.get_image_features(pixel_values=pixels)
        return model(pixel_values=pixels).pooler_output


def _hf_class(family):
    from transformers import CLIPModel, Dinov2Model

    return CLIPModel if family == "clip" else Dinov2Model


@pytest.mark.parametrize("name", [pytest.param("clip_lora", marks=pytest.mark.slow), "clip_prompt", "dinov2_lora"])
def test_hf_export_in_transformers_equals_the_run(runs, tmp_path, name):
    workdir, model, ours_fn = runs(name)
    x = model.preprocess(_images())
    ours = ours_fn(x)
    out = tmp_path / "hf"
    export.export_hf(model, str(out))
    family = name.split("_")[0]
    hf = _hf_class(family).from_pretrained(out).eval()
    np.testing.assert_allclose(_torch_logits(_hf_features(hf, family, x), out), ours, atol=1e-4, rtol=0)
    if name.endswith("lora"):  # the merged update matters: the untouched checkpoint gives other logits
        original = _hf_class(family).from_pretrained(model.parts.backbone.source).eval()
        assert np.abs(_torch_logits(_hf_features(original, family, x), out) - ours).max() > 1e-3
    assert (out / "classes.txt").read_text().split("\n")[:-1] == model.class_names


@pytest.mark.parametrize("name", [pytest.param("clip_lora", marks=pytest.mark.slow), "dinov2_lora"])
def test_peft_adapter_on_the_original_checkpoint_equals_the_run(runs, tmp_path, name):
    from peft import PeftModel

    workdir, model, ours_fn = runs(name)
    x = model.preprocess(_images(seed=1))
    ours = ours_fn(x)
    out = tmp_path / "peft"
    export.export_peft(model, str(out))
    family = name.split("_")[0]
    base_model = _hf_class(family).from_pretrained(model.parts.backbone.source).eval()
    before = _torch_logits(_hf_features(base_model, family, x), out)
    adapted = PeftModel.from_pretrained(base_model, str(out)).eval()
    config = json.loads((out / export.ADAPTER_CONFIG).read_text())
    n_modules = len(jax.tree.leaves(model.trainable["lora"])) // 2
    assert len(config["target_modules"]) == n_modules and (config["r"], config["use_rslora"]) == (4, True)
    theirs = _torch_logits(_hf_features(adapted.base_model.model, family, x), out)
    np.testing.assert_allclose(theirs, ours, atol=1e-4, rtol=0)
    assert np.abs(before - ours).max() > 1e-3  # the adapter is what makes them equal


def test_native_export_loads_to_the_workdirs_model(runs, tmp_path):
    workdir, from_run, ours_fn = runs("clip_prompt")
    images = _images(7, seed=2)
    out = tmp_path / "native"
    assert export.main([f"--workdir={workdir}", "--format=native", f"--out={out}"]) == 0
    assert (out / "backbone" / "config.json").exists()  # self-contained: the backbone travels with it
    loaded = load_model(out)
    np.testing.assert_array_equal(loaded.logits(images), from_run.logits(images))
    ours = ours_fn(from_run.preprocess(images))
    np.testing.assert_allclose(loaded.logits(images), ours, atol=1e-5, rtol=0)
    p = loaded.predict(images)
    assert p.names == [loaded.class_names[i] for i in ours.argmax(1)]
    np.testing.assert_allclose(p.probs.sum(1), 1.0, atol=1e-5)


@pytest.mark.parametrize(
    "backbone, mode, fmt, says",
    [
        ("clip", "prompt", "peft", "cannot hold them; use --format=hf (the prompts baked"),
        ("dinov2", "linear", "peft", "a linear probe changes no backbone weight, so there is no LoRA adapter"),
        ("efficientnet-lite0", "lora", "peft", "use --format=hf (its state dict"),
        ("dinov2", "lora", "onnx", "--format=onnx: unknown; pick one of native, hf, peft"),
    ],
)
def test_meaningless_combination_is_one_error_line(tmp_path, clip_dir, dinov2_dir, capsys, backbone, mode, fmt, says):
    backbone = {"clip": clip_dir, "dinov2": dinov2_dir}.get(backbone, backbone)
    workdir = tmp_path / "run"
    workdir.mkdir()
    (workdir / "config.json").write_text(json.dumps(_config(backbone, mode).to_dict()))  # decided from the config
    out = tmp_path / "out"
    assert export.main([f"--workdir={workdir}", f"--format={fmt}", f"--out={out}"]) == 2
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and says in lines[0], lines
    assert not out.exists()  # nothing written
