"""The schema is the one declaration of every setting: base(), the constructors' defaults, the checks and the help."""

import dataclasses
import re
import subprocess
import sys

import pytest

from alpeft_jax import config, preflight, schema


def _flat(d, prefix=""):
    out = {}
    for k, v in d.items():
        if isinstance(v, dict):
            out.update(_flat(v, f"{prefix}{k}."))
        else:
            out[f"{prefix}{k}"] = v
    return out


def test_base_keeps_its_layout_and_is_the_schema():
    c = config.base()
    assert set(c) == {
        "name",
        "seed",
        "backbone",
        "dtype",
        "data",
        "adapt",
        "train",
        "al",
        "scoring",
        "eval",
        "oracle",
        "label_studio",
    }
    assert set(c.adapt) == {"mode", "head", "n_placeholders", "template", "head_scale", "lora", "prompt"}
    assert set(c.adapt.lora) == {"rank", "alpha", "dropout", "scale_mode", "towers", "targets"}
    flat = _flat(c.to_dict())
    assert set(flat) == set(schema.settings_fields())
    for name, value in flat.items():
        default = schema.default(name)
        assert value == default and type(value) is type(default), name
    # the documented recipe, written out here (METHOD.md §3.2): LoRA r=4, alpha=4, dropout 0.25; SGD lr 0.002
    assert (c.adapt.lora.rank, c.adapt.lora.alpha, c.adapt.lora.dropout) == (4, 4.0, 0.25)
    assert (c.train.optimizer, c.train.lr, c.train.weight_decay, c.train.loss_scale) == ("sgd", 0.002, 5e-4, "dynamic")


def test_every_constructor_default_is_what_a_config_file_gets():
    from alpeft_jax.models import lora
    from alpeft_jax.models.adapted import AdaptConfig
    from alpeft_jax.models.prompts import PromptConfig
    from alpeft_jax.oracles import label_studio
    from alpeft_jax.train import TrainConfig

    b = config.base()
    # (constructor's defaults, the config section, its fields that are not settings of that section)
    cases = [
        (TrainConfig(), b.train, set()),
        (lora.LoraConfig(), b.adapt.lora, {"targets"}),
        (PromptConfig(), b.adapt.prompt, {"init_std"}),
        (AdaptConfig(), b.adapt, {"lora", "prompt"}),
    ]
    for made, section, not_settings in cases:
        names = {f.name for f in dataclasses.fields(made)}
        assert names - not_settings <= set(section), type(made).__name__
        for name in names - not_settings:
            assert getattr(made, name) == section[name], f"{type(made).__name__}.{name}"
            assert type(getattr(made, name)) is type(section[name]), f"{type(made).__name__}.{name}"
    assert set(b.train) == {f.name for f in dataclasses.fields(TrainConfig)}  # the whole section, no re-listing
    assert lora.LoraConfig().targets == (r".*/attn/(q|k|v)",)  # towers=both, targets="": q, k, v everywhere
    assert PromptConfig().init_std == 0.02
    assert AdaptConfig().lora == lora.LoraConfig() and AdaptConfig().prompt == PromptConfig()
    # what the driver builds from base() is the same object
    assert AdaptConfig() == AdaptConfig.from_config(b.adapt, "clip")
    assert TrainConfig() == TrainConfig.from_config(b.train, float16=True)
    assert TrainConfig.from_config(b.train).loss_scale == "none"  # loss scaling only where the compute is float16
    assert label_studio.DEFAULTS == b.label_studio.to_dict()


