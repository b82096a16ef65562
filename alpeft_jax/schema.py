"""Every run setting, declared once: its default, its one-line comment and the values it accepts.

The settings are frozen dataclasses, one per config section (`Settings` holds them all). A `Literal` annotation
lists a setting's choices; `setting(..., range=Range(...))` bounds a number. From this one declaration derive:
`config.base()` (the ConfigDict every config file starts from), the choice and range checks of `validate` (used by
`preflight` and by the constructors `LoraConfig`, `PromptConfig`, `AdaptConfig`, `TrainConfig`, `Run`), the
constructors' defaults (`default("adapt.lora.dropout")`) and the settings help (`help_lines`,
`python -m alpeft_jax.main --settings`). Rules that tie several settings together (BALD needs MC dropout, prompts
need CLIP, ...) are `validate`'s `_RULES`. Nothing here imports JAX.
"""

from __future__ import annotations

import dataclasses
import functools
import typing
from collections.abc import Callable, Mapping
from typing import Any, Literal

__all__ = [
    "DTYPES",
    "Range",
    "Settings",
    "StrategyFacts",
    "default",
    "help_lines",
    "parse_options",
    "section",
    "settings_fields",
    "to_dict",
    "validate",
    "raise_problems",
]


@dataclasses.dataclass(frozen=True)
class Range:
    """The numbers a setting accepts: [low, high] with either end open or absent, and why (said when violated)."""

    low: float | None = None
    high: float | None = None
    low_open: bool = False
    high_open: bool = False
    why: str = ""

    def contains(self, value: float) -> bool:
        """Whether value lies in the range."""
        if self.low is not None and (value <= self.low if self.low_open else value < self.low):
            return False
        return self.high is None or (value < self.high if self.high_open else value <= self.high)

    def interval(self) -> str:
        """'>= 1', '> 0', 'in (0, 1]', ..."""
        if self.high is None:
            return f"{'>' if self.low_open else '>='} {self.low}"
        return f"in {'(' if self.low_open else '['}{self.low}, {self.high}{')' if self.high_open else ']'}"

    def describe(self) -> str:
        """'must be at least 1', 'must lie in (0, 1]', ... (with the reason, if any)."""
        if self.high is None:
            if self.low_open:
                text = "must be positive" if self.low == 0 else f"must be above {self.low}"
            else:
                text = "must not be negative" if self.low == 0 else f"must be at least {self.low}"
        else:
            text = f"must lie {self.interval()}"
        return f"{text}: {self.why}" if self.why else text


AT_LEAST_ONE = Range(1)
NOT_NEGATIVE = Range(0)
POSITIVE = Range(0, low_open=True)


def setting(value: Any, doc: str, *, range: Range | None = None) -> Any:  # noqa: A002 - the natural name
    """A dataclass field: the default `value`, its one-line comment and the accepted range of a number."""
    return dataclasses.field(default=value, metadata={"doc": doc, "range": range})


def _section(cls: type, doc: str) -> Any:
    return dataclasses.field(default_factory=cls, metadata={"doc": doc, "section": True})


class _Checked:
    """A settings section that checks its values (choices, ranges, rules within it) when it is made."""

    def __post_init__(self) -> None:
        prefix = {cls: name for name, cls in _sections().items()}[type(self)]
        raise_problems(validate(self, prefix))


# --------------------------------------------------------------------------------------------------------------
# The settings


