"""Every experiment config: loads with its args, keeps the base schema, documents its command; strict typed args."""

import importlib.util
import os

import pytest

from alpeft_jax import config as config_lib
from alpeft_jax.config import base, parse_arg, rename_after_overrides, run_name
from alpeft_jax.convert.common import flatten

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CASES = {
    "demo.py": ["", "random", "runlocal", "random,seed=2", "pcb=false", "mode=lora,runlocal", "strategy=badge,calib"],
    "lora.py": [
        "",
        "ours",
        "runlocal",
        "seed=3,dataset=eurosat",
        "backbone=vit_b32,layout=coop,ours",
        "dataset=fgvc_aircraft",
        "dataset=stanford_cars,runlocal",
        "nopcb",
    ],
    "own_images.py": ["", "runlocal", "strategy=entropy,pcb=false", "mode=lora,seed=2", "mode=lora,runlocal"],
    "coop.py": ["", "ours", "backbone=vit_b16,runlocal", "backbone=rn101,dataset=oxford_pets", "nopcb,ours"],
    "peal.py": [
        "",
        "mode=linear",
        "strategy=featdist",
        "variant=small,runlocal",
        "dataset=aptos,mode=linear",
        "dataset=colorectal_histology,strategy=random,seed=2",
        "lora=paper,variant=large",
        "mode=linear,augment",
    ],
    "study.py": [
        "",
        "runlocal",
        "mode=lora,strategy=bald,calib",
        "strategy=entropy,pcb=false,head_scale=0,seed=4",
        "mode=lora,epochs=5,runlocal",
    ],
}


def _load(name):
    spec = importlib.util.spec_from_file_location(name[:-3], os.path.join(ROOT, "configs", name))
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_every_config_file_is_covered():
    assert sorted(f for f in os.listdir(os.path.join(ROOT, "configs")) if f.endswith(".py")) == sorted(CASES)


@pytest.mark.parametrize("name", sorted(CASES))
def test_config_args_keep_the_schema_and_document_the_command(name):
    mod = _load(name)
    assert "python -m alpeft_jax.main --config=configs/" + name in " ".join(mod.__doc__.split())
    assert "Expected" in mod.__doc__ and "Hardware" in mod.__doc__
    for arg in mod.ARGS:  # every accepted argument is documented
        assert f"`{arg}" in mod.__doc__, f"{name}: argument {arg} missing from the docstring"
    schema = {k: type(v) for k, v in flatten(base().to_dict()).items()}
    for arg in CASES[name]:
        c = mod.get_config(arg)
        got = {k: type(v) for k, v in flatten(c.to_dict()).items()}
        assert got == schema, f"{name}:{arg} changed the config schema"
        assert c.name.endswith(run_name(c)), f"{name}:{arg} name {c.name!r} does not say what it runs"
        if "runlocal" in arg:
            assert c.al.rounds <= 2 and c.train.epochs <= 2 and 0 < c.data.max_pool <= 200
            pool = c.data.max_pool
            assert c.al.initial + c.al.budget * (c.al.rounds - 1) <= pool and int(c.al.gamma * pool) >= c.al.budget
    assert _load(name).get_config("runlocal").to_dict() != mod.get_config("").to_dict()


@pytest.mark.parametrize("name", sorted(CASES))
def test_unknown_or_mistyped_config_arguments_are_refused(name):
    mod = _load(name)
    with pytest.raises(ValueError, match=r"unknown argument 'runlocl' \(did you mean 'runlocal'\?\); accepted: "):
        mod.get_config("runlocl")
    with pytest.raises(ValueError, match=r"argument 'seed=two': expected an integer"):
        mod.get_config("seed=two")


@pytest.mark.parametrize("name", ["lora.py", "coop.py"])
def test_calibration_only_in_ours(name):
    mod = _load(name)
    baseline, ours = mod.get_config(""), mod.get_config("ours")
    assert baseline.train.calibration == "none" and baseline.al.strategy == "entropy" and baseline.al.pcb
    assert ours.train.calibration == "cpeal" and ours.train.calibration_weight == 1.0
    assert ours.train.calibration_anneal and ours.train.calibration_weighting == "balanced"
    mode = "lora" if name == "lora.py" else "prompt"
    assert (baseline.name, ours.name) == (f"{mode}:entropy+pcb", f"{mode}:entropy+calib+pcb")
    assert baseline.adapt.mode == mode
    # the authors' released prompt-learning script runs RN50; LoRA runs ViT-B/16
    expected = "weights/clip-rn50/open_clip_model.safetensors" if mode == "prompt" else "openai/clip-vit-base-patch16"
    assert baseline.backbone == expected


