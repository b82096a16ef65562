"""Pool sources: TFDS (mocked), image folders, CSV manifests, CoOp split files, Fashion-MNIST, digits, arrays."""

from __future__ import annotations

import gzip
import json
import os

import numpy as np
import pytest
from _required import require_fashion_mnist
from PIL import Image

from alpeft_jax.data import classnames, sources
from alpeft_jax.data.sources import CorruptImageError, MissingDataError, get_source

FMNIST = "/usr/share/datasets/fashion-mnist"


def _write(path, arr, fmt=None):
    os.makedirs(os.path.dirname(path), exist_ok=True)
    Image.fromarray(arr).save(path, format=fmt)


def _rand_img(rng, h, w, grey=False):
    return rng.integers(0, 256, size=(h, w) if grey else (h, w, 3), dtype=np.uint8)


# ---------------------------------------------------------------------------------------------------------------
# TFDS through tfds.testing.mock_data (no download, no TensorFlow)


@pytest.mark.parametrize("name,n_cls", [("dtd", 47), ("eurosat/rgb", 10)])
def test_tfds_mock(name, n_cls):
    import tensorflow_datasets as tfds

    with tfds.testing.mock_data(num_examples=7):
        src = get_source(name, "train")
        raw = tfds.data_source(name, split="train")
        assert len(src) == 7 and len(src.class_names) == n_cls
        assert src.class_names == list(tfds.builder(name).info.features["label"].names)
        labels = []
        for i in range(len(src)):
            ex = src[i]
            ref = raw[i]
            assert ex["image"].dtype == np.uint8 and ex["image"].ndim == 3 and ex["image"].shape[-1] == 3
            np.testing.assert_array_equal(ex["image"], ref["image"])
            assert ex["label"] == int(ref["label"]) and ex["id"] == i and isinstance(ex["path"], str)
            labels.append(int(ref["label"]))
        np.testing.assert_array_equal(src.labels, labels)
        np.testing.assert_array_equal(src.ids, np.arange(7))


def test_tfds_coop_names_eurosat():
    import tensorflow_datasets as tfds

    with tfds.testing.mock_data(num_examples=2):
        src = get_source("tfds:eurosat/rgb", "test", coop_names=True)
    names = src.class_names
    # TFDS names become the names of CoOp's split_zhou_EuroSAT.json (what C-PEAL's prompts read), e.g. label 4
    assert names == [
        "Annual Crop Land",
        "Forest",
        "Herbaceous Vegetation Land",
        "Highway or Road",
        "Industrial Buildings",
        "Pasture Land",
        "Permanent Crop Land",
        "Residential Buildings",
        "River",
        "Sea or Lake",
    ]


def test_tfds_missing_gives_instructions(tmp_path):
    with pytest.raises(MissingDataError, match=r"tfds build dtd --data_dir .* --file_format array_record"):
        get_source("dtd", "train", data_dir=str(tmp_path))
    with pytest.raises(MissingDataError, match="no dataset named"):
        get_source("no_such_dataset_xyz", "train", data_dir=str(tmp_path))


# ---------------------------------------------------------------------------------------------------------------
# Image folders


@pytest.fixture
def folder(tmp_path):
    rng = np.random.default_rng(0)
    root = tmp_path / "pool"
    imgs = {
        "cat/a.png": _rand_img(rng, 20, 30),
        "cat/b.PNG": _rand_img(rng, 11, 9, grey=True),
        "dog/x.jpg": _rand_img(rng, 40, 32),
        "dog/sub/y.png": _rand_img(rng, 8, 8),
    }
    for rel, arr in imgs.items():
        _write(str(root / rel), arr, "PNG" if rel.lower().endswith("png") else "JPEG")
    (root / "dog" / "broken.jpg").write_bytes(b"\xff\xd8\xff\xe0 this is not a jpeg")
    (root / "dog" / "notes.txt").write_text("not an image")
    (root / "emu").mkdir()  # empty class
    return root, imgs