@dataclasses.dataclass(frozen=True)
class Data(_Checked):
    """`config.data`: the dataset, its splits and how much of it a run uses."""

    name: str = setting("dtd", 'TFDS name, "fashion_mnist", "digits", "folder", "csv", "coop:<dataset>"')
    dir: str = setting("", "TFDS data_dir / image-folder root / CSV path / Fashion-MNIST directory / CoOp DATA root")
    train_split: str = setting(
        "train", 'the pool: a split name or a TFDS-style slice: "train[:80%]", "train+validation"'
    )
    test_split: str = setting("test", "the test split, named like train_split")
    split_file: str = setting("", "CoOp split_zhou_*.json: over TFDS records (by file name) or a CoOp folder")
    image_size: int = setting(0, "0: the backbone's own", range=NOT_NEGATIVE)
    max_pool: int = setting(
        0, ">0: a fixed random subset of the pool (the same for every seed and strategy)", range=NOT_NEGATIVE
    )
    max_test: int = setting(0, ">0: a fixed random subset of the test split", range=NOT_NEGATIVE)
    subset_seed: int = setting(0, "seeds the max_pool and max_test subsets")
    coop_names: bool = setting(
        True, "CoOp's class names where the package has them (e.g. TFDS EuroSAT names to its split-file names)"
    )
    num_threads: int = setting(0, "image decoding threads; 0: all cores", range=NOT_NEGATIVE)
    classes: str = setting(
        "", 'folder/csv: the class list in label order: a file (one name per line) or "a,b,c"; "": from the data'
    )
    test: str = setting(
        "", "a labelled test set (image folder or CSV, the pool's classes); \"\": the dataset's test split, if any"
    )


@dataclasses.dataclass(frozen=True)
class Lora(_Checked):
    """`config.adapt.lora`: the low-rank updates (METHOD.md §3.2)."""

    rank: int = setting(4, "rank r of each update", range=AT_LEAST_ONE)
    alpha: float = setting(4.0, "the update is scaled by alpha/sqrt(r) or alpha/r (scale_mode)")
    dropout: float = setting(
        0.25, "dropout on the input of each update (BALD's MC dropout too)", range=Range(0, 1, high_open=True)
    )
    scale_mode: Literal["sqrt", "linear"] = setting(
        "sqrt", "sqrt: alpha/sqrt(r) as the authors ran it; linear: alpha/r"
    )
    towers: Literal["both", "vision", "text"] = setting("both", "CLIP towers to adapt (ignored when targets is set)")
    targets: str = setting("", 'comma-separated regexes over module paths; "" = q,k,v of the chosen towers')


@dataclasses.dataclass(frozen=True)
class Prompt(_Checked):
    """`config.adapt.prompt`: CoOp's learned context (adapt.mode=prompt)."""

    n_ctx: int = setting(16, "learned context tokens (at least 1, unless init sets them)", range=NOT_NEGATIVE)
    class_specific: bool = setting(True, "CoOp's CSC: one context per class (else one shared)")
    init: str = setting("", 'words to start the context from, e.g. "a photo of a" (their tokens set n_ctx); "": random')
    position: Literal["end", "middle", "front"] = setting("end", "where the class name sits after the context")


@dataclasses.dataclass(frozen=True)
class Adapt(_Checked):
    """`config.adapt`: how the frozen backbone is adapted."""

    mode: Literal["lora", "prompt", "linear"] = setting("lora", "LoRA, CoOp prompts (CLIP) or a linear probe")
    head: Literal["auto", "none", "linear", "zeroshot"] = setting(
        "auto", "auto: CLIP classifies through its text tower (lora, prompt) or zero-shot (linear); others linear"
    )
    n_placeholders: int = setting(16, 'the frozen "X" tokens of CLIP\'s LoRA-mode prompts')
    template: str = setting("", 'instead of the "X" tokens: e.g. "a photo of a {}." (CLIP LoRA mode / zero-shot head)')
    head_scale: float = setting(
        0.0, ">0: the linear head reads L2-normalised features x this scale (a cosine head)", range=NOT_NEGATIVE
    )
    lora: Lora = _section(Lora, "adapt.mode=lora")
    prompt: Prompt = _section(Prompt, "adapt.mode=prompt")


