"""Every experiment config: loads with its args, keeps the base schema, documents its command."""

import importlib.util
import os

import pytest

from alpeft_jax.config import base
from alpeft_jax.convert.common import flatten

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CASES = {
    "demo.py": ["", "random", "runlocal", "random,seed=2"],
    "lora.py": ["", "runlocal", "seed=3,dataset=eurosat/rgb"],
    "coop.py": ["", "rn50", "vit_b16,runlocal"],
    "dinov2_lora.py": ["", "featdist", "variant=small,runlocal"],
    "dinov2_linear.py": ["", "featdist,runlocal"],
}


def _load(name):
    spec = importlib.util.spec_from_file_location(name[:-3], os.path.join(ROOT, "configs", name))
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_every_config_file_is_covered():
    assert sorted(f for f in os.listdir(os.path.join(ROOT, "configs")) if f.endswith(".py")) == sorted(CASES)


@pytest.mark.parametrize("name", sorted(CASES))
def test_config_args_keep_the_schema_and_document_the_command(name):
    mod = _load(name)
    assert "python -m alpeft_jax.main --config=configs/" + name in " ".join(mod.__doc__.split())
    assert "Expected" in mod.__doc__ and "Hardware" in mod.__doc__
    schema = {k: type(v) for k, v in flatten(base().to_dict()).items()}
    for arg in CASES[name]:
        c = mod.get_config(arg)
        got = {k: type(v) for k, v in flatten(c.to_dict()).items()}
        assert got == schema, f"{name}:{arg} changed the config schema"
        if "runlocal" in arg:
            assert c.al.rounds <= 2 and c.train.epochs <= 2 and 0 < c.data.max_pool <= 200
    assert _load(name).get_config("runlocal").to_dict() != mod.get_config("").to_dict()
