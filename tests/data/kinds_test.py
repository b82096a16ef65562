"""The data-kind registry's contract, for every registered kind, on small data written here.

Each kind opens and inspects through one locate step: what `inspect` reports (sizes, class names) is what
`open` yields, slices cut the same counts, and a broken request fails the same way in both. The expected
values come from the data each case writes, not from the sources.
"""

from __future__ import annotations

import dataclasses
import gzip
import json
import os
import struct
import sys
from collections.abc import Callable

import numpy as np
import pytest
from PIL import Image

from alpeft_jax.data import sources, splits
from alpeft_jax.data.sources import registry

FASHION_NAMES = [
    "T-shirt/top",
    "Trouser",
    "Pullover",
    "Dress",
    "Coat",
    "Sandal",
    "Shirt",
    "Sneaker",
    "Bag",
    "Ankle boot",
]


def _png(path, seed, size=(5, 4)):
    os.makedirs(os.path.dirname(path), exist_ok=True)
    arr = np.random.default_rng(seed).integers(0, 256, (*size, 3), dtype=np.uint8)
    Image.fromarray(arr).save(path, format="PNG")


def _idx(path, arr):
    arr = np.asarray(arr, np.uint8)
    head = bytes([0, 0, 0x08, arr.ndim]) + struct.pack(f">{arr.ndim}I", *arr.shape)
    with gzip.open(path, "wb") as f:
        f.write(head + arr.tobytes())


def _tiny_tfds():
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    try:
        import _tiny_tfds
    finally:
        sys.path.pop(0)
    return _tiny_tfds


def _tiny_dtd(root):
    t = _tiny_tfds()
    labels = {"train": ["banded", "bumpy", "dotted", "bumpy"], "test": ["dotted", "banded"]}
    t.write(
        str(root),
        "dtd",
        {
            s: [
                {"image": t.png(t.image(10 * k + i)), "label": lab, "file_name": f"{lab}/{lab}_{s}{i}.jpg"}
                for i, lab in enumerate(labs)
            ]
            for k, (s, labs) in enumerate(labels.items())
        },
    )
    return str(root)


@dataclasses.dataclass
class Case:
    """One request of a kind, with the size and class names its data holds, and a request that must fail."""

    name: str
    split: str
    data_dir: str | None
    split_file: str | None
    size: int
    class_names: list[str]
    sliced: str  # a slice of `split` (or a union, for kinds that join splits)
    sliced_size: int
    broken: dict  # get_source keyword arguments that fail in `locate`


def _fashion_mnist(tmp):
    images = np.arange(6 * 3 * 3).reshape(6, 3, 3)
    _idx(tmp / "train-images-idx3-ubyte.gz", images)
    _idx(tmp / "train-labels-idx1-ubyte.gz", [0, 9, 3, 3, 1, 0])
    return Case(
        "fashion_mnist",
        "train",
        str(tmp),
        None,
        6,
        FASHION_NAMES,
        "train[2:]",
        4,
        dict(name="fashion_mnist", split="test", data_dir=str(tmp)),
    )  # no t10k files


def _digits(tmp):
    from sklearn.datasets import load_digits

    n = len(load_digits().target)
    test = len(range(4, n, 5))
    return Case(
        "digits",
        "test",
        None,
        None,
        test,
        [str(k) for k in range(10)],
        "test[:25%]",
        int(round(0.25 * test)),
        dict(name="digits", split="validation"),
    )


def _folder(tmp):
    for cls, k in (("ant", 2), ("bee", 3)):
        for i in range(k):
            _png(str(tmp / "pool" / "train" / cls / f"{i}.png"), 10 * k + i)
    (tmp / "pool" / "train" / "cow").mkdir()  # an empty class keeps its name
    (tmp / "pool" / "train" / "bee" / "notes.txt").write_text("not an image")
    return Case(
        "folder",
        "train",
        str(tmp / "pool"),
        None,
        5,
        ["ant", "bee", "cow"],
        "train[:60%]",
        3,
        dict(name="folder", split="train", data_dir=str(tmp / "nowhere")),
    )