@dataclasses.dataclass(frozen=True)
class Train(_Checked):
    """`config.train`: optimisation and losses of every round (METHOD.md §3.2); `train.TrainConfig` is this class."""

    epochs: int = setting(10, "epochs per round", range=AT_LEAST_ONE)
    batch_size: int = setting(32, "labelled examples per update step", range=AT_LEAST_ONE)
    optimizer: Literal["sgd", "adamw"] = setting("sgd", "sgd (coupled weight decay, as the authors) | adamw")
    lr: float = setting(0.002, "peak learning rate (cosine decay after the warm-up)", range=POSITIVE)
    momentum: float = setting(0.9, "SGD momentum / AdamW b1")
    weight_decay: float = setting(5e-4, "weight decay", range=NOT_NEGATIVE)
    warmup_epochs: int = setting(1, "epochs at the constant warmup_lr first", range=NOT_NEGATIVE)
    warmup_lr: float = setting(1e-5, "learning rate of the warm-up epochs", range=NOT_NEGATIVE)
    label_smoothing: float = setting(0.0, "label smoothing of the cross-entropy", range=NOT_NEGATIVE)
    calibration: Literal["none", "cpeal", "avuc"] = setting(
        "none",
        "the calibration loss; cpeal with the defaults below is the papers' \"ours\" (the reference's bare flag: "
        "weight 0.01, no anneal, weighting none); never applied with the learning-loss head, as the reference",
    )
    calibration_weight: float = setting(1.0, "weight of the calibration loss", range=NOT_NEGATIVE)
    calibration_anneal: bool = setting(True, "anneal the calibration weight over the epochs, as the authors")
    calibration_weighting: Literal["balanced", "none", "effective_number"] = setting(
        "balanced", "class weighting of the cpeal loss"
    )
    drop_last: bool = setting(True, "drop the last partial batch once the labelled set holds a full one (Dassl)")
    augment: bool = setting(True, "random resized crop + flip (needs the full forward; no prefix cache for training)")
    warm_start: bool = setting(False, "start each round from the last round's model; the authors re-initialise")
    checkpoint_every_steps: int = setting(0, ">0: also checkpoint inside a round", range=NOT_NEGATIVE)
    loss_prediction: bool = setting(
        False, "train the learning-loss head (set automatically for al.strategy=learning_loss)"
    )
    loss_prediction_weight: float = setting(0.01, 'METHOD.md §3.5 "LL": CE + 0.01 x loss-prediction loss')
    loss_prediction_lr: float = setting(0.1, "the loss-prediction module's own SGD")
    loss_scale: Literal["dynamic", "none"] = setting(
        "dynamic", "loss scaling; the driver applies it where dtype=float16"
    )
    loss_scale_init: float = setting(2.0**15, "dynamic loss scaling: initial scale", range=POSITIVE)
    loss_scale_growth_interval: int = setting(
        2000, "steps without overflow before the scale doubles", range=AT_LEAST_ONE
    )

    @classmethod
    def from_config(cls, train: Any, *, loss_prediction: bool = False, float16: bool = False) -> Train:
        """The settings of a run config's `train` section (loss scaling only where the compute is float16)."""
        values = {f.name: train[f.name] for f in dataclasses.fields(cls) if f.name in train}
        values["loss_prediction"] = bool(values.get("loss_prediction")) or loss_prediction
        if not float16:
            values["loss_scale"] = "none"
        return cls(**values)


TcmThen = Literal["margin", "entropy", "least_confidence", "badge", "coreset"]


@dataclasses.dataclass(frozen=True)
class Tcm(_Checked):
    """`config.al.tcm`: al.strategy=tcm, typicality or coverage first, then uncertainty (METHOD.md §3.8)."""

    first: Literal["typiclust", "probcover"] = setting("typiclust", "the strategy of the first rounds")
    then: TcmThen = setting("margin", "the strategy after the hand-off")
    switch: Literal["labels", "coverage"] = setting(
        "labels", "labels: hand off at switch_per_class x K labels; coverage: when every class is covered enough"
    )
    switch_per_class: int = setting(
        3, "switch=labels: hand off once the labels reach this many per class on average", range=NOT_NEGATIVE
    )
    coverage: float = setting(
        0.5,
        "switch=coverage: hand off once the least-covered predicted class has this share within radius of a label",
        range=Range(0, 1, low_open=True),
    )
    radius: float = setting(
        0.0, "switch=coverage: ball radius on L2-normalised features; 0: ProbCover's purity radius", range=NOT_NEGATIVE
    )


