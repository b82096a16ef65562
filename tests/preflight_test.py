"""Every mistake caught before any compute: one line each, all at once, exit code 2, nothing written."""

import json
import os
import subprocess
import sys
import time

import pytest

from alpeft_jax import preflight
from alpeft_jax.config import load_config_file

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TINY = os.path.join(ROOT, "tests", "configs", "tiny.py")
FMNIST = "/usr/share/datasets/fashion-mnist/train-images-idx3-ubyte.gz"


@pytest.fixture(autouse=True)
def _offline(monkeypatch, tmp_path):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hf_cache"))


def _tiny(arg=""):
    return load_config_file(TINY + (f":{arg}" if arg else ""))


def _tree(root):
    return sorted(
        (os.path.relpath(os.path.join(d, f), root), os.path.getmtime(os.path.join(d, f)))
        for d, _, files in os.walk(root)
        for f in files
    )


def _cli(*args, cwd=ROOT):
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    t0 = time.time()
    proc = subprocess.run(
        [sys.executable, "-m", "alpeft_jax.main", *args], cwd=cwd, capture_output=True, text=True, env=env, timeout=300
    )
    return proc.returncode, proc.stderr.splitlines(), time.time() - t0


# -- clean configs pass --------------------------------------------------------------------------------------


def test_a_clean_config_passes_and_nothing_is_written(tmp_path):
    before = _tree(tmp_path)
    assert preflight.check(_tiny(), str(tmp_path / "wd")) == []
    assert preflight.check(_tiny(), str(tmp_path / "a" / "b")) == []  # created later, by the run
    if os.path.exists(FMNIST):
        assert preflight.check(load_config_file(os.path.join(ROOT, "configs", "demo.py")), str(tmp_path / "w")) == []
    assert _tree(tmp_path) == before and not os.path.exists(tmp_path / "wd")


# -- the label schedule --------------------------------------------------------------------------------------


def test_schedule_problems_name_the_field_to_change(tmp_path):
    wd = str(tmp_path / "wd")
    c = _tiny()
    c.al.initial = 500
    assert preflight.check(c, wd) == [
        "al.initial=500: 500 round-0 labels exceed the pool of 150 (data.max_pool=150);"
        " lower al.initial, or raise data.max_pool"
    ]
    c = _tiny()
    c.al.budget = 70
    assert preflight.check(c, wd) == [  # 10 + 70 x 2 = 150 labels fit a pool of 150 exactly; 15 candidates do not
        "al.gamma=0.1: int(al.gamma x pool) = int(0.1 x 150) = 15 candidates, fewer than al.budget=70 per round; "
        "raise al.gamma to 0.47 or lower al.budget"
    ]
    c = _tiny()
    c.al.budget, c.al.gamma = 71, 0.5
    assert preflight.check(c, wd) == [
        "al.budget=71: al.initial + al.budget x (al.rounds - 1) = 10 + 71 x 2 = 152 labels exceed the pool of 150 "
        "(data.max_pool=150); lower al.budget or al.rounds, or raise data.max_pool"
    ]
    c = _tiny()
    c.al.initial, c.data.max_pool = 0, 8  # 0 = K = 10 digits classes
    assert preflight.check(c, wd) == [
        "al.initial=0 (0 = the 10 classes): 10 round-0 labels exceed the pool of 8 "
        "(data.max_pool=8); lower al.initial, or raise data.max_pool"
    ]
    c = _tiny()
    c.al.gamma = 0.02
    assert preflight.check(c, wd) == [
        "al.gamma=0.02: int(al.gamma x pool) = int(0.02 x 150) = 3 candidates, fewer "
        "than al.budget=5 per round; raise al.gamma to 0.04 or lower al.budget"
    ]
    c.al.strategy = "random"  # random and featdist pick al.budget directly: no candidate pool
    assert preflight.check(c, wd) == []


def test_budget_problem_stops_the_command_within_seconds(tmp_path):
    wd = tmp_path / "wd"
    rc, err, seconds = _cli(f"--config={TINY}", f"--workdir={wd}", "--config.al.budget=100")
    assert rc == 2 and seconds < 5, (rc, seconds, err)
    assert err[0] == (
        "error: al.budget=100: al.initial + al.budget x (al.rounds - 1) = 10 + 100 x 2 = 210 labels "
        "exceed the pool of 150 (data.max_pool=150); lower al.budget or al.rounds, or raise "
        "data.max_pool"
    )
    assert all(line.startswith("error: ") for line in err) and len(err) == 2  # and the gamma line
    assert not wd.exists()