def test_choices_are_the_literals():
    choices = {name: f.choices for name, f in schema.settings_fields().items() if f.choices}
    assert choices == {
        "dtype": ("float32", "bfloat16", "float16"),
        "adapt.mode": ("lora", "prompt", "linear"),
        "adapt.head": ("auto", "none", "linear", "zeroshot"),
        "adapt.lora.scale_mode": ("sqrt", "linear"),
        "adapt.lora.towers": ("both", "vision", "text"),
        "adapt.prompt.position": ("end", "middle", "front"),
        "train.optimizer": ("sgd", "adamw"),
        "train.calibration": ("none", "cpeal", "avuc"),
        "train.calibration_weighting": ("balanced", "none", "effective_number"),
        "train.loss_scale": ("dynamic", "none"),
        "al.tcm.first": ("typiclust", "probcover"),
        "al.tcm.then": ("margin", "entropy", "least_confidence", "badge", "coreset"),
        "al.tcm.switch": ("labels", "coverage"),
        "al.stop": ("none", "kappa", "gain"),
        "oracle": ("simulated", "file", "label_studio"),
        "label_studio.images": ("inline", "local", "url"),
        "label_studio.multiple": ("latest", "majority"),
        "label_studio.skipped": ("exclude", "ask"),
        "label_studio.mode": ("queries", "pool"),
    }
    assert schema.DTYPES == ("float32", "bfloat16", "float16") and preflight.DTYPES is schema.DTYPES
    for name, allowed in choices.items():
        c = config.base()
        *parents, leaf = name.split(".")
        section = c
        for p in parents:
            section = section[p]
        section[leaf] = "bogus"
        assert schema.validate(c) == [f"{name}='bogus' is not one of {', '.join(allowed)}"]


@pytest.mark.parametrize(
    "name, value, message",
    [
        ("train.epochs", 0, "train.epochs=0 must be at least 1"),
        ("adapt.lora.rank", 0, "adapt.lora.rank=0 must be at least 1"),
        ("train.loss_scale_growth_interval", 0, "train.loss_scale_growth_interval=0 must be at least 1"),
        ("al.budget", -1, "al.budget=-1 must not be negative"),
        ("adapt.prompt.n_ctx", -1, "adapt.prompt.n_ctx=-1 must not be negative"),
        ("adapt.head_scale", -1.0, "adapt.head_scale=-1.0 must not be negative"),
        ("train.lr", 0.0, "train.lr=0.0 must be positive"),
        ("train.loss_scale_init", 0.0, "train.loss_scale_init=0.0 must be positive"),
        ("al.gamma", 0.0, "al.gamma=0.0 must lie in (0, 1]: the candidate pool is int(al.gamma x pool)"),
        ("al.gamma", 1.5, "al.gamma=1.5 must lie in (0, 1]: the candidate pool is int(al.gamma x pool)"),
        ("adapt.lora.dropout", 1.0, "adapt.lora.dropout=1.0 must lie in [0, 1)"),
        ("al.tcm.coverage", 0.0, "al.tcm.coverage=0.0 must lie in (0, 1]"),
        ("al.tcm.switch_per_class", -1, "al.tcm.switch_per_class=-1 must not be negative"),
        ("al.stop_window", 0, "al.stop_window=0 must be at least 1"),
        ("al.stop_kappa", 1.5, "al.stop_kappa=1.5 must lie in [-1, 1]"),
    ],
)
def test_ranges(name, value, message):
    c = config.base()
    section, leaf = name.rsplit(".", 1)
    node = c
    for p in section.split("."):
        node = node[p]
    node[leaf] = value
    assert schema.validate(c) == [message]
    ok = schema.settings_fields()[name].range
    assert ok is not None and ok.contains(schema.default(name))


def test_a_kappa_stop_needs_a_stop_set():
    c = config.base()
    c.al.stop, c.al.stop_set_size = "kappa", 0
    assert schema.validate(c) == [
        "al.stop=kappa compares predictions on a stop set: set al.stop_set_size > 0 (e.g. 1000)"
    ]
    c.al.stop = "gain"  # the gain rule reads the learning curve only
    assert schema.validate(c) == []