@dataclasses.dataclass(frozen=True)
class AL(_Checked):
    """`config.al`: the active-learning schedule and the query strategy (METHOD.md §3.3)."""

    strategy: str = setting("entropy", "the query strategy (the names the strategies registry holds)")
    rounds: int = setting(10, "rounds, round 0 (random labels) included", range=AT_LEAST_ONE)
    budget: int = setting(0, "labels per round; 0: the number of classes K", range=NOT_NEGATIVE)
    initial: int = setting(0, "round-0 random labels; 0: K", range=NOT_NEGATIVE)
    gamma: float = setting(
        0.1,
        "candidate pool = int(gamma * initial pool size)",
        range=Range(0, 1, low_open=True, why="the candidate pool is int(al.gamma x pool)"),
    )
    pcb: bool = setting(True, "PCB's class-balanced pick among the candidates (else the top al.budget)")
    authors_quirk: bool = setting(False, "reproduce the reference code's idx[-K:] cut when PCB is off")
    mc_samples: int = setting(10, "BALD: MC-dropout passes through the LoRA dropout")
    options: str = setting("", 'extra strategy options as "key=value,key=value"')
    tcm: Tcm = _section(Tcm, "al.strategy=tcm: the hand-off from a typicality/coverage strategy to an uncertainty one")
    stop: Literal["none", "kappa", "gain"] = setting(
        "none", "stop by itself: kappa (stable predictions) | gain (flat learning curve); signals are always recorded"
    )
    stop_set_size: int = setting(
        1000, "pool rows whose predictions the kappa signal compares; 0: no kappa signal", range=NOT_NEGATIVE
    )
    stop_set_seed: int = setting(0, "seeds the stop set (the same for every seed and strategy)")
    stop_window: int = setting(
        3, "kappa: rounds averaged; gain: rounds fitted past the first (also the re-arm delay)", range=AT_LEAST_ONE
    )
    stop_kappa: float = setting(
        0.99, "kappa: stop once the mean kappa of the last stop_window rounds reaches this", range=Range(-1, 1)
    )
    stop_gain: float = setting(
        0.005, "gain: stop once the next round's expected accuracy gain (fraction) falls below this"
    )


@dataclasses.dataclass(frozen=True)
class Scoring(_Checked):
    """`config.scoring`: scoring the pool each round."""

    batch_size: int = setting(256, "images per scoring step", range=AT_LEAST_ONE)
    cache: bool = setting(True, "cache the frozen prefix of pool and test images once")
    cache_dir: str = setting("", '"" = DIR/cache; share it between runs of the same backbone and data')
    memory_budget_gb: float = setting(4.0, "a cache larger than this lives in a file, memory-mapped")


@dataclasses.dataclass(frozen=True)
class Eval(_Checked):
    """`config.eval`: the evaluation after each round: on the test set, or cross-validated without one."""

    batch_size: int = setting(100, "images per evaluation step", range=AT_LEAST_ONE)
    cv_folds: int = setting(
        5, "without a test set: k of the k-fold cv estimate on the labels so far (capped by them)", range=Range(2)
    )


LabelStudioImages = Literal["inline", "local", "url"]
LabelStudioMultiple = Literal["latest", "majority"]
LabelStudioSkipped = Literal["exclude", "ask"]
LabelStudioMode = Literal["queries", "pool"]


@dataclasses.dataclass(frozen=True)
class LabelStudio(_Checked):
    """`config.label_studio`: oracle=label_studio (oracles/label_studio.py)."""

    url: str = setting("", "the server, e.g. http://127.0.0.1:8080; the token is read from $token_env")
    project: str = setting("", 'id or title of a project; "": one made (or found again) for this run')
    token_env: str = setting("LABEL_STUDIO_API_KEY", "holds a personal access token or a legacy token")
    images: LabelStudioImages = setting("inline", "inline (PNG data URIs) | local (Label Studio local storage) | url")
    thumbnail: int = setting(256, "images=inline: longest side in pixels")
    local_root: str = setting("", "images=local: the server's LOCAL_FILES_DOCUMENT_ROOT")
    image_url_prefix: str = setting("", "images=url: tasks point at prefix + the image's file path")
    wait_seconds: float = setting(0.0, "0: stop, rerun when labelled; >0: poll this long first; <0: no limit")
    poll_seconds: float = setting(10.0, "seconds between polls while waiting")
    multiple: LabelStudioMultiple = setting("latest", "several annotations of a task: latest | majority")
    skipped: LabelStudioSkipped = setting(
        "exclude", "a task skipped in Label Studio: exclude (can't tell: never asked again) | ask (label it anyway)"
    )
    request_timeout: float = setting(60.0, "seconds per HTTP request")
    mode: LabelStudioMode = setting(
        "queries", "queries: each round's picks as tasks | pool: the whole pool once, every task's guess each round"
    )