def test_image_folder(folder):
    root, imgs = folder
    src = get_source("folder", "train", data_dir=str(root))
    assert src.class_names == ["cat", "dog", "emu"]
    rels = [os.path.relpath(p, root) for p in src.paths]
    assert rels == ["cat/a.png", "cat/b.PNG", "dog/broken.jpg", "dog/sub/y.png", "dog/x.jpg"]
    np.testing.assert_array_equal(src.labels, [0, 0, 1, 1, 1])
    np.testing.assert_array_equal(np.bincount(src.labels, minlength=3), [2, 3, 0])
    np.testing.assert_array_equal(src.ids, np.arange(5))
    ex = src[0]
    np.testing.assert_array_equal(ex["image"], imgs["cat/a.png"])  # PNG is lossless
    grey = src[1]["image"]
    assert grey.shape == (11, 9, 3)
    for c in range(3):
        np.testing.assert_array_equal(grey[..., c], imgs["cat/b.PNG"])
    assert src[4]["image"].shape == (40, 32, 3)


def test_image_folder_corrupt_file_is_a_clear_error(folder):
    root, _ = folder
    src = sources.image_folder(str(root))
    with pytest.raises(CorruptImageError, match=r"broken\.jpg.*delete or move the file"):
        src[2]


def test_image_folder_class_list_and_split_dir(folder, tmp_path):
    root, _ = folder
    src = sources.image_folder(str(root), ["dog", "cat", "emu", "zebra"])
    assert src.class_names == ["dog", "cat", "emu", "zebra"]
    np.testing.assert_array_equal(np.bincount(src.labels, minlength=4), [3, 2, 0, 0])
    with pytest.raises(ValueError, match="not in the class list"):
        sources.image_folder(str(root), ["cat"])
    split_root = tmp_path / "splits"
    os.makedirs(split_root / "val" / "k")
    _write(str(split_root / "val" / "k" / "1.png"), np.zeros((4, 4, 3), np.uint8))
    assert len(get_source("folder", "val", data_dir=str(split_root))) == 1
    with pytest.raises(MissingDataError):
        get_source("folder", "train", data_dir=str(tmp_path / "nope"))


# ---------------------------------------------------------------------------------------------------------------
# CSV manifests


def test_csv_manifest(tmp_path):
    rng = np.random.default_rng(1)
    a, b, c = _rand_img(rng, 10, 12), _rand_img(rng, 6, 6), _rand_img(rng, 9, 7)
    _write(str(tmp_path / "img" / "a.png"), a)
    _write(str(tmp_path / "img" / "b.png"), b)
    _write(str(tmp_path / "c.png"), c)
    (tmp_path / "img" / "bad.png").write_bytes(b"garbage")
    (tmp_path / "pool.csv").write_text("path,label\nimg/a.png,zebra\nimg/b.png,\nc.png,ant\nimg/bad.png,ant\n")
    src = get_source("csv", "train", data_dir=str(tmp_path / "pool.csv"))
    assert src.class_names == ["ant", "zebra"]
    np.testing.assert_array_equal(src.labels, [1, -1, 0, 0])
    np.testing.assert_array_equal(src[0]["image"], a)
    np.testing.assert_array_equal(src[2]["image"], c)
    assert src[1]["label"] == -1 and src[1]["path"].endswith(os.path.join("img", "b.png"))
    with pytest.raises(CorruptImageError, match=r"bad\.png.*drop its row"):
        src[3]
    # explicit class list (with an empty class), and <split>.csv inside a directory
    (tmp_path / "test.csv").write_text("path,label\nimg/a.png,zebra\n")
    src2 = get_source("csv", "test", data_dir=str(tmp_path), classes="ant,yak,zebra")
    assert src2.class_names == ["ant", "yak", "zebra"] and src2.labels.tolist() == [2]


def test_csv_errors(tmp_path):
    _write(str(tmp_path / "a.png"), np.zeros((3, 3, 3), np.uint8))
    (tmp_path / "missing.csv").write_text("path,label\na.png,x\ngone.png,x\n")
    with pytest.raises(MissingDataError, match=r"1 file\(s\).*line 3: gone\.png"):
        sources.csv_manifest(str(tmp_path / "missing.csv"))
    (tmp_path / "nohead.csv").write_text("a.png,x\n")
    with pytest.raises(ValueError, match="header row with columns 'path' and 'label'"):
        sources.csv_manifest(str(tmp_path / "nohead.csv"))
    (tmp_path / "ok.csv").write_text("path,label\na.png,x\n")
    with pytest.raises(ValueError, match="not in the class list"):
        sources.csv_manifest(str(tmp_path / "ok.csv"), ["y"])