def test_constructors_say_what_preflight_says():
    from alpeft_jax.models import lora
    from alpeft_jax.models.adapted import AdaptConfig
    from alpeft_jax.models.prompts import PromptConfig
    from alpeft_jax.train import TrainConfig

    for make, name, value in [
        (lambda: lora.LoraConfig(rank=0), "adapt.lora.rank", 0),
        (lambda: lora.LoraConfig(dropout=1.0), "adapt.lora.dropout", 1.0),
        (lambda: PromptConfig(position="start"), "adapt.prompt.position", "start"),
        (lambda: AdaptConfig(head="mlp"), "adapt.head", "mlp"),
        (lambda: TrainConfig(loss_scale="static"), "train.loss_scale", "static"),
        (lambda: TrainConfig(epochs=0), "train.epochs", 0),
    ]:
        c = config.base()
        node = c
        *parents, leaf = name.split(".")
        for p in parents:
            node = node[p]
        node[leaf] = value
        (expected,) = schema.validate(c)
        with pytest.raises(ValueError, match=f"^{re.escape(expected)}$"):
            make()
    with pytest.raises(ValueError, match=r"^adapt.lora.rank=1.5 must be an integer$"):
        lora.LoraConfig(rank=1.5)


def test_prompt_context_is_one_rule_for_preflight_and_the_constructor():
    from alpeft_jax.models.prompts import PromptConfig

    c = config.base()
    c.adapt.prompt.n_ctx = 0  # preflight used to accept it, then PromptConfig (built for every mode) refused it
    (problem,) = schema.validate(c)
    assert problem.startswith("adapt.prompt.n_ctx=0: the prompt needs at least 1 context token")
    with pytest.raises(ValueError, match=re.escape(problem)):
        PromptConfig(n_ctx=0)
    c.adapt.prompt.init = "a photo of a"  # the words set the context length: n_ctx is unused
    assert schema.validate(c) == []
    PromptConfig(n_ctx=0, init="a photo of a")


def test_strategy_facts_live_in_the_registry():
    from alpeft_jax import strategies

    reg = strategies.REGISTRY
    assert {n for n, s in reg.items() if not s.needs_model} == {"random"}
    assert {n for n, s in reg.items() if not s.candidates} == {"random", "featdist"}
    assert {n for n, s in reg.items() if s.needs_dropout} == {"bald"}
    assert {n for n, s in reg.items() if s.trains_loss_head} == {"learning_loss"}
    # preflight reads the same facts from the decorators' source
    assert preflight.strategy_facts() == {
        n: schema.StrategyFacts(requires=s.requires, needs_model=s.needs_model, candidates=s.candidates)
        for n, s in sorted(reg.items())
    }
    facts = {n: dataclasses.asdict(f) for n, f in preflight.strategy_facts().items()}
    assert facts["bald"] == {"requires": frozenset({"mc_logits"}), "needs_model": True, "candidates": True}


def test_preflight_reads_the_settings_and_strategies_without_jax():
    code = (
        "import sys; from alpeft_jax import config, preflight; "
        "assert preflight._values(config.base()) == []; assert preflight.strategy_facts()['random']; "
        "assert 'jax' not in sys.modules, 'jax imported'"
    )
    subprocess.run([sys.executable, "-c", code], check=True)


def test_settings_help_lists_every_setting_with_its_default_and_comment():
    out = subprocess.run(
        [sys.executable, "-m", "alpeft_jax.main", "--settings"], capture_output=True, text=True, check=True
    ).stdout
    lines = {line.split(" = ", 1)[0]: line for line in out.splitlines() if " = " in line}
    base = _flat(config.base().to_dict())
    assert set(lines) == set(base)
    for key, value in base.items():
        head = f"{key} = {value!r}  # "
        assert lines[key].startswith(head) and len(lines[key]) > len(head) + 3, lines[key]
    assert lines["train.optimizer"].endswith("[sgd | adamw]")
    assert lines["al.gamma"].endswith("[in (0, 1]]")
    assert lines["adapt.lora.rank"].endswith("[>= 1]")
    assert "| bald |" in lines["al.strategy"] and "| random |" in lines["al.strategy"]