def _csv(tmp):
    for f in ("a.png", "b.png", "img/c.png"):
        _png(str(tmp / f), len(f))
    (tmp / "train.csv").write_text("path,label\na.png,yak\nb.png,\nimg/c.png,emu\n")
    (tmp / "broken.csv").write_text("path,label\na.png,yak\ngone.png,emu\n")
    return Case(
        "csv",
        "train",
        str(tmp),
        None,
        3,
        ["emu", "yak"],
        "train[1:]",
        2,
        dict(name="csv", split="train", data_dir=str(tmp / "broken.csv")),
    )


def _coop(tmp):
    entries = {
        "train": [["Forest/F1.jpg", 1, "Forest"], ["SeaLake/S1.jpg", 9, "Sea or Lake"], ["Forest/F2.jpg", 1, "Forest"]],
        "val": [],
        "test": [["Gone/G1.jpg", 0, "Annual Crop Land"]],
    }
    for p, _, _ in entries["train"]:
        _png(str(tmp / "eurosat" / "2750" / p), len(p))
    (tmp / "eurosat" / "split_zhou_EuroSAT.json").write_text(json.dumps(entries))
    names = ["annual crop land", "forest", *[None] * 7, "lake or sea"]  # CoOp's prompt names where listed
    return Case(
        "coop:eurosat",
        "train",
        str(tmp),
        None,
        3,
        names,
        "train[-1:]",
        1,
        dict(name="coop:eurosat", split="test", data_dir=str(tmp)),
    )  # its image is missing


def _tfds(tmp):
    import tensorflow_datasets as tfds

    root = _tiny_dtd(tmp)
    names = list(tfds.builder("dtd", data_dir=root).info.features["label"].names)
    return Case(
        "dtd", "train", root, None, 4, names, "train[:50%]+test", 4, dict(name="dtd", split="validation", data_dir=root)
    )  # the tiny build has no validation


def _tfds_split_file(tmp):
    root = _tiny_dtd(tmp)
    coop = {
        "train": [["dotted/dotted_test0.jpg", 2, "dotted"], ["banded/banded_train0.jpg", 0, "banded"]],
        "val": [],
        "test": [["bumpy/bumpy_train1.jpg", 1, "bumpy"]],
    }
    (tmp / "split.json").write_text(json.dumps(coop))
    return Case(
        "dtd",
        "train",
        root,
        "split.json",
        2,
        ["banded", "bumpy", "dotted"],
        "train[1:]",
        1,
        dict(name="dtd", split="train", data_dir=root, split_file="gone.json"),
    )


CASES: dict[str, Callable] = {
    "fashion_mnist": _fashion_mnist,
    "digits": _digits,
    "folder": _folder,
    "csv": _csv,
    "coop": _coop,
    "tfds": _tfds,
    "tfds_split_file": _tfds_split_file,
}


def test_every_registered_kind_has_a_contract_case():
    assert sorted(CASES) == sources.known_kinds()