@dataclasses.dataclass(frozen=True)
class Settings(_Checked):
    """Every setting of a run: `config.base()` is this, as a ConfigDict."""

    name: str = setting("run", 'a label for reports; the experiment configs set run_name(c), e.g. "entropy+calib+pcb"')
    seed: int = setting(1, "seeds the model init, the training order and every round's pick")
    backbone: str = setting(
        "openai/clip-vit-base-patch16", 'HF directory / hub id, state-dict file, or "efficientnet-lite0"'
    )
    dtype: Literal["float32", "bfloat16", "float16"] = setting(
        "float32", "compute dtype (float16 with train.loss_scale; for GPUs)"
    )
    data: Data = _section(Data, "the dataset")
    adapt: Adapt = _section(Adapt, "how the backbone is adapted")
    train: Train = _section(Train, "training of each round")
    al: AL = _section(AL, "the active-learning schedule")
    scoring: Scoring = _section(Scoring, "pool scoring")
    eval: Eval = _section(Eval, "evaluation")
    oracle: Literal["simulated", "file", "label_studio"] = setting(
        "simulated", "who labels: the dataset's labels, a CSV a human fills in, or Label Studio"
    )
    label_studio: LabelStudio = _section(LabelStudio, "oracle=label_studio (oracles/label_studio.py)")


DTYPES: tuple[str, ...] = typing.get_args(typing.get_type_hints(Settings)["dtype"])


# --------------------------------------------------------------------------------------------------------------
# Reading the declaration


@dataclasses.dataclass(frozen=True)
class Field:
    """One setting: its dotted name, type, default, comment, choices (from a Literal) and range."""

    name: str
    type: type
    default: Any
    doc: str
    choices: tuple[Any, ...] | None
    range: Range | None


@functools.cache
def _sections() -> dict[str, type]:
    out: dict[str, type] = {"": Settings}

    def walk(cls: type, prefix: str) -> None:
        hints = typing.get_type_hints(cls)
        for f in dataclasses.fields(cls):
            if f.metadata.get("section"):
                out[prefix + f.name] = hints[f.name]
                walk(hints[f.name], f"{prefix}{f.name}.")

    walk(Settings, "")
    return out


@functools.cache
def settings_fields() -> dict[str, Field]:
    """Every setting by dotted name ('adapt.lora.dropout'), in declaration order."""
    out: dict[str, Field] = {}

    def walk(cls: type, prefix: str) -> None:
        hints = typing.get_type_hints(cls)
        for f in dataclasses.fields(cls):
            if f.metadata.get("section"):
                walk(hints[f.name], f"{prefix}{f.name}.")
                continue
            hint = hints[f.name]
            choices = typing.get_args(hint) if typing.get_origin(hint) is Literal else None
            kind = type(choices[0]) if choices else hint
            out[prefix + f.name] = Field(
                prefix + f.name, kind, f.default, f.metadata["doc"], choices, f.metadata.get("range")
            )

    walk(Settings, "")
    return out


def section(name: str) -> type:
    """The dataclass of a section by dotted name ('adapt.lora'; '' for `Settings`)."""
    return _sections()[name]


def default(name: str) -> Any:
    """The default of the setting `name` ('adapt.lora.dropout')."""
    return settings_fields()[name].default


def to_dict(obj: Any) -> dict[str, Any]:
    """A settings dataclass as a nested dict in declaration order (sections as dicts)."""
    return {
        f.name: (to_dict(getattr(obj, f.name)) if f.metadata.get("section") else getattr(obj, f.name))
        for f in dataclasses.fields(obj)
    }


