"""Split names: every config, with every dataset it accepts, reads splits the real dataset has.

The TFDS split names come from each builder's own split code (`_split_generators`, run here against a download
manager that fetches nothing), not from `tfds.testing.mock_data`, which accepts any split name.
"""

import importlib.util
import itertools
import os

import pytest

from alpeft_jax.data import sources, splits

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CONFIGS = sorted(f for f in os.listdir(os.path.join(ROOT, "configs")) if f.endswith(".py"))
COOP_SPLITS = ("train", "val", "test")  # the keys of every CoOp split_zhou file and FGVC-Aircraft's lists


class _Paths:
    """Stands in for TFDS's download manager: every resource is a path under a directory that does not exist."""

    def __init__(self):
        from etils import epath

        self.root = epath.Path("/no/downloads")
        self.manual_dir = self.root / "manual"

    def download_and_extract(self, what):
        if isinstance(what, dict):
            return {k: self.root / k for k in what}
        return self.root / "data"

    download = extract = download_and_extract


def _defined_splits(name):
    """The split names the TFDS builder `name` generates, from its own `_split_generators`."""
    import tensorflow_datasets as tfds

    gens = tfds.builder(name, data_dir="/no/tfds")._split_generators(_Paths())
    return sorted(gens) if isinstance(gens, dict) else sorted(str(g.name) for g in gens)


def _load(name):
    spec = importlib.util.spec_from_file_location(name[:-3], os.path.join(ROOT, "configs", name))
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def _variants(name):
    """Every config-file argument string that picks a dataset (and a layout) of `name`."""
    args = getattr(_load(name), "ARGS", {})
    axes = [[f"{k}={v}" for v in args[k]] for k in ("dataset", "layout") if k in args]
    return [",".join(combo) for combo in itertools.product(*axes)] or [""]


CASES = [(name, arg) for name in CONFIGS for arg in _variants(name)]


def test_every_dataset_argument_is_covered():
    assert {n for n, _ in CASES} == set(CONFIGS)
    peal = [a for n, a in CASES if n == "peal.py"]
    assert peal == ["dataset=eurosat", "dataset=colorectal_histology", "dataset=aptos"]
    assert len([a for n, a in CASES if n == "lora.py"]) == 7 * 3


@pytest.mark.parametrize("name,arg", CASES, ids=[f"{n}:{a}" for n, a in CASES])
def test_config_reads_splits_the_dataset_defines(name, arg):
    try:
        c = _load(name).get_config(arg)
    except ValueError as e:  # a layout the dataset does not have is refused, naming the one to use
        assert "layout=coop" in str(e) and "layout=tfds" in arg
        return
    kind, dataset = sources.source_kind(c.data.name, c.data.split_file or None)
    for field in ("train_split", "test_split"):
        spec = c.data[field]
        wanted = splits.base_names(spec)
        if kind == "tfds":
            defined = _defined_splits(dataset)
            assert set(wanted) <= set(defined), f"{name}:{arg} data.{field}={spec!r}: {dataset} defines {defined}"
        elif kind in ("tfds_split_file", "coop"):
            assert set(wanted) <= set(COOP_SPLITS), f"{name}:{arg} data.{field}={spec!r} is not a CoOp split"
            if kind == "tfds_split_file":  # the records come from a TFDS builder that exists
                assert _defined_splits(dataset)
        elif kind == "fashion_mnist":
            assert set(wanted) <= {"train", "test"}
        else:  # folders: one directory cut by the slice, or (the test set) a test/ sub-folder where there is one
            assert kind == "folder" and (wanted == ["train"] or (field == "test_split" and wanted == ["test"]))


@pytest.mark.parametrize(
    "name,expected",
    [
        ("eurosat/rgb", ("train",)),
        ("colorectal_histology", ("train",)),
        ("dtd", ("test", "train", "validation")),
        ("caltech101", ("test", "train")),
        ("oxford_iiit_pet", ("test", "train")),
        ("oxford_flowers102", ("test", "train", "validation")),
    ],
)
def test_builder_split_names(name, expected):
    assert splits.builder_split_names(name) == expected == tuple(_defined_splits(name))


def test_a_split_the_dataset_lacks_is_named_with_the_fix():
    # what configs/dinov2_*.py used to read: EuroSAT has only 'train'
    problems = splits.check_split_names(
        "test", splits.builder_split_names("eurosat/rgb"), "TFDS 'eurosat/rgb'", "data.test_split"
    )
    assert problems == [
        "data.test_split='test': TFDS 'eurosat/rgb' has no split 'test' (its splits: train); it has "
        "one split: cut it, e.g. data.train_split='train[:80%]' and data.test_split='train[80%:]'"
    ]
    assert splits.check_split_names("train[80%:]", ("train",), "x", "data.test_split") == []
    assert splits.check_split_names("train[:5]+validation", ("train",), "x", "f")[0].startswith(
        "f='train[:5]+validation': x has no split 'validation'"
    )
    with pytest.raises(KeyError):
        splits.builder_split_names("no_such_dataset_xyz")


def test_parse_and_positions():
    assert splits.parse("train[:80%] + validation") == [
        splits.SplitPart("train", None, "80%"),
        splits.SplitPart("validation"),
    ]
    assert str(splits.parse("train[-10:]")[0]) == "train[-10:]"
    pos = lambda spec, n: splits.positions(splits.parse(spec)[0], n).tolist()  # noqa: E731
    assert pos("train", 5) == [0, 1, 2, 3, 4]
    assert pos("train[:80%]", 10) == list(range(8)) and pos("train[80%:]", 10) == [8, 9]
    assert pos("train[:50%]", 5) == [0, 1] and pos("train[50%:]", 5) == [2, 3, 4]  # round(2.5) = 2, as TFDS
    assert pos("train[-2:]", 5) == [3, 4] and pos("train[1:-1]", 5) == [1, 2, 3] and pos("train[3:99]", 5) == [3, 4]
    assert pos("train[4:2]", 5) == []
    for bad in ("train[:80]%", "train[a:b]", "train[150%:]", "train[:80%", ""):
        with pytest.raises(ValueError):
            splits.parse(bad)