# -- the command line ----------------------------------------------------------------------------------------


def test_misspelt_key_is_one_line_with_the_suggestion(tmp_path):
    wd = tmp_path / "wd"
    rc, err, _ = _cli(f"--config={TINY}", f"--workdir={wd}", "--config.train.epochz=3")
    assert (rc, err) == (2, ["error: --config.train.epochz: no such config key; did you mean --config.train.epochs?"])
    rc, err, _ = _cli(
        f"--config={TINY}",
        f"--workdir={wd}",
        "--config.al.rounds=abc",
        "--config.zzz=1",
        "--config.al.pcb",
        "--noconfig.train.augment",
    )
    assert rc == 2 and err == [
        "error: --config.al.rounds=abc: expected an integer",
        "error: --config.zzz: no such config key; `python -m alpeft_jax.main --settings` "
        "lists every key with its default",
    ]
    assert not wd.exists()


def test_unknown_config_file_argument(tmp_path):
    rc, err, _ = _cli("--config=configs/demo.py:runlocl", f"--workdir={tmp_path / 'wd'}")
    assert (rc, err) == (
        2,
        [
            "error: configs/demo.py: unknown argument 'runlocl' (did you mean 'runlocal'?); "
            "accepted: strategy=entropy|badge|bald|coreset|featdist|learning_loss|least_confidence|"
            "margin|probcover|random|tcm|typiclust, random, pcb, calib, mode=linear|lora, seed=INT, "
            "runlocal"
        ],
    )
    rc, err, _ = _cli("--config=configs/nope.py", f"--workdir={tmp_path / 'wd'}")
    assert (rc, err) == (2, ["error: config file configs/nope.py does not exist; the experiments are in configs/*.py"])
    assert not (tmp_path / "wd").exists()


def test_runlocal_without_the_data_or_weights_says_so(tmp_path):
    data = tmp_path / "tfds"
    data.mkdir()
    before = _tree(tmp_path)
    rc, err, _ = _cli("--config=configs/coop.py:runlocal", f"--workdir={tmp_path / 'wd'}", f"--config.data.dir={data}")
    assert rc == 2
    assert err[0].startswith(
        f"error: data.name='dtd': TFDS dataset 'dtd' is not prepared under {data}; build it once "
        f"with `tfds build dtd --data_dir {data} --file_format array_record`"
    )
    assert err[1] == (
        f"error: data.split_file: CoOp split file {data}/split_zhou_DescribableTextures.json does not "
        "exist; download split_zhou_DescribableTextures.json from https://drive.google.com/file/d/"
        f"1u3_QfB467jqHgNXC00UIzbLZRQCg2S7x/view (CoOp DATASETS.md) into {data}, or pass "
        "--config.data.split_file=PATH"
    )
    assert err[2] == (
        "error: backbone weights/clip-rn50/open_clip_model.safetensors: no such file or directory; run "
        '`hf download timm/resnet50_clip.openai "open_clip_model.safetensors" "open_clip_config.json" '
        "--local-dir weights/clip-rn50` (or download it elsewhere and pass "
        "--config.backbone=DIR/open_clip_model.safetensors)"
    )
    assert err[3] == (
        "error: runlocal shrinks the run but still reads the config's data and weights (above); "
        "`configs/demo.py:runlocal` runs offline on what `make install` brings"
    )
    assert len(err) == 4 and _tree(tmp_path) == before and not (tmp_path / "wd").exists()


# -- the workdir ---------------------------------------------------------------------------------------------