# ---------------------------------------------------------------------------------------------------------------
# CoOp split files


def test_coop_split_eurosat_layout(tmp_path):
    rng = np.random.default_rng(2)
    img_dir = tmp_path / "eurosat" / "2750"
    entries = {
        "train": [["Industrial/Industrial_1.jpg", 4, "Industrial Buildings"], ["Forest/Forest_7.jpg", 1, "Forest"]],
        "val": [["SeaLake/SeaLake_3.jpg", 9, "Sea or Lake"]],
        "test": [["AnnualCrop/AnnualCrop_2.jpg", 0, "Annual Crop Land"]],
    }
    for part in entries.values():
        for p, _, _ in part:
            _write(str(img_dir / p), _rand_img(rng, 64, 64), "JPEG")
    (tmp_path / "eurosat" / "split_zhou_EuroSAT.json").write_text(json.dumps(entries))
    src = get_source("coop:eurosat", "train", data_dir=str(tmp_path))
    assert len(src) == 2 and src.labels.tolist() == [4, 1]
    # the split file's names pass through unchanged (the reference never calls its update_classname)
    assert src.class_names[4] == "Industrial Buildings"
    assert src.class_names[9] == "Sea or Lake" and src.class_names[0] == "Annual Crop Land"
    assert src[0]["image"].shape == (64, 64, 3)
    same = get_source("eurosat/rgb", "train", data_dir=str(tmp_path), coop=True)
    assert same.paths == src.paths
    os.remove(img_dir / "Forest" / "Forest_7.jpg")
    with pytest.raises(MissingDataError, match="1 of 2 images"):
        get_source("coop:eurosat", "train", data_dir=str(tmp_path))
    with pytest.raises(MissingDataError, match="split_zhou_DescribableTextures.json"):
        get_source("coop:dtd", "train", data_dir=str(tmp_path))


def test_classname_assets():
    assert len(classnames.class_names("dtd")) == 47
    assert len(classnames.class_names("eurosat/rgb")) == 10
    assert len(classnames.class_names("oxford_flowers102")) == 102
    assert len(classnames.class_names("oxford_iiit_pet")) == 37
    assert len(classnames.class_names("cars196")) == 196
    assert classnames.class_names("cars196")[0] == "2000 AM General Hummer SUV"
    assert classnames.class_names("OxfordPets")[0] == "abyssinian"
    assert classnames.coop_names("caltech101", ["airplanes", "faces", "accordion"]) == ["airplane", "face", "accordion"]
    assert classnames.templates("oxford_iiit_pet") == ["a photo of a {}, a type of pet."]
    assert classnames.templates("dtd") == ["{} texture."]
    assert classnames.templates("eurosat") == ["a centered satellite photo of {}."]
    assert classnames.templates("some_new_dataset") == ["a photo of a {}."]
    assert classnames.prompts(["sea_lake", "forest"]) == ["a photo of a sea lake.", "a photo of a forest."]
    with pytest.raises(ValueError, match="exactly one"):
        classnames.prompts(["a"], "no slot")


# ---------------------------------------------------------------------------------------------------------------
# Fashion-MNIST (Debian package), digits, arrays


def test_fashion_mnist_against_manual_parse():
    require_fashion_mnist()
    src = get_source("fashion_mnist", "train")
    assert len(src) == 60000
    np.testing.assert_array_equal(np.bincount(src.labels, minlength=10), [6000] * 10)
    with gzip.open(os.path.join(FMNIST, "train-labels-idx1-ubyte.gz"), "rb") as f:
        raw_labels = f.read()
    assert int.from_bytes(raw_labels[4:8], "big") == 60000
    np.testing.assert_array_equal(src.labels[:100], list(raw_labels[8:108]))
    with gzip.open(os.path.join(FMNIST, "train-images-idx3-ubyte.gz"), "rb") as f:
        raw_images = f.read(16 + 2 * 784)
    first = np.array(list(raw_images[16 : 16 + 784]), np.uint8).reshape(28, 28)
    ex = src[0]
    assert ex["image"].shape == (28, 28, 3) and ex["label"] == raw_labels[8]
    np.testing.assert_array_equal(ex["image"][..., 1], first)
    test = get_source("fashion_mnist", "test")
    assert len(test) == 10000 and test.class_names[9] == "Ankle boot"


