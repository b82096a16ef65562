"""A seconds-long run for the driver tests: EfficientNet-Lite0 (real weights) on scikit-learn digits at 32 px.

Args: `oracle=file`, `ckpt=N` (checkpoint every N steps), `epochs=N`, `rounds=N`, `strategy=NAME`, `cache=DIR`.
"""

from alpeft_jax.config import base, parse_arg

ARGS = {"oracle": ("simulated", "file"), "ckpt": 0, "epochs": 3, "rounds": 3, "strategy": "entropy", "cache": ""}


def get_config(arg=None):
    args = parse_arg(arg, ARGS, __file__)
    c = base()
    c.name = "tiny"
    c.backbone = "efficientnet-lite0"
    c.data.name = "digits"
    c.data.image_size = 32
    c.data.max_pool = 150
    c.data.max_test = 60
    c.data.coop_names = False
    c.data.num_threads = 1
    c.adapt.mode = "lora"
    c.adapt.head = "linear"
    c.adapt.lora.targets = r"blocks_1[4-5]/(expand|project)_conv"
    c.train.epochs = args["epochs"]
    c.train.batch_size = 8
    c.train.lr = 0.01
    c.train.augment = False
    c.train.checkpoint_every_steps = args["ckpt"]
    c.al.strategy = args["strategy"]
    c.al.rounds = args["rounds"]
    c.al.budget = 5
    c.al.initial = 10
    c.scoring.batch_size = 64
    c.scoring.cache_dir = args["cache"]
    c.oracle = args["oracle"]
    return c