def test_workdir_problems(tmp_path, monkeypatch):
    f = tmp_path / "file"
    f.write_text("x")
    assert preflight.check(_tiny(), str(f)) == [f"workdir {f} is a file; pass a directory (--workdir=DIR)"]
    assert preflight.check(_tiny(), str(f / "sub")) == [f"workdir {f / 'sub'} cannot be created: {f} is a file"]
    wd = tmp_path / "run"
    wd.mkdir()
    (wd / "config.json").write_text(json.dumps(_tiny("epochs=3").to_dict()))
    (wd / "al_state.json").write_text("{}")
    before = _tree(tmp_path)
    assert preflight.check(_tiny("epochs=3"), str(wd)) == []  # the same run: resume
    assert preflight.check(_tiny("epochs=5,rounds=2"), str(wd)) == [
        f"workdir {wd} holds a run with another config (al.rounds: 3 -> 2; train.epochs: 3 -> 5); use a new "
        "--workdir, or pass --allow_config_change to continue it with the new config"
    ]
    assert preflight.check(_tiny("epochs=5"), str(wd), allow_config_change=True) == []
    (wd / "al_state.json").unlink()  # nothing recorded yet: any config may start it
    assert preflight.check(_tiny("epochs=5"), str(wd)) == []
    real_access = os.access
    monkeypatch.setattr(os, "access", lambda p, mode: False if str(p) == str(wd) else real_access(p, mode))
    assert preflight.check(_tiny(), str(wd)) == [f"workdir {wd} is not writable; pass a directory you can write to"]
    assert preflight.check(_tiny(), str(wd / "new")) == [
        f"workdir {wd / 'new'} cannot be created: {wd} is not writable"
    ]
    before = [b for b in before if b[0] != "run/al_state.json"]
    assert _tree(tmp_path) == before


# -- data ----------------------------------------------------------------------------------------------------


def test_data_problems(tmp_path):
    wd = str(tmp_path / "wd")
    peal = load_config_file(os.path.join(ROOT, "configs", "peal.py"))
    peal.backbone = "efficientnet-lite0"
    peal.adapt.mode = "linear"
    peal.data.test_split = "test"  # TFDS EuroSAT has one split
    assert preflight.check(peal, wd) == [
        "data.test_split='test': TFDS 'eurosat/rgb' has no split 'test' (its splits: train); it has one split: cut "
        "it, e.g. data.train_split='train[:80%]' and data.test_split='train[80%:]'"
    ]
    peal.data.test_split, peal.data.dir = "train[80%:]", str(tmp_path)
    assert preflight.check(peal, wd) == [
        f"data (data.train_split='train[:80%]', data.test_split='train[80%:]'): TFDS dataset 'eurosat/rgb' is not "
        f"prepared under {tmp_path}; build it once with `tfds build eurosat/rgb --data_dir {tmp_path} --file_format "
        "array_record` (needs TensorFlow and the raw download) or point --config.data.dir at a directory that holds "
        "it"
    ]
    peal.data.name = "no_such_dataset_xyz"
    assert preflight.check(peal, wd)[0].startswith("data.name='no_such_dataset_xyz': TFDS has no dataset named")
    # image folders: missing, and pool and test of different datasets
    folder = tmp_path / "imgs"
    c = _tiny()
    c.data.name, c.data.dir = "folder", str(folder)
    assert preflight.check(c, wd) == [
        f"data (data.train_split='train', data.test_split='test'): image folder "
        f"{folder} does not exist; expected {folder}/<class>/<image files>"
    ]
    # the datasets no package downloads: the message says where they come from
    aptos = load_config_file(os.path.join(ROOT, "configs", "peal.py"))
    aptos.update_from_flattened_dict({"backbone": "efficientnet-lite0", "adapt.mode": "linear"})
    aptos.data.name, aptos.data.dir = "folder", str(tmp_path / "aptos")
    (msg,) = preflight.check(aptos, wd)
    assert msg.startswith(
        f"data (data.train_split='train[:80%]', data.test_split='train[80%:]'): image folder {tmp_path}"
    )
    assert msg.endswith(
        "; APTOS 2019 comes from Kaggle: kaggle competitions download -c aptos2019-blindness-detection "
        "(https://www.kaggle.com/competitions/aptos2019-blindness-detection/data), then link "
        "train_images/<id_code>.png into DIR/<diagnosis>/ by train.csv (README, PEAL data)"
    )
    aircraft = load_config_file(os.path.join(ROOT, "configs", "lora.py") + ":dataset=fgvc_aircraft")
    aircraft.update_from_flattened_dict({"backbone": "efficientnet-lite0", "adapt.mode": "linear"})
    aircraft.adapt.head, aircraft.data.dir = "linear", str(tmp_path)
    (msg,) = preflight.check(aircraft, wd)
    assert msg.endswith(
        f"{tmp_path}/fgvc_aircraft/variants.txt does not exist; download https://www.robots.ox.ac.uk/~vgg/data/"
        "fgvc-aircraft/archives/fgvc-aircraft-2013b.tar.gz (CoOp DATASETS.md, FGVCAircraft) and move the archive's "
        f"data/ folder to {tmp_path}/fgvc_aircraft"
    )
    from PIL import Image

    for split, classes in (("train", "ab"), ("test", "abc")):
        for cls in classes:
            os.makedirs(folder / split / cls)
            Image.new("RGB", (4, 4)).save(folder / split / cls / "0.png")
    c.al.initial, c.al.budget, c.al.rounds, c.data.max_pool = 1, 1, 2, 0
    assert preflight.check(c, wd) == [
        "data: the pool (train) has 2 classes but the test split (test) has 3; use splits of the same dataset",
        "al.gamma=0.1: int(al.gamma x pool) = int(0.1 x 2) = 0 candidates, fewer than "
        "al.budget=1 per round; raise al.gamma to 0.50 or lower al.budget",
    ]


