"""A seconds-long run for the driver tests: EfficientNet-Lite0 (real weights) on scikit-learn digits at 32 px.

Args: `oracle=file`, `ckpt=N` (checkpoint every N steps), `epochs=N`, `rounds=N`, `strategy=NAME`, `cache=DIR`.
"""

from alpeft_jax.config import base, parse_arg


def get_config(arg=None):
    args = parse_arg(arg)
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
    c.train.epochs = int(args.get("epochs", 3))
    c.train.batch_size = 8
    c.train.lr = 0.01
    c.train.augment = False
    c.train.checkpoint_every_steps = int(args.get("ckpt", 0))
    c.al.strategy = args.get("strategy", "entropy")
    c.al.rounds = int(args.get("rounds", 3))
    c.al.budget = 5
    c.al.initial = 10
    c.scoring.batch_size = 64
    c.scoring.cache_dir = args.get("cache", "")
    c.oracle = args.get("oracle", "simulated")
    return c