def help_lines(strategy_names: list[str] | None = None) -> list[str]:
    """One line per setting: 'name = default  # comment [choices or range]', sections as headings."""
    out, section_docs = [], {k: (v.__doc__ or k).splitlines()[0] for k, v in _sections().items() if k}
    shown: set[str] = set()
    for name, f in settings_fields().items():
        parent = name.rpartition(".")[0]
        if parent and parent not in shown:
            shown.add(parent)
            out.append(f"\n# {section_docs[parent]}")
        choices = strategy_names if name == "al.strategy" else f.choices
        if choices:
            accepted = " [" + " | ".join(map(str, choices)) + "]"
        elif f.range:
            accepted = f" [{f.range.interval()}]"
        else:
            accepted = ""
        out.append(f"{name} = {f.default!r}  # {f.doc}{accepted}")
    return out


# --------------------------------------------------------------------------------------------------------------
# Checking values


@dataclasses.dataclass(frozen=True)
class StrategyFacts:
    """What the settings and the driver must know of a query strategy; declared at its `strategies.register`."""

    requires: frozenset[str] = frozenset()  # the pool keys its select function reads
    needs_model: bool = True  # scores the pool with the last round's model; False: pure random, PCB never runs
    candidates: bool = True  # proposes int(al.gamma x pool) candidates that PCB trims; False: picks al.budget itself

    @property
    def needs_dropout(self) -> bool:
        """Reads MC-dropout logits (BALD): the run needs LoRA with dropout."""
        return "mc_logits" in self.requires

    @property
    def trains_loss_head(self) -> bool:
        """Reads the learning-loss head's predictions: training adds that head and its loss."""
        return "loss_pred" in self.requires


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


class _View:
    """Dotted access to the values given to `validate`; `has` says whether a rule's settings are all there."""

    def __init__(self, values: Any, prefix: str) -> None:
        self.values, self.prefix = values, prefix

    def has(self, *names: str) -> bool:
        return all(self._lookup(n)[0] for n in names)

    def __getitem__(self, name: str) -> Any:
        return self._lookup(name)[1]

    def _lookup(self, name: str) -> tuple[bool, Any]:
        if self.prefix and not name.startswith(self.prefix + "."):
            return False, None
        node = self.values
        for part in (name[len(self.prefix) + 1 :] if self.prefix else name).split("."):
            if isinstance(node, Mapping) or hasattr(node, "keys"):
                if part not in node:
                    return False, None
                node = node[part]
            elif dataclasses.is_dataclass(node) and hasattr(node, part):
                node = getattr(node, part)
            else:
                return False, None
        return True, node


Rule = Callable[[_View, Mapping[str, StrategyFacts] | None, str | None], list[str]]
_RULES: list[tuple[tuple[str, ...], Rule]] = []


def _rule(*names: str) -> Callable[[Rule], Rule]:
    """Register a check that reads the settings `names` (it runs when all of them are given)."""

    def deco(fn: Rule) -> Rule:
        _RULES.append((names, fn))
        return fn

    return deco


@_rule("al.options")
def _options(v: _View, strategies: Any, family: Any) -> list[str]:
    try:
        parse_options(v["al.options"])
    except ValueError as e:
        return [f"al.options={v['al.options']!r}: {e}"]
    return []


@_rule("al.strategy")
def _strategy_known(v: _View, strategies: Mapping[str, StrategyFacts] | None, family: Any) -> list[str]:
    if strategies is not None and v["al.strategy"] not in strategies:
        return [f"al.strategy={v['al.strategy']!r} is not one of {', '.join(sorted(strategies))}"]
    return []


@_rule("al.strategy", "adapt.mode", "adapt.lora.dropout")
def _mc_dropout(v: _View, strategies: Mapping[str, StrategyFacts] | None, family: Any) -> list[str]:
    facts = (strategies or {}).get(v["al.strategy"])
    if facts is not None and facts.needs_dropout and (v["adapt.mode"] != "lora" or v["adapt.lora.dropout"] <= 0):
        return [f"al.strategy={v['al.strategy']} needs MC dropout: adapt.mode=lora with adapt.lora.dropout > 0"]
    return []


