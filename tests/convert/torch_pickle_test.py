"""The restricted PyTorch pickle reader: same tensors as `torch.load`, and no code execution."""

from __future__ import annotations

import collections
import os
import pickle

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from alpeft_jax.convert import efficientnet as convert_efficientnet  # noqa: E402
from alpeft_jax.convert.common import CheckpointError  # noqa: E402
from alpeft_jax.convert.torch_pickle import load_state_dict  # noqa: E402


def _assert_same(ours: dict, ref: dict) -> None:
    assert list(ours) == list(ref)
    for name, tensor in ref.items():
        expected = tensor.detach().float().numpy() if tensor.dtype == torch.bfloat16 else tensor.detach().numpy()
        got = ours[name].astype(np.float32) if tensor.dtype == torch.bfloat16 else ours[name]
        assert got.dtype == expected.dtype, name
        assert got.shape == expected.shape, name
        np.testing.assert_array_equal(got, expected, err_msg=name)


def test_reads_the_real_legacy_file_like_torch_load():
    path = convert_efficientnet.package_weights_path()
    with open(path, "rb") as f:
        assert f.read(2) == b"\x80\x02"  # a legacy (non-zip) pickle
    ours = load_state_dict(path)
    assert len(ours) == 296
    _assert_same(ours, torch.load(path, map_location="cpu", weights_only=True))


def _awkward_state():
    """Tensors of several dtypes, shared storages, views with offsets, non-contiguous strides, a Parameter."""
    g = torch.Generator().manual_seed(0)
    base = torch.randn(6, 5, generator=g)
    return collections.OrderedDict(
        weight=torch.nn.Parameter(torch.randn(4, 3, 2, 2, generator=g)),
        transposed=base.t(),  # stride (1, 5)
        row=base[2],  # storage offset 10, shares base's storage
        channels_last=torch.randn(2, 3, 4, 4, generator=g).to(memory_format=torch.channels_last),
        half=torch.randn(7, generator=g).half(),
        bf16=torch.randn(3, 2, generator=g).bfloat16(),
        double=torch.randn(2, generator=g).double(),
        long=torch.arange(5),
        int8=torch.tensor([-3, 4], dtype=torch.int8),
        uint8=torch.tensor([250, 3], dtype=torch.uint8),
        mask=torch.tensor([True, False, True]),
        scalar=torch.tensor(3.5),
        empty=torch.zeros(0, 4),
    )


@pytest.mark.parametrize("zip_format", [True, False])
def test_reads_files_saved_by_torch_save(tmp_path, zip_format):
    state = _awkward_state()
    path = tmp_path / "state.pt"
    torch.save(state, path, _use_new_zipfile_serialization=zip_format)
    ours = load_state_dict(path)
    _assert_same(ours, torch.load(path, map_location="cpu", weights_only=True))
    np.testing.assert_array_equal(ours["row"], state["transposed"].t()[2].numpy())


def test_unwraps_a_state_dict_entry(tmp_path):
    path = tmp_path / "ckpt.pt"
    torch.save({"state_dict": {"w": torch.ones(2, 3)}}, path)
    assert list(load_state_dict(path)) == ["w"]


class _Exploit:
    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def test_refuses_a_malicious_pickle_without_running_it(tmp_path):
    marker = tmp_path / "pwned"
    legit = tmp_path / "legit.pt"
    torch.save({"w": torch.ones(2)}, legit, _use_new_zipfile_serialization=False)
    # A legacy file whose object pickle calls os.system: the header pickles of a real file, then the exploit.
    with open(legit, "rb") as f:
        header = [pickle.load(f) for _ in range(3)]
    evil = tmp_path / "evil.pt"
    with open(evil, "wb") as f:
        for obj in header:
            pickle.dump(obj, f, protocol=2)
        pickle.dump({"w": _Exploit(marker)}, f, protocol=2)
        pickle.dump([], f, protocol=2)
    with pytest.raises(CheckpointError, match=r"refusing to load (posix|os|nt)\.system: a checkpoint may only"):
        load_state_dict(evil)
    assert not marker.exists()
    # Sanity check of the test itself: the plain unpickler would have run the command.
    with open(evil, "rb") as f:
        for _ in range(3):
            pickle.load(f)
        pickle.load(f)
    assert marker.exists()


def test_refuses_forbidden_globals_in_zip_files(tmp_path):
    marker = tmp_path / "pwned"
    path = tmp_path / "evil.pt"
    torch.save({"w": _Exploit(marker)}, path)  # torch.save pickles arbitrary objects into the zip
    with pytest.raises(CheckpointError, match="refusing to load"):
        load_state_dict(path)
    assert not marker.exists()


def test_rejects_non_tensor_entries_and_non_checkpoints(tmp_path):
    path = tmp_path / "mixed.pt"
    torch.save({"w": torch.ones(2), "step": 3}, path)
    with pytest.raises(CheckpointError, match="'step' holds a int, not a tensor"):
        load_state_dict(path)
    junk = tmp_path / "junk.pt"
    junk.write_bytes(b"not a pickle at all")
    with pytest.raises(CheckpointError, match="not a PyTorch checkpoint"):
        load_state_dict(junk)
    with pytest.raises(CheckpointError, match="not found"):
        load_state_dict(tmp_path / "missing.pt")