@pytest.mark.parametrize("kind_name", sorted(CASES))
def test_inspect_reports_what_open_yields(tmp_path, kind_name):
    case = CASES[kind_name](tmp_path)
    kind_of, dataset = sources.source_kind(case.name, case.split_file)
    assert kind_of == kind_name
    kind = sources.get_kind(kind_name)
    src = sources.get_source(case.name, case.split, case.data_dir, case.split_file)
    info = sources.inspect_source(case.name, case.split, case.data_dir, case.split_file)
    request = sources.Request(
        case.name, dataset, case.split, tuple(splits.parse(case.split)), case.data_dir, case.split_file
    )
    counts = kind.inspect(request, kind.locate(request))
    assert len(src) == len(src.labels) == len(src.ids) == info.size == counts.sizes[case.split] == case.size
    assert src.class_names == counts.class_names and info.num_classes == len(case.class_names)
    assert [n for n, want in zip(src.class_names, case.class_names, strict=True) if want is not None] == [
        w for w in case.class_names if w is not None
    ]
    ex = src[len(src) - 1]
    assert ex["image"].dtype == np.uint8 and ex["image"].shape[-1] == 3 and ex["id"] == src.ids[-1]
    part = sources.get_source(case.name, case.sliced, case.data_dir, case.split_file)
    assert (
        len(part)
        == case.sliced_size
        == sources.inspect_source(case.name, case.sliced, case.data_dir, case.split_file).size
    )
    if "+" not in case.sliced:  # a slice of the split: some of its examples, with their ids
        assert set(part.ids) <= set(src.ids) and len(set(part.ids)) == len(part)
    assert part.class_names == src.class_names


@pytest.mark.parametrize("kind_name", sorted(CASES))
def test_a_broken_request_fails_the_same_way_opened_or_inspected(tmp_path, kind_name):
    broken = CASES[kind_name](tmp_path).broken
    with pytest.raises((sources.MissingDataError, ValueError)) as opened:
        sources.get_source(**broken)
    with pytest.raises((sources.MissingDataError, ValueError)) as inspected:
        sources.inspect_source(**broken)
    assert type(opened.value) is type(inspected.value)
    assert str(opened.value) == str(inspected.value) and "\n" not in str(opened.value)


def test_an_unknown_kind_is_one_line_listing_the_known_kinds():
    with pytest.raises(ValueError) as e:
        sources.get_kind("parquet")
    msg = str(e.value)
    assert "\n" not in msg and msg.startswith("unknown data kind 'parquet'; known kinds: ")
    assert msg.split("known kinds: ")[1].split(" (")[0] == ", ".join(sorted(CASES))


def test_a_new_kind_is_one_registered_class(monkeypatch):
    monkeypatch.setattr(registry, "_KINDS", dict(registry._KINDS))  # registered here, gone after the test
    images = np.arange(7 * 2 * 2, dtype=np.uint8).reshape(7, 2, 2)

    @sources.register
    class Memory(sources.Kind[int]):
        name = "memory"
        title = "in-memory arrays"
        prefix = "mem"

        def locate(self, request):
            if request.base != "train":
                raise ValueError(f"memory split must be 'train', got {request.base!r}")
            return len(images)

        def open(self, request, found):
            return sources.ArraySource(images[:found], np.arange(found) % 2, ["even", "odd"], name="memory")

        def inspect(self, request, found):
            return sources.Counts({"train": found}, ["even", "odd"])

    assert sources.source_kind("mem:anything", None) == ("memory", "anything")
    assert "memory" in sources.known_kinds()
    src = sources.get_source("mem:x", "train[2:5]")
    assert len(src) == 3 and src.ids.tolist() == [2, 3, 4] and src.labels.tolist() == [0, 1, 0]
    assert sources.inspect_source("mem:x", "train[2:5]") == sources.SourceInfo(3, 2)
    with pytest.raises(ValueError, match="memory split must be 'train'") as e:
        sources.inspect_source("mem:x", "test")
    with pytest.raises(ValueError, match=str(e.value)):
        sources.get_source("mem:x", "test")
    with pytest.raises(ValueError, match=r"joining splits with '\+' works for TFDS datasets only"):
        sources.get_source("mem:x", "train[:2]+train[4:]")
    with pytest.raises(ValueError, match=r"a class list \(data.classes\) applies to CSV manifests and image folders"):
        sources.get_source("mem:x", "train", classes="a,b")
    with pytest.raises(ValueError, match=r"unknown options \['image_key'\] for source 'mem:x'; it takes none"):
        sources.get_source("mem:x", "train", image_key="x")
    with pytest.raises(ValueError, match="data kind 'memory' is registered twice"):
        sources.register(Memory)
