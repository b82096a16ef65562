"""The full set of run settings with their defaults; every file in configs/ starts from `base()`.

`base()` holds every default (learning rate, epochs, loss weights, loss scaling ...), derived from their one
declaration in `alpeft_jax.schema`; the driver reads them from the config and holds no defaults of its own.
Every comparison of the papers is a `--config.x=y` away: strategy (`al.strategy`), calibration on/off
(`train.calibration`), backbone, dataset, seed, rounds, budget. The calibration loss is off unless a run asks
for it (the papers' baselines run without it; only "ours", `configs/coop.py:ours` / `configs/lora.py:ours`, has
it), and `run_name` names a run by its strategy, loss and PCB.

Config files take a comma-separated argument string (`--config=configs/lora.py:dataset=eurosat,ours`):
`parse_arg(arg, spec)` parses it against the arguments the file declares, typed and strict.
"""

from __future__ import annotations

import dataclasses
import difflib
import importlib.util
import os
from typing import Any

import ml_collections

from alpeft_jax import schema
from alpeft_jax.data import classnames
from alpeft_jax.schema import parse_options

__all__ = [
    "base",
    "parse_options",
    "strategy_options",
    "apply_runlocal",
    "run_name",
    "rename_after_overrides",
    "parse_arg",
    "load_config_file",
    "Weights",
    "CLIP_BACKBONES",
    "DINOV2_BACKBONES",
    "known_weights",
    "CPEAL_DATASETS",
    "LAYOUTS",
    "set_cpeal_data",
    "PEAL_DATASETS",
    "set_peal_data",
    "RUN_CONTROL",
    "diff",
]


def base() -> ml_collections.ConfigDict:
    """Defaults: C-PEAL's LoRA recipe (METHOD.md §3, §5) on DTD with CLIP ViT-B/16, no calibration loss.

    Every key, default, comment and accepted value is declared in `alpeft_jax.schema` (`python -m alpeft_jax.main
    --settings` lists them); this is `schema.Settings()` as a ConfigDict.
    """
    return ml_collections.ConfigDict(schema.to_dict(schema.Settings()))


def strategy_options(c: ml_collections.ConfigDict) -> dict[str, Any]:
    """The options a run passes to its strategy: `al.options`, and for al.strategy=tcm the `al.tcm` settings."""
    out = parse_options(c.al.options)
    if c.al.strategy == "tcm":
        out.update(c.al.tcm.to_dict())
    return out