@_rule("adapt.mode", "adapt.head")
def _needs_clip(v: _View, strategies: Any, family: str | None) -> list[str]:
    out, mode, head = [], v["adapt.mode"], v["adapt.head"]
    if family is not None and family != "clip":
        what = f"{family} ({v['backbone']})" if v.has("backbone") else family
        if mode == "prompt":
            out.append(f"adapt.mode=prompt needs a CLIP backbone, not {what}; use lora or linear")
        if head in ("zeroshot", "none"):
            out.append(f"adapt.head={head} needs a CLIP backbone, not {what}; use adapt.head=linear")
    if mode == "prompt" and head in ("linear", "zeroshot"):
        out.append(
            f"adapt.head={head} with adapt.mode=prompt: prompts classify through the text tower; use adapt.head=auto"
        )
    return out


@_rule("adapt.mode", "adapt.lora.targets")
def _efficientnet_targets(v: _View, strategies: Any, family: str | None) -> list[str]:
    if family != "efficientnet" or v["adapt.mode"] != "lora":
        return []
    targets = v["adapt.lora.targets"]  # a config's comma-separated text or LoraConfig's tuple
    if not [t for t in (targets.split(",") if isinstance(targets, str) else targets) if t.strip()]:
        return [
            "adapt.lora.targets is empty: EfficientNet needs explicit LoRA targets, e.g. "
            "--config.adapt.lora.targets='blocks_1[3-5]/.*(expand|project)_conv' (or adapt.mode=linear)"
        ]
    return []


@_rule("adapt.prompt.n_ctx", "adapt.prompt.init")
def _prompt_context(v: _View, strategies: Any, family: Any) -> list[str]:
    if v["adapt.prompt.n_ctx"] == 0 and not v["adapt.prompt.init"].strip():
        return [
            "adapt.prompt.n_ctx=0: the prompt needs at least 1 context token; raise adapt.prompt.n_ctx or set "
            "adapt.prompt.init (its words set the context)"
        ]
    return []


@_rule("al.stop", "al.stop_set_size")
def _stop_set(v: _View, strategies: Any, family: Any) -> list[str]:
    if v["al.stop"] == "kappa" and v["al.stop_set_size"] == 0:
        return ["al.stop=kappa compares predictions on a stop set: set al.stop_set_size > 0 (e.g. 1000)"]
    return []


@_rule("oracle", "label_studio.url")
def _label_studio_url(v: _View, strategies: Any, family: Any) -> list[str]:
    if v["oracle"] == "label_studio" and not v["label_studio.url"]:
        return ["oracle=label_studio needs --config.label_studio.url (and .project)"]
    return []


def _is_integer(value: Any) -> bool:
    if isinstance(value, bool):
        return False
    try:
        return int(value) == value
    except (TypeError, ValueError, OverflowError):
        return False


def validate(
    values: Any, prefix: str = "", *, strategies: Mapping[str, StrategyFacts] | None = None, family: str | None = None
) -> list[str]:
    """Every problem with the settings in `values`, one line each naming the setting and the fix; [] if none.

    `values` is a whole config (ConfigDict, nested dict or `Settings`) or, with `prefix` ('adapt.lora'), one
    section of it: the choice and range checks of the settings given, then every rule whose settings are all
    given. The strategy rules run when `strategies` (name -> facts) is passed, the backbone rules with `family`
    ('clip', 'dinov2', 'efficientnet').
    """
    view = _View(values, prefix)
    given = [f for name, f in settings_fields().items() if view.has(name)]
    out = []
    for f in given:
        value = view[f.name]
        if f.choices is not None and value not in f.choices:
            out.append(f"{f.name}={value!r} is not one of {', '.join(map(str, f.choices))}")
    for f in given:
        value = view[f.name]
        if f.type is int and not _is_integer(value):
            out.append(f"{f.name}={value!r} must be an integer")
        elif f.range is not None and isinstance(value, (int, float)) and not f.range.contains(value):
            out.append(f"{f.name}={value} {f.range.describe()}")
    for names, rule in _RULES:
        if view.has(*names):
            out += rule(view, strategies, family)
    return out


def raise_problems(problems: list[str]) -> None:
    """Raise a ValueError listing `problems` (one per line) unless there are none."""
    if problems:
        raise ValueError("\n".join(problems))
