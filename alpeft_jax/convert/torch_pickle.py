"""Read PyTorch state-dict pickles (legacy pre-1.6 and zip format) into NumPy arrays without torch.

A PyTorch checkpoint is a pickle, and unpickling runs whatever callables the file names. The reader here
admits only the globals a plain state dict needs (the tensor-rebuild functions, the typed storage classes
and `collections.OrderedDict`) and refuses anything else before it is called, so a crafted file cannot
execute code. Tensors are rebuilt from (storage, offset, shape, stride) as NumPy arrays.

Legacy layout (`torch.save(..., _use_new_zipfile_serialization=False)` or torch < 1.6), one file of
consecutive pickles: magic number, protocol version, system info, the object (storages as persistent ids
`('storage', StorageClass, key, location, numel, view)`), the list of storage keys; then per key an int64
element count followed by the raw little-endian bytes. Zip layout: `<root>/data.pkl` with persistent ids
`('storage', StorageClass, key, location, numel)` and each storage's bytes in `<root>/data/<key>`.
"""

from __future__ import annotations

import collections
import io
import os
import pickle
import struct
import zipfile
from collections.abc import Mapping
from typing import Any, BinaryIO

import ml_dtypes
import numpy as np

from alpeft_jax.convert.common import CheckpointError

__all__ = ["load_state_dict"]

_LEGACY_MAGIC = 0x1950A86A20F9469CFC6C
_LEGACY_PROTOCOL = 1001

_STORAGE_DTYPES: dict[str, np.dtype] = {
    "DoubleStorage": np.dtype("<f8"),
    "FloatStorage": np.dtype("<f4"),
    "HalfStorage": np.dtype("<f2"),
    "BFloat16Storage": np.dtype(ml_dtypes.bfloat16),
    "LongStorage": np.dtype("<i8"),
    "IntStorage": np.dtype("<i4"),
    "ShortStorage": np.dtype("<i2"),
    "CharStorage": np.dtype("i1"),
    "ByteStorage": np.dtype("u1"),
    "BoolStorage": np.dtype("?"),
}


class _StorageType:
    """Stand-in for a `torch.<Type>Storage` class: only carries the element dtype."""

    def __init__(self, name: str) -> None:
        self.name = name
        self.dtype = _STORAGE_DTYPES[name]


class _Storage:
    """One flat storage; `data` is filled when its bytes are read (after the pickle, in the legacy layout)."""

    def __init__(self, dtype: np.dtype, numel: int) -> None:
        self.dtype = dtype
        self.numel = numel
        self.data: np.ndarray | None = None
        self.base: tuple[_Storage, int] | None = None  # legacy storage views: (root, element offset)

    def array(self) -> np.ndarray:
        """The storage's elements as a flat array."""
        if self.base is not None:
            root, offset = self.base
            return root.array()[offset : offset + self.numel]
        if self.data is None:
            raise CheckpointError("Corrupt PyTorch checkpoint: a tensor refers to a storage never written.")
        return self.data


class _Tensor:
    """A tensor waiting for its storage's bytes."""

    def __init__(self, storage: _Storage, offset: int, shape: tuple, stride: tuple) -> None:
        if not isinstance(storage, _Storage):
            raise CheckpointError("Corrupt PyTorch checkpoint: a tensor is not backed by a storage.")
        self.storage, self.offset, self.shape, self.stride = storage, int(offset), tuple(shape), tuple(stride)

    def materialize(self) -> np.ndarray:
        """Copy the strided view out of the storage."""
        flat = self.storage.array()
        if len(self.shape) != len(self.stride):
            raise CheckpointError(f"Corrupt PyTorch checkpoint: shape {self.shape} vs stride {self.stride}.")
        if any(s == 0 for s in self.shape):
            return np.zeros(self.shape, flat.dtype)
        last = self.offset + sum((n - 1) * s for n, s in zip(self.shape, self.stride, strict=True))
        if self.offset < 0 or min(self.stride, default=0) < 0 or last >= flat.size:
            raise CheckpointError(
                f"Corrupt PyTorch checkpoint: tensor of shape {self.shape} (offset {self.offset}, stride "
                f"{self.stride}) reaches past its storage of {flat.size} elements."
            )
        item = flat.dtype.itemsize
        view = np.lib.stride_tricks.as_strided(
            flat[self.offset :], shape=self.shape, strides=[s * item for s in self.stride], writeable=False
        )
        return np.array(view)


def _rebuild_tensor_v2(
    storage: _Storage,
    storage_offset: int,
    size: tuple[int, ...],
    stride: tuple[int, ...],
    requires_grad: bool = False,
    backward_hooks: Any = None,
    metadata: Any = None,
) -> _Tensor:
    return _Tensor(storage, storage_offset, size, stride)


def _rebuild_parameter(data: _Tensor, requires_grad: bool = False, backward_hooks: Any = None) -> _Tensor:
    return data


_ALLOWED: dict[tuple[str, str], Any] = {
    ("collections", "OrderedDict"): collections.OrderedDict,
    ("torch._utils", "_rebuild_tensor_v2"): _rebuild_tensor_v2,
    ("torch._utils", "_rebuild_parameter"): _rebuild_parameter,
    **{("torch", name): _StorageType(name) for name in _STORAGE_DTYPES},
}