# -- weights -------------------------------------------------------------------------------------------------


def test_backbone_found_or_the_download_command(tmp_path, monkeypatch):
    wd = str(tmp_path / "wd")
    c = _tiny()
    c.adapt.mode, c.adapt.head = "linear", "linear"
    c.backbone = "facebook/dinov2-small"
    assert preflight.check(c, wd) == [
        "backbone facebook/dinov2-small: not a local path, not in the Hugging Face cache, and HF_HUB_OFFLINE is set; "
        'on a machine with network run `hf download facebook/dinov2-small --include "*.json" "*.safetensors" '
        "--local-dir DIR`, copy DIR here, then --config.backbone=DIR"
    ]
    # in the Hugging Face cache: found
    snap = tmp_path / "hf_cache" / "models--facebook--dinov2-small" / "snapshots" / "abc123"
    os.makedirs(snap)
    (snap / "config.json").write_text('{"model_type": "dinov2"}')
    os.makedirs(snap.parent.parent / "refs")
    (snap.parent.parent / "refs" / "main").write_text("abc123")
    assert preflight.check(c, wd) == []
    # a directory: a save_pretrained folder is found; one with only a weights file points at it
    c.backbone = str(snap)
    assert preflight.check(c, wd) == []
    loose = tmp_path / "loose"
    loose.mkdir()
    (loose / "open_clip_model.safetensors").write_bytes(b"")
    c.backbone = str(loose)
    assert preflight.check(c, wd) == [
        f"backbone {loose}: a directory without config.json (not a Hugging Face "
        "save_pretrained folder); pass the weights file, e.g. "
        f"--config.backbone={loose}/open_clip_model.safetensors"
    ]
    c.backbone = str(tmp_path / "nope.pt")
    assert preflight.check(c, wd) == [
        f"backbone {tmp_path}/nope.pt: no such file or directory; pass an existing "
        "Hugging Face directory or state-dict file as --config.backbone"
    ]


# -- values --------------------------------------------------------------------------------------------------


def test_values_all_at_once(tmp_path):
    c = _tiny()
    c.dtype, c.al.strategy, c.train.calibration, c.al.rounds = "float64", "entrpy", "calib", 0
    c.train.loss_scale, c.al.options = "static", "k"
    problems = preflight.check(c, str(tmp_path / "wd"))
    assert problems == [
        "dtype='float64' is not one of float32, bfloat16, float16",
        "train.calibration='calib' is not one of none, cpeal, avuc",
        "train.loss_scale='static' is not one of dynamic, none",
        "al.rounds=0 must be at least 1",
        "al.options='k': al.options entry 'k' is not key=value.",
        "al.strategy='entrpy' is not one of badge, bald, coreset, entropy, featdist, learning_loss, "
        "least_confidence, margin, probcover, random, tcm, typiclust",
    ]
    c = _tiny()
    c.dtype = "float16"  # fp16 with dynamic loss scaling (train.loss_scale) is accepted
    assert preflight.check(c, str(tmp_path / "wd")) == []
    c.al.strategy, c.adapt.mode = "bald", "linear"
    assert preflight.check(c, str(tmp_path / "wd")) == [
        "al.strategy=bald needs MC dropout: adapt.mode=lora with adapt.lora.dropout > 0"
    ]
    c = _tiny()
    c.adapt.mode = "prompt"
    assert preflight.check(c, str(tmp_path / "wd")) == [
        "adapt.mode=prompt needs a CLIP backbone, not efficientnet (efficientnet-lite0); use lora or linear",
        "adapt.head=linear with adapt.mode=prompt: prompts classify through the text tower; use adapt.head=auto",
    ]