def test_fashion_mnist_missing(tmp_path):
    with pytest.raises(MissingDataError, match="apt-get install dataset-fashion-mnist"):
        get_source("fashion_mnist", "train", data_dir=str(tmp_path))


def test_digits_split():
    from sklearn.datasets import load_digits

    d = load_digits()
    tr, te = get_source("digits", "train"), get_source("digits", "test")
    assert len(tr) + len(te) == len(d.target) and not set(tr.ids) & set(te.ids)
    np.testing.assert_array_equal(te.labels, d.target[te.ids])
    ex = te[3]
    np.testing.assert_array_equal(ex["image"][..., 0], np.round(d.images[ex["id"]] * 255 / 16).astype(np.uint8))


def test_array_source():
    imgs = np.arange(2 * 4 * 5, dtype=np.uint8).reshape(2, 4, 5)
    src = sources.ArraySource(imgs, [1, -1], ["a", "b"], ids=[10, 20])
    assert src[1]["image"].shape == (4, 5, 3) and src[1]["id"] == 20 and src[1]["label"] == -1
    assert isinstance(src, sources.Source)
    with pytest.raises(ValueError, match="labels must lie"):
        sources.ArraySource(imgs, [2, 0], ["a", "b"])
    with pytest.raises(ValueError, match="uint8"):
        sources.ArraySource(imgs.astype(np.float32), [0, 0], ["a"])
    with pytest.raises(IndexError):
        src[2]
    with pytest.raises(ValueError, match="unknown options"):
        get_source("digits", "train", bogus=1)


# ---------------------------------------------------------------------------------------------------------------
# Real (tiny) TFDS datasets on disk: slicing, CoOp split files over TFDS records, metadata-only inspection


def _tiny_tfds():
    import sys

    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    try:
        import _tiny_tfds
    finally:
        sys.path.pop(0)
    return _tiny_tfds


@pytest.fixture
def dtd_dir(tmp_path):
    t = _tiny_tfds()
    names = {
        "train": ["banded", "bumpy", "dotted"] * 3,
        "validation": ["bumpy", "banded", "dotted"],
        "test": ["dotted", "banded"],
    }
    splits, seed = {}, 0
    for split, labels in names.items():
        rows = []
        for k, lab in enumerate(labels):
            rows.append({"image": t.png(t.image(seed)), "label": lab, "file_name": f"{lab}/{lab}_{split}{k:02d}.jpg"})
            seed += 1
        splits[split] = rows
    t.write(str(tmp_path), "dtd", splits)
    return str(tmp_path)


@pytest.mark.parametrize(
    "spec",
    [
        "train[:60%]",
        "train[60%:]",
        "train[2:5]",
        "train[-2:]",
        "train[:-34%]",
        "validation",
        "train[:50%]+validation[1:]",
    ],
)
def test_tfds_slices_read_what_tfds_reads(dtd_dir, spec):
    import tensorflow_datasets as tfds

    src = get_source("dtd", spec, data_dir=dtd_dir)
    ref = [ex for part in spec.split("+") for ex in tfds.data_source("dtd", split=part, data_dir=dtd_dir)]
    assert len(src) == len(ref) > 0
    for i, ex in enumerate(ref):
        got = src[i]
        np.testing.assert_array_equal(got["image"], ex["image"])
        assert got["path"] == ex["file_name"].decode() and got["label"] == int(ex["label"])
    np.testing.assert_array_equal(src.labels, [int(ex["label"]) for ex in ref])
    # ids are record positions in their split (validation after the 9 train records), the same in every slice
    full = {get_source("dtd", "train", data_dir=dtd_dir)[k]["path"]: k for k in range(9)}
    val = {get_source("dtd", "validation", data_dir=dtd_dir)[k]["path"]: 9 + k for k in range(3)}
    expected = [full.get(src[i]["path"], val.get(src[i]["path"])) for i in range(len(src))]
    if "+" not in spec and spec.startswith("validation"):
        expected = [e - 9 for e in expected]
    np.testing.assert_array_equal(src.ids, expected)


