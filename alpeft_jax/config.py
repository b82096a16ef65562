"""The full set of run settings with their defaults; every file in configs/ starts from `base()`.

Every comparison of the papers is a `--config.x=y` away: strategy (`al.strategy`), calibration on/off
(`train.calibration`), backbone, dataset, seed, rounds, budget.
"""

from __future__ import annotations

from typing import Any

import ml_collections


def base() -> ml_collections.ConfigDict:
    """Defaults: C-PEAL's LoRA recipe (METHOD.md §3, §5) on DTD with CLIP ViT-B/16."""
    c = ml_collections.ConfigDict()
    c.name = "run"  # a label for reports (e.g. "entropy+calib")
    c.seed = 1
    c.backbone = "openai/clip-vit-base-patch16"  # HF directory / hub id, state-dict file, or "efficientnet-lite0"
    c.dtype = "float32"  # compute dtype: float32 | bfloat16

    c.data = ml_collections.ConfigDict()
    c.data.name = "dtd"  # TFDS name, "fashion_mnist", "digits", "folder", "csv", "coop"
    c.data.dir = ""  # TFDS data_dir / image-folder root / CSV path / Fashion-MNIST directory
    c.data.train_split = "train"
    c.data.test_split = "test"
    c.data.split_file = ""  # CoOp split_zhou_*.json (with data.name="coop")
    c.data.image_size = 0  # 0: the backbone's own
    c.data.max_pool = 0  # >0: a fixed random subset of the pool (the same for every seed and strategy)
    c.data.max_test = 0
    c.data.subset_seed = 0
    c.data.coop_names = True  # CoOp's class names where the package has them (EuroSAT renames)
    c.data.num_threads = 0  # 0: all cores

    c.adapt = ml_collections.ConfigDict()
    c.adapt.mode = "lora"  # lora | prompt | linear
    c.adapt.head = "auto"  # auto | none | linear | zeroshot
    c.adapt.n_placeholders = 16  # the frozen "X" tokens of CLIP's LoRA-mode prompts
    c.adapt.template = ""
    c.adapt.lora = ml_collections.ConfigDict()
    c.adapt.lora.rank = 4
    c.adapt.lora.alpha = 4.0
    c.adapt.lora.dropout = 0.25
    c.adapt.lora.scale_mode = "sqrt"  # sqrt: alpha/sqrt(r) as the authors ran it; linear: alpha/r
    c.adapt.lora.towers = "both"  # CLIP: both | vision | text (ignored when targets is set)
    c.adapt.lora.targets = ""  # comma-separated regexes over module paths; "" = q,k,v of the chosen towers
    c.adapt.prompt = ml_collections.ConfigDict()
    c.adapt.prompt.n_ctx = 16
    c.adapt.prompt.class_specific = True
    c.adapt.prompt.init = ""
    c.adapt.prompt.position = "end"

    c.train = ml_collections.ConfigDict()
    c.train.epochs = 10
    c.train.batch_size = 32
    c.train.optimizer = "sgd"
    c.train.lr = 0.002
    c.train.momentum = 0.9
    c.train.weight_decay = 5e-4
    c.train.warmup_epochs = 1
    c.train.warmup_lr = 1e-5
    c.train.label_smoothing = 0.0
    c.train.calibration = "cpeal"  # cpeal | avuc | none
    c.train.calibration_weight = 1.0
    c.train.calibration_anneal = True
    c.train.calibration_weighting = "balanced"  # balanced | none | effective_number
    c.train.drop_last = True
    c.train.augment = True  # random resized crop + flip (needs the full forward; no prefix cache for training)
    c.train.warm_start = False  # the authors re-initialise every round
    c.train.checkpoint_every_steps = 0  # >0: also checkpoint inside a round
    c.train.loss_prediction = False  # train the learning-loss head (set automatically for al.strategy=learning_loss)

    c.al = ml_collections.ConfigDict()
    c.al.strategy = "entropy"
    c.al.rounds = 10
    c.al.budget = 0  # labels per round; 0: the number of classes K
    c.al.initial = 0  # round-0 random labels; 0: K
    c.al.gamma = 0.1  # candidate pool = int(gamma * initial pool size)
    c.al.pcb = True
    c.al.authors_quirk = False  # reproduce the reference code's idx[-K:] cut when PCB is off
    c.al.mc_samples = 10  # BALD: MC-dropout passes through the LoRA dropout
    c.al.options = ""  # extra strategy options as "key=value,key=value"

    c.scoring = ml_collections.ConfigDict()
    c.scoring.batch_size = 256
    c.scoring.cache = True  # cache the frozen prefix of pool and test images once
    c.scoring.cache_dir = ""  # "" = DIR/cache; share it between runs of the same backbone and data
    c.scoring.memory_budget_gb = 4.0

    c.eval = ml_collections.ConfigDict()
    c.eval.batch_size = 100

    c.oracle = "simulated"  # simulated | file | label_studio
    c.label_studio = ml_collections.ConfigDict()
    c.label_studio.url = ""
    c.label_studio.project = 0
    c.label_studio.image_url_prefix = ""
    return c


def parse_options(text: str) -> dict[str, Any]:
    """'k=v,k2=v2' -> {'k': v, 'k2': v2} with ints, floats and booleans recognised."""
    out: dict[str, Any] = {}
    for part in filter(None, (p.strip() for p in text.split(","))):
        if "=" not in part:
            raise ValueError(f"al.options entry {part!r} is not key=value.")
        k, v = (s.strip() for s in part.split("=", 1))
        for cast in (int, float):
            try:
                out[k] = cast(v)
                break
            except ValueError:
                continue
        else:
            out[k] = {"true": True, "false": False}.get(v.lower(), v)
    return out


def apply_runlocal(c: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
    """Shrink a config to a seconds-long smoke run."""
    c.al.rounds = min(c.al.rounds, 2)
    c.train.epochs = min(c.train.epochs, 2)
    c.data.max_pool = min(c.data.max_pool or 200, 200)
    c.data.max_test = min(c.data.max_test or 100, 100)
    c.scoring.batch_size = 64
    return c


def parse_arg(arg: str | None) -> dict[str, str]:
    """A config-file argument 'runlocal,res=224' -> {'runlocal': '', 'res': '224'}."""
    out = {}
    for part in filter(None, (p.strip() for p in (arg or "").split(","))):
        k, _, v = part.partition("=")
        out[k] = v
    return out