def test_cpeal_datasets_use_coop_splits():
    lora = _load("lora.py")
    c = lora.get_config("dataset=dtd")
    assert (c.data.name, c.data.split_file) == ("dtd", "split_zhou_DescribableTextures.json")
    c = lora.get_config("dataset=eurosat")
    assert (c.data.name, c.data.split_file) == ("eurosat/rgb", "split_zhou_EuroSAT.json")
    c = lora.get_config("dataset=dtd,layout=coop")
    assert (c.data.name, c.data.split_file) == ("coop:dtd", "")
    c = lora.get_config("dataset=fgvc_aircraft")  # auto: TFDS has no FGVC-Aircraft
    assert c.data.name == "coop:fgvc_aircraft"
    with pytest.raises(ValueError, match="layout=coop"):
        lora.get_config("dataset=fgvc_aircraft,layout=tfds")


def test_peal_one_file_lora_versus_linear():
    peal = _load("peal.py")
    lora, linear = peal.get_config(""), peal.get_config("mode=linear")
    assert (lora.adapt.mode, linear.adapt.mode) == ("lora", "linear")
    assert lora.backbone == linear.backbone == "facebook/dinov2-base"
    assert lora.name != linear.name  # a report never pools the two
    assert lora.train.augment == linear.train.augment is False  # the same views for both arms
    both = [peal.get_config(a) for a in ("augment", "mode=linear,augment")]
    assert all(c.train.augment for c in both)
    assert linear.train.calibration == lora.train.calibration == "none"
    for c in (lora, linear):
        assert (c.data.name, c.data.train_split, c.data.test_split) == ("eurosat/rgb", "train[:80%]", "train[80%:]")
    aptos = peal.get_config("dataset=aptos")
    assert (aptos.data.name, aptos.data.dir) == ("folder", "data/aptos")


def test_base_defaults():
    c = base()
    assert c.train.calibration == "none"
    assert (c.train.lr, c.train.momentum, c.train.weight_decay, c.train.epochs, c.train.batch_size) == (
        0.002,
        0.9,
        5e-4,
        10,
        32,
    )
    assert (c.train.loss_scale, c.train.loss_scale_init, c.train.loss_scale_growth_interval) == (
        "dynamic",
        2.0**15,
        2000,
    )
    assert (c.train.loss_prediction_weight, c.train.loss_prediction_lr) == (0.01, 0.1)


def test_run_name_and_overrides():
    c = base()
    assert run_name(c) == "entropy+pcb"
    c.train.calibration = "cpeal"
    assert run_name(c) == "entropy+calib+pcb"
    c.al.strategy, c.train.calibration, c.al.pcb = "badge", "none", False
    assert run_name(c) == "badge"
    c.al.strategy, c.al.pcb = "random", True
    assert run_name(c) == "random"
    c.train.calibration = "avuc"
    assert run_name(c) == "random+avuc"
    lora = _load("lora.py")
    from_file = lora.get_config("ours")
    final = lora.get_config("ours")
    final.al.strategy = "badge"  # --config.al.strategy=badge on top of :ours
    assert rename_after_overrides(from_file, final) == "lora:badge+calib+pcb"
    final.name = "mine"  # --config.name=mine wins
    assert rename_after_overrides(from_file, final) == "mine"
    hand = base()
    hand.name = "tiny"
    hand2 = base()
    hand2.name, hand2.al.strategy = "tiny", "coreset"
    assert rename_after_overrides(hand, hand2) == "tiny"