class _RestrictedUnpickler(pickle.Unpickler):
    """Unpickler that resolves only tensor-rebuild globals and storage persistent ids."""

    def __init__(self, file: BinaryIO, storage: Any = None) -> None:
        super().__init__(file)
        self._storage = storage

    def find_class(self, module: str, name: str) -> Any:
        """Return the stand-in for an admitted global; refuse everything else."""
        try:
            return _ALLOWED[(module, name)]
        except KeyError:
            raise CheckpointError(
                f"refusing to load {module}.{name}: a checkpoint may only contain tensors "
                "(save the model's state_dict(), or convert it to .safetensors)."
            ) from None

    def persistent_load(self, pid: Any) -> Any:
        """Resolve a `('storage', ...)` persistent id through the layout-specific callback."""
        if self._storage is None or not isinstance(pid, tuple) or not pid:
            raise CheckpointError(f"Corrupt PyTorch checkpoint: unexpected persistent id {pid!r}.")
        kind = pid[0].decode("ascii") if isinstance(pid[0], bytes) else pid[0]
        if kind != "storage":
            raise CheckpointError(f"refusing to load a pickled '{kind}' object: a checkpoint may only contain tensors.")
        return self._storage(pid[1:])


def _storage_type(obj: Any) -> _StorageType:
    if not isinstance(obj, _StorageType):
        raise CheckpointError(f"Corrupt PyTorch checkpoint: {obj!r} is not a storage type.")
    return obj


def _load_zip(path: str) -> Any:
    with zipfile.ZipFile(path) as zf:
        names = zf.namelist()
        pkl = [n for n in names if n.endswith("data.pkl") and n.count("/") == 1]
        if not pkl:
            raise CheckpointError(f"{path} is a zip file without <name>/data.pkl: not a torch.save file.")
        root = pkl[0][: -len("data.pkl")]
        if root + "byteorder" in names and zf.read(root + "byteorder").strip() != b"little":
            raise CheckpointError(f"{path} was saved big-endian; re-save it on a little-endian machine.")
        storages: dict[str, _Storage] = {}

        def storage(args: tuple) -> _Storage:
            stype, key, _location, numel = args[:4]
            key = str(key)
            if key not in storages:
                st = _Storage(_storage_type(stype).dtype, int(numel))
                try:
                    raw = zf.read(f"{root}data/{key}")
                except KeyError:
                    raise CheckpointError(f"Corrupt PyTorch checkpoint {path}: no storage {key}.") from None
                if len(raw) < st.numel * st.dtype.itemsize:
                    raise CheckpointError(f"Corrupt PyTorch checkpoint {path}: storage {key} is truncated.")
                st.data = np.frombuffer(raw, st.dtype, count=st.numel)
                storages[key] = st
            return storages[key]

        return _RestrictedUnpickler(io.BytesIO(zf.read(pkl[0])), storage).load()


def _load_legacy(path: str) -> Any:
    with open(path, "rb") as f:
        header = _RestrictedUnpickler(f)
        try:
            magic = header.load()
        except (pickle.UnpicklingError, EOFError, ValueError) as e:
            raise CheckpointError(f"{path} is not a PyTorch checkpoint ({type(e).__name__}: {e}).") from None
        if magic != _LEGACY_MAGIC:
            raise CheckpointError(f"{path} is not a PyTorch checkpoint (bad magic number).")
        if _RestrictedUnpickler(f).load() != _LEGACY_PROTOCOL:
            raise CheckpointError(f"{path}: unsupported legacy PyTorch protocol version.")
        sys_info = _RestrictedUnpickler(f).load()
        if isinstance(sys_info, Mapping) and not sys_info.get("little_endian", True):
            raise CheckpointError(f"{path} was saved big-endian; re-save it on a little-endian machine.")
        storages: dict[str, _Storage] = {}

        def storage(args: tuple) -> _Storage:
            stype, key, _location, numel, view = args
            dtype = _storage_type(stype).dtype
            key = str(key)
            if key not in storages:
                storages[key] = _Storage(dtype, int(numel))
            if view is None:
                return storages[key]
            view_key, offset, view_size = view
            view_key = str(view_key)
            if view_key not in storages:
                storages[view_key] = _Storage(dtype, int(view_size))
                storages[view_key].base = (storages[key], int(offset))
            return storages[view_key]

        result = _RestrictedUnpickler(f, storage).load()
        keys = _RestrictedUnpickler(f).load()
        for key in keys:
            st = storages.get(str(key))
            if st is None:
                raise CheckpointError(f"Corrupt PyTorch checkpoint {path}: unknown storage key {key!r}.")
            head = f.read(8)
            if len(head) != 8:
                raise CheckpointError(f"Corrupt PyTorch checkpoint {path}: truncated storage section.")
            (numel,) = struct.unpack("<q", head)
            raw = f.read(numel * st.dtype.itemsize)
            if numel != st.numel or len(raw) != numel * st.dtype.itemsize:
                raise CheckpointError(f"Corrupt PyTorch checkpoint {path}: storage {key} has the wrong size.")
            st.data = np.frombuffer(raw, st.dtype)
    return result


def load_state_dict(path: str | os.PathLike) -> dict[str, np.ndarray]:
    """Read a PyTorch state-dict file (legacy or zip format) as `{name: np.ndarray}`; refuses non-tensors."""
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise CheckpointError(f"PyTorch checkpoint {path} not found: no such file.")
    obj = _load_zip(path) if zipfile.is_zipfile(path) else _load_legacy(path)
    if isinstance(obj, Mapping) and isinstance(obj.get("state_dict"), Mapping):
        obj = obj["state_dict"]
    if not isinstance(obj, Mapping):
        raise CheckpointError(f"{path} does not hold a state dict (found {type(obj).__name__}).")
    out: dict[str, np.ndarray] = {}
    for name, value in obj.items():
        if not isinstance(value, _Tensor):
            raise CheckpointError(
                f"{path}: entry {name!r} holds a {type(value).__name__}, not a tensor; save model.state_dict()."
            )
        out[str(name)] = value.materialize()
    return out
