"""Exports of a finished run against transformers and PEFT: after a short LoRA run and a short prompt-learning run
on tiny random CLIP ViT and DINOv2 checkpoints, the `hf` export in transformers and the `peft` adapter on the
original checkpoint give the run's logits (within 1e-4, f32); `load_model` of the native export equals the
workdir's model; formats with no meaning are one error line."""

import json
import os
import subprocess
import sys

import jax
import numpy as np
import pytest

from alpeft_jax import export, load_model, loop, trained
from alpeft_jax.config import base

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

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
    c.data.max_pool = 30
    c.data.max_test = 12
    c.data.coop_names = False
    c.data.num_threads = 1
    c.adapt.mode = mode
    c.adapt.prompt.n_ctx = 4
    for k, v in adapt.items():
        setattr(c.adapt, k, v)
    c.train.epochs = 3
    c.train.batch_size = 5
    c.train.lr = 0.5  # a LoRA update far from zero in three epochs: parity with the base model would prove nothing
    c.train.augment = False
    c.al.rounds = 1
    c.al.initial = 10
    c.scoring.batch_size = 16
    return c


@pytest.fixture(scope="module")
def runs(tmp_path_factory, clip_dir, dinov2_dir):
    """Finished one-round runs, by name: their workdirs (made once for the module)."""
    made = {}

    def get(name):
        if name not in made:
            backbone, mode, adapt = {
                "clip_lora": (clip_dir, "lora", {}),
                "clip_prompt": (clip_dir, "prompt", {}),
                "dinov2_lora": (dinov2_dir, "lora", {}),
                "dinov2_linear": (dinov2_dir, "linear", {}),
            }[name]
            workdir = tmp_path_factory.mktemp(name)
            loop.run(_config(backbone, mode, **adapt), str(workdir))
            made[name] = workdir
        return made[name]

    return get


def _images(n=5, seed=0):
    rng = np.random.default_rng(seed)
    return [rng.integers(0, 256, (int(rng.integers(30, 60)), int(rng.integers(30, 60)), 3), np.uint8) for _ in range(n)]


def _ours(workdir, x):
    """The run's own logits: its saved trainable tree through the training-time model (LoRA unmerged)."""
    model = trained.TrainedModel.from_workdir(workdir)
    logits, _ = model.model.logits(model.trainable, x)
    return np.asarray(logits, np.float64), model


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


@pytest.mark.parametrize("name", ["clip_lora", "clip_prompt", "dinov2_lora"])
def test_hf_export_in_transformers_equals_the_run(runs, tmp_path, name):
    from transformers import CLIPModel, Dinov2Model

    workdir = runs(name)
    model = trained.TrainedModel.from_workdir(workdir)
    x = model.preprocess(_images())
    ours, _ = _ours(workdir, x)
    out = tmp_path / "hf"
    assert export.main([f"--workdir={workdir}", "--format=hf", f"--out={out}"]) == 0
    family = name.split("_")[0]
    hf = (CLIPModel if family == "clip" else Dinov2Model).from_pretrained(out).eval()
    theirs = _torch_logits(_hf_features(hf, family, x), out)
    np.testing.assert_allclose(theirs, ours, atol=1e-4, rtol=0)
    # the adaptation matters: the untouched checkpoint gives other logits
    original = (CLIPModel if family == "clip" else Dinov2Model).from_pretrained(model.parts.backbone.source).eval()
    if name.endswith("lora"):
        assert np.abs(_torch_logits(_hf_features(original, family, x), out) - ours).max() > 1e-3
    assert (out / "classes.txt").read_text().split("\n")[:-1] == model.class_names


@pytest.mark.parametrize("name", ["clip_lora", "dinov2_lora"])
def test_peft_adapter_on_the_original_checkpoint_equals_the_run(runs, tmp_path, name):
    from peft import PeftModel
    from transformers import CLIPModel, Dinov2Model

    workdir = runs(name)
    model = trained.TrainedModel.from_workdir(workdir)
    x = model.preprocess(_images(seed=1))
    ours, _ = _ours(workdir, x)
    out = tmp_path / "peft"
    assert export.main([f"--workdir={workdir}", "--format=peft", f"--out={out}"]) == 0
    family = name.split("_")[0]
    base_model = (CLIPModel if family == "clip" else Dinov2Model).from_pretrained(model.parts.backbone.source).eval()
    before = _torch_logits(_hf_features(base_model, family, x), out)
    adapted = PeftModel.from_pretrained(base_model, str(out)).eval()
    config = json.loads((out / export.ADAPTER_CONFIG).read_text())
    n_targets = len(model.trainable["lora"] and jax.tree.leaves(model.trainable["lora"])) // 2
    assert len(config["target_modules"]) == n_targets and config["r"] == 4 and config["use_rslora"]
    theirs = _torch_logits(_hf_features(adapted.base_model.model, family, x), out)
    np.testing.assert_allclose(theirs, ours, atol=1e-4, rtol=0)
    assert np.abs(before - ours).max() > 1e-3  # the adapter is what makes them equal


@pytest.mark.parametrize("name", ["clip_prompt", "dinov2_lora"])
def test_native_export_loads_to_the_workdirs_model(runs, tmp_path, name):
    workdir = runs(name)
    images = _images(7, seed=2)
    from_run = trained.TrainedModel.from_workdir(workdir)
    out = tmp_path / "native"
    assert export.main([f"--workdir={workdir}", "--format=native", f"--out={out}"]) == 0
    assert (out / "backbone" / "config.json").exists()  # self-contained: the backbone travels with it
    loaded = load_model(out)
    np.testing.assert_array_equal(loaded.logits(images), from_run.logits(images))
    ours, _ = _ours(workdir, from_run.preprocess(images))
    np.testing.assert_allclose(loaded.logits(images), ours, atol=1e-5, rtol=0)
    p = loaded.predict(images)
    assert p.names == [loaded.class_names[i] for i in ours.argmax(1)]
    np.testing.assert_allclose(p.probs.sum(1), 1.0, atol=1e-5)


def _export_cli(*args):
    proc = subprocess.run(
        [sys.executable, "-m", "alpeft_jax.export", *args],
        cwd=ROOT,
        capture_output=True,
        text=True,
        env={**os.environ, "PYTHONPATH": ROOT},
    )
    return proc.returncode, proc.stderr.strip().splitlines()


@pytest.mark.parametrize(
    "name, fmt, says",
    [
        ("clip_prompt", "peft", "--format=hf (the prompts baked"),
        ("dinov2_linear", "peft", "a linear probe changes no backbone weight; use --format=hf"),
    ],
)
def test_meaningless_combination_is_one_error_line(runs, tmp_path, name, fmt, says):
    workdir = runs(name)
    out = tmp_path / "out"
    code, lines = _export_cli(f"--workdir={workdir}", f"--format={fmt}", f"--out={out}")
    errors = [line for line in lines if line.startswith("error:")]
    assert code == 2 and len(errors) == 1 and says in errors[0], lines
    assert not out.exists()  # nothing written