def apply_runlocal(c: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
    """Shrink a config to a seconds-long smoke run (it still needs the config's data and weights)."""
    c.al.rounds = min(c.al.rounds, 2)
    c.train.epochs = min(c.train.epochs, 2)
    c.data.max_pool = min(c.data.max_pool or 200, 200)
    c.data.max_test = min(c.data.max_test or 100, 100)
    c.al.initial = min(c.al.initial or 10, 10)
    c.al.budget = min(c.al.budget or 10, 10)  # int(gamma * 200) = 20 candidates >= 10
    c.scoring.batch_size = 64
    return c


def run_name(c: ml_collections.ConfigDict) -> str:
    """What a run is, from its strategy, calibration loss and PCB: e.g. 'entropy+calib+pcb', 'badge+pcb'."""
    parts = [c.al.strategy]
    if c.train.calibration == "cpeal":
        parts.append("calib")
    elif c.train.calibration != "none":
        parts.append(c.train.calibration)
    if c.al.pcb and c.al.strategy != "random":  # random never calls PCB's filter on a candidate pool
        parts.append("pcb")
    return "+".join(parts)


def rename_after_overrides(from_file: ml_collections.ConfigDict, final: ml_collections.ConfigDict) -> str:
    """The name of `final` (the file's config after `--config.x=y` overrides).

    A file names its runs `<prefix>run_name(c)`; when an override changes the strategy, the loss or PCB the name
    follows (keeping the prefix). A name the file wrote by hand, or one set on the command line, stays.
    """
    derived = run_name(from_file)
    if final.name != from_file.name or not from_file.name.endswith(derived):
        return final.name
    return from_file.name[: len(from_file.name) - len(derived)] + run_name(final)


# --------------------------------------------------------------------------------------------------------------
# Config-file arguments


_TRUE, _FALSE = ("", "1", "true", "yes", "t", "y"), ("0", "false", "no", "f", "n")


def _describe(name: str, default: Any) -> str:
    if isinstance(default, bool):
        return name
    if isinstance(default, tuple):
        return f"{name}={'|'.join(default)}"
    return f"{name}={type(default).__name__.upper()}"


def parse_arg(arg: str | None, spec: dict[str, Any] | None = None, where: str = "the config file") -> dict[str, Any]:
    """Parse 'runlocal,seed=2' against `spec` (name -> default; a tuple lists the choices, its first the default).

    A bool default makes a flag (`runlocal`, or `runlocal=false`); int, float and str defaults parse the value
    as that type. Unknown names, repeated names and values of the wrong type are a ValueError naming each
    problem (one line each) and the accepted arguments. Returns every declared argument.
    """
    spec = spec or {}
    out = {k: (v[0] if isinstance(v, tuple) else v) for k, v in spec.items()}
    accepted = ", ".join(_describe(k, v) for k, v in spec.items()) or "none"
    where = os.path.relpath(where) if where.endswith(".py") and os.path.isabs(where) else where
    problems, seen = [], set()
    for part in filter(None, (p.strip() for p in (arg or "").split(","))):
        key, has_value, value = (s.strip() for s in part.partition("="))
        if key not in spec:
            close = difflib.get_close_matches(key, list(spec), n=1)
            hint = f" (did you mean '{close[0]}'?)" if close else ""
            problems.append(f"{where}: unknown argument '{key}'{hint}; accepted: {accepted}")
            continue
        if key in seen:
            problems.append(f"{where}: argument '{key}' given twice")
            continue
        seen.add(key)
        default = spec[key]
        try:
            out[key] = _parse_value(default, value if has_value else None)
        except ValueError as e:
            problems.append(f"{where}: argument '{part}': {e}")
    if problems:
        raise ValueError("\n".join(problems))
    return out


def _parse_value(default: Any, value: str | None) -> Any:
    if isinstance(default, bool):
        v = (value or "").lower()
        if v in _TRUE:
            return True
        if v in _FALSE:
            return False
        raise ValueError(f"expected true or false, got {value!r}")
    if value is None:
        raise ValueError(f"needs a value ({_describe('x', default).split('=', 1)[1]})")
    if isinstance(default, tuple):
        if value not in default:
            close = difflib.get_close_matches(value, list(default), n=1)
            hint = f" (did you mean '{close[0]}'?)" if close else ""
            raise ValueError(f"'{value}' is not one of {', '.join(default)}{hint}")
        return value
    if isinstance(default, int):
        try:
            return int(value)
        except ValueError:
            raise ValueError(f"expected an integer, got {value!r}") from None
    if isinstance(default, float):
        try:
            return float(value)
        except ValueError:
            raise ValueError(f"expected a number, got {value!r}") from None
    return value


def config_module(path: str) -> Any:
    """The module of a Python config file (its get_config and ARGS); FileNotFoundError / ValueError if it is none."""
    if not os.path.isfile(path):
        raise FileNotFoundError(f"config file {path} does not exist; the experiments are in configs/*.py")
    mod_spec = importlib.util.spec_from_file_location(os.path.basename(path)[:-3] + "_config", path)
    if mod_spec is None or mod_spec.loader is None:
        raise ValueError(f"{path} is not a Python config file")
    mod = importlib.util.module_from_spec(mod_spec)
    mod_spec.loader.exec_module(mod)
    return mod


def load_config_file(spec: str) -> ml_collections.ConfigDict:
    """The config of 'path/to/file.py[:arg]' as `--config` builds it, before any `--config.x=y` override."""
    path, sep, arg = spec.partition(":")
    mod = config_module(path)
    return mod.get_config(arg) if sep else mod.get_config()


# --------------------------------------------------------------------------------------------------------------
# The papers' backbones and datasets (METHOD.md §3.1, §4)


@dataclasses.dataclass(frozen=True)
class Weights:
    """A backbone the configs name: its `config.backbone` value and where to download it."""

    source: str  # the default config.backbone
    hub: str  # the Hugging Face repository that holds it
    files: tuple[str, ...]  # what to download (file names or --include patterns)
    pattern: bool = True  # files are --include patterns (else exact file names)
    target: str = ""  # for a file inside the download: the file to pass as config.backbone

    def download_command(self, local_dir: str = "DIR") -> str:
        """The `hf download` command that fetches these weights into local_dir."""
        files = " ".join(f'"{f}"' for f in self.files)
        what = f"--include {files}" if self.pattern else files
        return f"hf download {self.hub} {what} --local-dir {local_dir}"


_HF_FILES = ("*.json", "*.txt", "*.safetensors")
CLIP_BACKBONES = {
    "rn50": Weights(
        "weights/clip-rn50/open_clip_model.safetensors",
        "timm/resnet50_clip.openai",
        ("open_clip_model.safetensors", "open_clip_config.json"),
        pattern=False,
        target="open_clip_model.safetensors",
    ),
    "rn101": Weights(
        "weights/clip-rn101/open_clip_model.safetensors",
        "timm/resnet101_clip.openai",
        ("open_clip_model.safetensors", "open_clip_config.json"),
        pattern=False,
        target="open_clip_model.safetensors",
    ),
    "vit_b32": Weights("openai/clip-vit-base-patch32", "openai/clip-vit-base-patch32", _HF_FILES),
    "vit_b16": Weights("openai/clip-vit-base-patch16", "openai/clip-vit-base-patch16", _HF_FILES),
}
DINOV2_BACKBONES = {
    v: Weights(f"facebook/dinov2-{v}", f"facebook/dinov2-{v}", ("*.json", "*.safetensors"))
    for v in ("small", "base", "large", "giant")
}


def known_weights(source: str) -> Weights | None:
    """The download record of a backbone the configs name by default, else None."""
    for w in (*CLIP_BACKBONES.values(), *DINOV2_BACKBONES.values()):
        if os.path.normpath(os.path.expanduser(source)) in (os.path.normpath(w.source), w.hub):
            return w
    return None


# C-PEAL (METHOD.md §4.1): the config argument -> the dataset's asset key and its TFDS builder (None: the CoOp
# folder only; TFDS has no FGVC-Aircraft, and its cars196 records carry no file names to match CoOp's split by).
CPEAL_DATASETS = {
    "dtd": ("dtd", "dtd"),
    "eurosat": ("eurosat", "eurosat/rgb"),
    "caltech101": ("caltech101", "caltech101"),
    "oxford_pets": ("oxford_iiit_pet", "oxford_iiit_pet"),
    "flowers102": ("oxford_flowers102", "oxford_flowers102"),
    "fgvc_aircraft": ("fgvc_aircraft", None),
    "stanford_cars": ("cars196", None),
}
LAYOUTS = ("tfds", "coop")


def set_cpeal_data(c: ml_collections.ConfigDict, dataset: str, layout: str) -> None:
    """CoOp's split of a C-PEAL dataset: its split_zhou JSON over TFDS records, or the CoOp folder layout."""
    key, tfds_name = CPEAL_DATASETS[dataset]
    if layout == "tfds" and tfds_name is None:
        raise ValueError(
            f"{dataset} has no TFDS records to apply CoOp's split to; use layout=coop with "
            "--config.data.dir=DATA (the CoOp DATA root)"
        )
    info = classnames.dataset_info(key)
    if layout == "tfds":
        c.data.name = tfds_name
        c.data.split_file = info["coop"]["split_file"]  # looked up in data.dir (the TFDS data_dir)
    else:
        c.data.name = f"coop:{key}"
        c.data.split_file = ""  # DATA/<dataset dir>/split_zhou_*.json (or the variant lists of FGVC-Aircraft)
    c.data.train_split, c.data.test_split = "train", "test"
    c.data.coop_names = True


# PEAL (METHOD.md §4.2): the paper's splits are unknown; where a dataset has one split, a fixed 80/20 cut.
PEAL_DATASETS = {
    "eurosat": ("eurosat/rgb", ""),
    "colorectal_histology": ("colorectal_histology", ""),
    "aptos": ("folder", "data/aptos"),  # DIR/<diagnosis 0-4>/<image>
}


def set_peal_data(c: ml_collections.ConfigDict, dataset: str) -> None:
    """A PEAL dataset with the first 80% of its one split as the pool and the last 20% as the test set."""
    c.data.name, c.data.dir = PEAL_DATASETS[dataset]
    c.data.train_split, c.data.test_split = "train[:80%]", "train[80%:]"
    c.data.split_file = ""


# Settings that steer how a run proceeds, not what it computes: a resumed run may change them freely.
RUN_CONTROL = frozenset(
    {
        "label_studio.url",
        "label_studio.wait_seconds",
        "label_studio.poll_seconds",
        "label_studio.request_timeout",
        "label_studio.token_env",
        "scoring.cache_dir",
        "data.num_threads",
        "train.checkpoint_every_steps",
    }
)


def diff(old: dict[str, Any], new: dict[str, Any], prefix: str = "") -> list[str]:
    """'name: old -> new' for each field that differs between two nested config dicts (RUN_CONTROL fields aside)."""
    out = []
    for key in sorted(set(old) | set(new)):
        a, b = old.get(key, "<absent>"), new.get(key, "<absent>")
        name = f"{prefix}{key}"
        if isinstance(a, dict) and isinstance(b, dict):
            out += diff(a, b, name + ".")
        elif a != b and name not in RUN_CONTROL:
            out.append(f"{name}: {a!r} -> {b!r}")
    return out