def test_tfds_slices_partition_the_split(dtd_dir):
    a, b = get_source("dtd", "train[:80%]", data_dir=dtd_dir), get_source("dtd", "train[80%:]", data_dir=dtd_dir)
    assert (len(a), len(b)) == (7, 2) and not set(a.ids) & set(b.ids)
    assert sorted([*a.ids, *b.ids]) == list(range(9))
    with pytest.raises(ValueError, match=r"no split 'test2'.*its splits"):
        get_source("dtd", "test2", data_dir=dtd_dir)
    with pytest.raises(ValueError, match="reads some records twice"):
        get_source("dtd", "train[:5]+train[3:]", data_dir=dtd_dir)
    with pytest.raises(ValueError, match="cannot read 'train\\[:80\\]%'"):
        get_source("dtd", "train[:80]%", data_dir=dtd_dir)


def _coop_json(path, splits):
    with open(path, "w") as f:
        json.dump(splits, f)
    return str(path)


def test_coop_split_file_over_tfds_records(dtd_dir):
    import tensorflow_datasets as tfds

    # CoOp redistributes the records: its train list takes records from TFDS's train, validation and test
    coop = {
        "train": [
            ["bumpy/bumpy_validation00.jpg", 1, "bumpy"],
            ["banded/banded_train00.jpg", 0, "banded"],
            ["dotted/dotted_test00.jpg", 2, "dotted"],
        ],
        "val": [["dotted/dotted_train02.jpg", 2, "dotted"]],
        "test": [["banded/banded_test01.jpg", 0, "banded"], ["bumpy/bumpy_train01.jpg", 1, "bumpy"]],
    }
    _coop_json(os.path.join(dtd_dir, "split_zhou_DescribableTextures.json"), coop)
    records = {
        ex["file_name"].decode(): ex["image"]
        for split in ("train", "validation", "test")
        for ex in tfds.data_source("dtd", split=split, data_dir=dtd_dir)
    }
    for split in ("train", "val", "test"):
        # a bare file name is looked up in the TFDS data directory
        src = get_source("dtd", split, data_dir=dtd_dir, split_file="split_zhou_DescribableTextures.json")
        assert len(src) == len(coop[split]) and src.class_names == ["banded", "bumpy", "dotted"]
        np.testing.assert_array_equal(src.labels, [e[1] for e in coop[split]])
        np.testing.assert_array_equal(src.ids, np.arange(len(src)))
        for i, (path, label, _) in enumerate(coop[split]):
            ex = src[i]
            np.testing.assert_array_equal(ex["image"], records[path])
            assert ex["label"] == label and ex["path"] == path and ex["id"] == i
        info = sources.inspect_source("dtd", split, dtd_dir, "split_zhou_DescribableTextures.json")
        assert (info.size, info.num_classes) == (len(src), 3)
    half = get_source("dtd", "train[:2]", data_dir=dtd_dir, split_file="split_zhou_DescribableTextures.json")
    assert [half[i]["path"] for i in range(2)] == [coop["train"][0][0], coop["train"][1][0]]
    bad = _coop_json(
        os.path.join(dtd_dir, "bad.json"),
        {"train": [["banded/banded_train00.jpg", 0, "banded"], ["banded/banded_0999.jpg", 0, "banded"]]},
    )
    with pytest.raises(MissingDataError, match=r"1 of 2 entries .* \[train\].*first: banded/banded_0999\.jpg"):
        get_source("dtd", "train", data_dir=dtd_dir, split_file=bad)
    with pytest.raises(MissingDataError, match=r"download split_zhou_X\.json from the links in CoOp"):
        get_source("dtd", "train", data_dir=dtd_dir, split_file="split_zhou_X.json")