def test_parse_arg_types_choices_and_errors():
    spec = {"runlocal": False, "seed": 1, "lr": 0.5, "tag": "x", "mode": ("lora", "linear")}
    assert parse_arg(None, spec) == {"runlocal": False, "seed": 1, "lr": 0.5, "tag": "x", "mode": "lora"}
    got = parse_arg("runlocal, seed=7,lr=1e-3,tag=a b,mode=linear", spec)
    assert got == {"runlocal": True, "seed": 7, "lr": 1e-3, "tag": "a b", "mode": "linear"}
    assert isinstance(got["seed"], int) and isinstance(got["lr"], float)
    assert parse_arg("runlocal=false", spec)["runlocal"] is False
    with pytest.raises(ValueError) as e:
        parse_arg("sead=2,mode=lin,lr=fast,seed=1,seed=2,runlocal=maybe,tag", spec, where="x.py")
    lines = str(e.value).splitlines()
    assert lines[0] == (
        "x.py: unknown argument 'sead' (did you mean 'seed'?); accepted: runlocal, seed=INT, "
        "lr=FLOAT, tag=STR, mode=lora|linear"
    )
    assert lines[1] == "x.py: argument 'mode=lin': 'lin' is not one of lora, linear (did you mean 'linear'?)"
    assert lines[2] == "x.py: argument 'lr=fast': expected a number, got 'fast'"
    assert lines[3] == "x.py: argument 'seed' given twice"
    assert lines[4] == "x.py: argument 'runlocal=maybe': expected true or false, got 'maybe'"
    assert lines[5] == "x.py: argument 'tag': needs a value (STR)"
    assert len(lines) == 6
    with pytest.raises(ValueError, match="accepted: none"):
        parse_arg("x", {})


def test_load_config_file_matches_the_module(tmp_path):
    c = config_lib.load_config_file(os.path.join(ROOT, "configs", "peal.py") + ":mode=linear,seed=4")
    assert c.to_dict() == _load("peal.py").get_config("mode=linear,seed=4").to_dict()
    with pytest.raises(FileNotFoundError, match="does not exist"):
        config_lib.load_config_file(str(tmp_path / "nope.py"))


def test_known_weights_download_commands():
    rn50 = config_lib.CLIP_BACKBONES["rn50"]
    assert rn50.download_command("weights/clip-rn50") == (
        'hf download timm/resnet50_clip.openai "open_clip_model.safetensors" "open_clip_config.json" '
        "--local-dir weights/clip-rn50"
    )
    b16 = config_lib.known_weights("openai/clip-vit-base-patch16")
    assert b16.download_command() == (
        'hf download openai/clip-vit-base-patch16 --include "*.json" "*.txt" "*.safetensors" --local-dir DIR'
    )
    assert config_lib.known_weights("facebook/dinov2-large").hub == "facebook/dinov2-large"
    assert config_lib.known_weights("./my/own.safetensors") is None


def test_resuming_may_change_how_the_run_proceeds_but_not_what_it_computes():
    from alpeft_jax import config as config_lib

    old = config_lib.base().to_dict()
    new = config_lib.base()
    new.label_studio.wait_seconds = 3600.0
    new.train.checkpoint_every_steps = 50
    assert config_lib.diff(old, new.to_dict()) == []
    new.train.epochs = 3
    assert config_lib.diff(old, new.to_dict()) == ["train.epochs: 10 -> 3"]


def test_peal_paper_lora_trains_three_hundredths_of_a_percent_of_dinov2_base():
    import jax
    import jax.numpy as jnp

    from alpeft_jax.convert import hf_dinov2
    from alpeft_jax.models import lora as lora_lib
    from alpeft_jax.models.adapted import AdaptConfig

    peal = _load("peal.py")
    hf = {"model_type": "dinov2", "hidden_size": 768, "num_hidden_layers": 12, "num_attention_heads": 12}
    module = hf_dinov2.model_from_config({**hf, "image_size": 518, "patch_size": 14}, jnp.float32, "dinov2-base")
    shapes = jax.eval_shape(lambda: module.init(jax.random.PRNGKey(0), jnp.zeros((1, 518, 518, 3))))["params"]
    total = lora_lib.num_params(shapes)
    assert total == 86_580_480  # transformers' Dinov2Model of this config (tests/models/dinov2_vs_reference_test.py)

    def share(c):
        cfg = AdaptConfig.from_config(c.adapt, "dinov2").lora  # what the driver adapts
        tree = jax.eval_shape(lambda: lora_lib.init(jax.random.key(0), shapes, cfg))
        return lora_lib.num_params(tree), 100 * lora_lib.num_params(tree) / total

    paper, default = share(peal.get_config("lora=paper")), share(peal.get_config(""))
    assert paper[0] == 1 * (768 + 768) * 3 * 6 and round(paper[1], 2) == 0.03
    assert default[0] == 4 * (768 + 768) * 3 * 12 and round(default[1], 3) == 0.255
    assert peal.get_config("lora=paper").name == "lora_paper:entropy+pcb"


def test_nopcb_selects_like_the_reference():
    for name in ("coop.py", "lora.py"):
        c = _load(name).get_config("nopcb")
        assert not c.al.pcb and c.al.authors_quirk and c.name.endswith(":entropy")