def test_prompt_without_context_is_refused_before_the_run(tmp_path):
    c = _tiny()
    c.adapt.prompt.n_ctx = 0  # PromptConfig (built for every adapt.mode) refuses it: preflight says so first
    assert preflight.check(c, str(tmp_path / "wd")) == [
        "adapt.prompt.n_ctx=0: the prompt needs at least 1 context token; raise adapt.prompt.n_ctx or set "
        "adapt.prompt.init (its words set the context)"
    ]
    c.adapt.prompt.init = "a photo of a"
    assert preflight.check(c, str(tmp_path / "wd")) == []


def test_strategy_names_match_the_registry():
    from alpeft_jax import strategies

    assert preflight.strategy_names() == strategies.names()


def test_efficientnet_linear_needs_no_lora_targets(tmp_path):
    from alpeft_jax.models.adapted import AdaptConfig

    c = _tiny()
    c.adapt.lora.targets = ""
    assert preflight.check(c, str(tmp_path / "wd")) == [
        "adapt.lora.targets is empty: EfficientNet needs explicit LoRA targets, e.g. "
        "--config.adapt.lora.targets='blocks_1[3-5]/.*(expand|project)_conv' (or adapt.mode=linear)"
    ]
    c.adapt.mode = "linear"
    assert preflight.check(c, str(tmp_path / "wd")) == []
    assert AdaptConfig.from_config(c.adapt, "efficientnet").mode == "linear"  # no "needs explicit LoRA targets"


@pytest.mark.slow
def test_efficientnet_linear_without_lora_targets_runs(tmp_path):
    from alpeft_jax import loop

    c = _tiny("rounds=1,epochs=1")
    c.adapt.mode, c.adapt.lora.targets = "linear", ""
    results = loop.run(c, str(tmp_path / "wd"))
    assert [r["n_labeled"] for r in results] == [10]


# -- Label Studio and cloud workdirs -------------------------------------------------------------------------


def test_label_studio_token_and_server_are_checked_before_the_workdir_is_made(tmp_path, monkeypatch):
    import socket

    with socket.socket() as s:  # a port nothing listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    wd = tmp_path / "wd"
    args = [f"--config={TINY}", f"--workdir={wd}", "--config.oracle=label_studio"]
    url = f"--config.label_studio.url=http://127.0.0.1:{port}"
    env_token = "ALPEFT_TEST_NO_SUCH_TOKEN"
    monkeypatch.delenv(env_token, raising=False)
    rc, err, _ = _cli(*args, url, f"--config.label_studio.token_env={env_token}")
    assert rc == 2 and err == [
        f"error: label_studio: ${env_token} is not set; export {env_token}=<a personal access token or legacy "
        "token from Label Studio > Account & Settings>"
    ]
    assert not wd.exists()  # nothing written
    monkeypatch.setenv(env_token, "0" * 40)
    c = _tiny()
    c.oracle, c.label_studio.url, c.label_studio.token_env = "label_studio", f"http://127.0.0.1:{port}", env_token
    (line,) = preflight.check(c, str(wd))
    assert line.startswith(f"cannot reach Label Studio at http://127.0.0.1:{port} while checking the token")
    assert "label_studio.url" in line and not wd.exists()


def test_a_cloud_workdir_without_its_file_system_package_names_the_extra(tmp_path, monkeypatch):
    import importlib.util

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "gcsfs" else real(name, *a))
    assert preflight.check(_tiny(), "gs://my-bucket/runs/a") == [
        "workdir gs://my-bucket/runs/a: gs:// needs the gcsfs package, which is not installed; "
        'pip install -e ".[cloud]"'
    ]
    c = _tiny()
    c.scoring.cache_dir = "gs://my-bucket/cache"
    assert preflight.check(c, str(tmp_path / "wd")) == [
        "scoring.cache_dir gs://my-bucket/cache: gs:// needs the gcsfs package, which is not installed; "
        'pip install -e ".[cloud]"'
    ]
    monkeypatch.setattr(importlib.util, "find_spec", real)
    assert preflight.check(_tiny(), "memory://runs/a") == []  # fsspec's own file systems need nothing more