@pytest.mark.parametrize("name,key", [("caltech101", "image/file_name"), ("eurosat/rgb", "filename")])
def test_coop_split_file_matches_by_file_name_and_class_folder(tmp_path, name, key):
    t = _tiny_tfds()
    if name == "caltech101":  # Caltech-101 repeats file names across classes: the class folder decides
        rows = {
            "train": [("accordion", "image_0001.jpg", 1), ("airplanes", "image_0002.jpg", 2)],
            "test": [("airplanes", "image_0001.jpg", 3), ("faces", "image_0001.jpg", 4)],
        }
        coop = [
            ["airplanes/image_0001.jpg", 1, "airplane"],
            ["Faces/image_0001.jpg", 2, "face"],
            ["accordion/image_0001.jpg", 0, "accordion"],
        ]
        want = [3, 4, 1]
    else:  # EuroSAT records keep the base name only
        rows = {"train": [("Forest", "Forest_1.jpg", 5), ("SeaLake", "SeaLake_7.jpg", 6)]}
        coop = [["SeaLake/SeaLake_7.jpg", 9, "Sea or Lake"], ["Forest/Forest_1.jpg", 1, "Forest"]]
        want = [6, 5]
    t.write(
        str(tmp_path),
        name,
        {s: [{"image": t.png(t.image(seed)), "label": lab, key: f} for lab, f, seed in r] for s, r in rows.items()},
    )
    sf = _coop_json(tmp_path / "split.json", {"train": coop, "val": [], "test": []})
    src = get_source(name, "train", data_dir=str(tmp_path), split_file=sf)
    for i, seed in enumerate(want):
        np.testing.assert_array_equal(src[i]["image"], t.image(seed))
    np.testing.assert_array_equal(src.labels, [e[1] for e in coop])
    if name == "eurosat/rgb":
        assert src.class_names[9] == "Sea or Lake" and src.class_names[1] == "Forest"  # the split file's names
        prompts = classnames.prompts(src.class_names, classnames.templates(name)[0])
        assert prompts[9] == "a centered satellite photo of Sea or Lake."


def test_split_file_entry_of_another_class_is_refused(tmp_path):
    t = _tiny_tfds()
    # one record per file name: the match is unique, and the record's class is not the entry's
    t.write(
        str(tmp_path),
        "eurosat/rgb",
        {"train": [{"image": t.png(t.image(1)), "label": "Forest", "filename": "SeaLake_7.jpg"}]},
    )
    sf = _coop_json(tmp_path / "split.json", {"train": [["SeaLake/SeaLake_7.jpg", 9, "Sea or Lake"]]})
    with pytest.raises(
        ValueError, match=r"SeaLake/SeaLake_7\.jpg is 'Sea or Lake' in the split file, 'Forest' in TFDS"
    ):
        get_source("eurosat/rgb", "train", data_dir=str(tmp_path), split_file=sf)
    # the same class under its split-file name is accepted
    sf = _coop_json(tmp_path / "split.json", {"train": [["Forest/SeaLake_7.jpg", 1, "Forest"]]})
    assert get_source("eurosat/rgb", "train", data_dir=str(tmp_path), split_file=sf).labels.tolist() == [1]


def test_tfds_inspect_reads_metadata_only(dtd_dir, monkeypatch):
    import tensorflow_datasets as tfds

    def no_reading(*a, **k):
        raise AssertionError("inspect_source opened the records")

    monkeypatch.setattr(tfds, "data_source", no_reading)
    assert sources.inspect_source("dtd", "train[:60%]", dtd_dir) == sources.SourceInfo(5, 47)
    assert sources.inspect_source("dtd", "train+validation[1:]", dtd_dir) == sources.SourceInfo(11, 47)
    with pytest.raises(ValueError, match="no split 'test2'"):
        sources.inspect_source("dtd", "test2", dtd_dir)
    with pytest.raises(MissingDataError, match="is not prepared under"):
        sources.inspect_source("eurosat/rgb", "train", dtd_dir)


# ---------------------------------------------------------------------------------------------------------------
# Slices of file sources, FGVC-Aircraft's CoOp layout


def test_folder_slices_cut_a_fixed_shuffle(tmp_path):
    rng = np.random.default_rng(3)
    for cls in ("a", "b"):
        for k in range(10):
            _write(str(tmp_path / cls / f"{k:02d}.png"), _rand_img(rng, 4, 4))
    full = get_source("folder", "train", data_dir=str(tmp_path))
    head = get_source("folder", "train[:50%]", data_dir=str(tmp_path))
    tail = get_source("folder", "train[50%:]", data_dir=str(tmp_path))
    assert len(head) == len(tail) == 10 and not set(head.ids) & set(tail.ids)
    assert sorted([*head.ids, *tail.ids]) == list(range(20))
    assert set(head.labels) == set(tail.labels) == {0, 1}  # a shuffle, not the class-sorted file order
    np.testing.assert_array_equal(head.labels, full.labels[head.ids])
    for i in range(len(head)):
        assert head[i]["id"] == head.ids[i] and head[i]["path"] == full.paths[head.ids[i]]
    again = get_source("folder", "train[:50%]", data_dir=str(tmp_path))
    np.testing.assert_array_equal(again.ids, head.ids)  # the same on every run
    assert sources.inspect_source("folder", "train[:50%]", str(tmp_path)) == sources.SourceInfo(10, 2)
    digits_head = get_source("digits", "train[:10]")  # record order for array sources
    np.testing.assert_array_equal(digits_head.ids, get_source("digits", "train").ids[:10])
    with pytest.raises(ValueError, match="TFDS datasets only"):
        get_source("folder", "train+test", data_dir=str(tmp_path))


def test_coop_fgvc_aircraft_variant_lists(tmp_path):
    rng = np.random.default_rng(4)
    root = tmp_path / "fgvc_aircraft"
    os.makedirs(root / "images")
    (root / "variants.txt").write_text("707-320\nA320\nCessna 172\n")
    (root / "images_variant_train.txt").write_text("0001 Cessna 172\n0002 707-320\n")
    (root / "images_variant_test.txt").write_text("0003 A320\n")
    imgs = {k: _rand_img(rng, 5, 6) for k in ("0001", "0002", "0003")}
    for k, arr in imgs.items():
        _write(str(root / "images" / f"{k}.jpg"), arr, "PNG")  # PNG bytes: decoded pixels are exact
    src = get_source("coop:fgvc_aircraft", "train", data_dir=str(tmp_path))
    assert src.class_names == ["707-320", "A320", "Cessna 172"] and src.labels.tolist() == [2, 0]
    np.testing.assert_array_equal(src[0]["image"], imgs["0001"])
    assert classnames.templates("FGVCAircraft") == ["a photo of a {}, a type of aircraft."]
    assert sources.inspect_source("coop:fgvc_aircraft", "test", str(tmp_path)) == sources.SourceInfo(1, 3)
    with pytest.raises(MissingDataError, match="images_variant_val.txt does not exist"):
        get_source("coop:fgvc_aircraft", "val", data_dir=str(tmp_path))
    (root / "images_variant_test.txt").write_text("0003 B747\n")
    with pytest.raises(ValueError, match="not '<image id> <variant from variants.txt>'"):
        get_source("coop:fgvc_aircraft", "test", data_dir=str(tmp_path))
    os.remove(root / "images" / "0002.jpg")
    with pytest.raises(MissingDataError, match="1 of 2 images"):
        sources.inspect_source("coop:fgvc_aircraft", "train", str(tmp_path))


def test_inspect_agrees_with_the_sources(tmp_path):
    rng = np.random.default_rng(5)
    img_dir = tmp_path / "eurosat" / "2750"
    entries = {
        "train": [
            ["Forest/F1.jpg", 1, "Forest"],
            ["Highway/H1.jpg", 3, "Highway"],
            ["SeaLake/S1.jpg", 9, "Sea or Lake"],
        ],
        "val": [],
        "test": [["Forest/F2.jpg", 1, "Forest"]],
    }
    for part in entries.values():
        for p, _, _ in part:
            _write(str(img_dir / p), _rand_img(rng, 8, 8), "JPEG")
    _coop_json(tmp_path / "eurosat" / "split_zhou_EuroSAT.json", entries)
    root = str(tmp_path)
    for name, split, data_dir in [
        ("coop:eurosat", "train", root),
        ("coop:eurosat", "train[1:]", root),
        ("digits", "test", None),
        ("digits", "train[:25%]", None),
    ]:
        src = get_source(name, split, data_dir=data_dir)
        assert sources.inspect_source(name, split, data_dir) == sources.SourceInfo(len(src), len(src.class_names))
    if os.path.isdir(FMNIST):
        assert sources.inspect_source("fashion_mnist", "test") == sources.SourceInfo(10000, 10)
    with pytest.raises(MissingDataError, match="apt-get install dataset-fashion-mnist"):
        sources.inspect_source("fashion_mnist", "train", str(tmp_path))
