"""Strict checkpoint conversion: read tensors, rename by a table, reshape by hooks, check against the model.

A converter for one checkpoint family is two tables applied by `convert` (and, read backwards, by `unconvert`,
which writes our parameters under the checkpoint's own names for the exports):
  * `rules`: ordered `(regex, replacement)` pairs mapping a checkpoint tensor name to a Flax path
    `a/b/c` (first match wins; a replacement of `None` drops the tensor on purpose);
  * `hooks`: ordered `(regex, fn)` pairs; the first whose regex matches the *Flax* path transforms the
    array (transpose a linear kernel, OIHW -> HWIO, split a fused q/k/v, ...). A hook may return a dict
    `{flax_path: array}` to fan one tensor out into several parameters.
The result is compared with the model's expected parameter tree (from `jax.eval_shape` of its init):
every expected parameter must be found with the right shape and every tensor must be used, otherwise
one `CheckpointError` lists what is missing, unexpected and mis-shaped.
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Callable, Iterable, Mapping
from typing import Any

import numpy as np

from alpeft_jax.utils import flatten, unflatten  # noqa: F401  (re-exported for the converters)

Array = np.ndarray
Rules = Iterable[tuple[str, str | None]]
Hook = Callable[[Array], Array | dict[str, Array]]
Hooks = Iterable[tuple[str, Hook]]


class CheckpointError(ValueError):
    """A checkpoint cannot be read or does not fit the model; the message says why and what to do."""


# --------------------------------------------------------------------------------------------------
# Reading tensors
# --------------------------------------------------------------------------------------------------


def read_safetensors(path: str) -> dict[str, Array]:
    """Read one `.safetensors` file into NumPy arrays (no torch needed)."""
    from safetensors.numpy import load_file

    try:
        return dict(load_file(path))
    except Exception as e:  # safetensors raises its own error types for truncated/corrupt headers.
        raise CheckpointError(
            f"Corrupt or unreadable safetensors file {path}: {type(e).__name__}: {e}. "
            "Re-download or re-save the checkpoint."
        ) from None


def read_torch_file(path: str) -> dict[str, Array]:
    """Read a PyTorch `.bin`/`.pt` state dict with torch (the `convert` extra), `weights_only=True`."""
    try:
        import torch
    except ImportError:
        raise CheckpointError(
            f"{path} is a PyTorch pickle and needs torch: pip install 'alpeft_jax[convert]', "
            "or convert it to .safetensors."
        ) from None
    try:
        sd = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:
        raise CheckpointError(f"Cannot read PyTorch checkpoint {path}: {type(e).__name__}: {e}") from None
    if isinstance(sd, Mapping) and "state_dict" in sd and isinstance(sd["state_dict"], Mapping):
        sd = sd["state_dict"]
    if not isinstance(sd, Mapping):
        raise CheckpointError(f"{path} does not hold a state dict (found {type(sd).__name__}).")
    return {k: v.detach().float().numpy() if v.dtype.is_floating_point else v.numpy() for k, v in sd.items()}


def read_hf_directory(directory: str) -> dict[str, Array]:
    """Read all weights of a Hugging Face `save_pretrained` directory (single or sharded)."""
    single = os.path.join(directory, "model.safetensors")
    index = os.path.join(directory, "model.safetensors.index.json")
    bin_file = os.path.join(directory, "pytorch_model.bin")
    bin_index = os.path.join(directory, "pytorch_model.bin.index.json")
    if os.path.exists(single):
        return read_safetensors(single)
    for idx, reader in ((index, read_safetensors), (bin_index, read_torch_file)):
        if os.path.exists(idx):
            try:
                with open(idx) as f:
                    weight_map = json.load(f)["weight_map"]
            except (OSError, ValueError, KeyError) as e:
                raise CheckpointError(f"Bad shard index {idx}: {e}") from None
            state: dict[str, Array] = {}
            for shard in sorted(set(weight_map.values())):
                shard_path = os.path.join(directory, shard)
                if not os.path.exists(shard_path):
                    raise CheckpointError(f"Shard {shard} listed in {idx} is missing from {directory}.")
                state.update(reader(shard_path))
            return state
    if os.path.exists(bin_file):
        return read_torch_file(bin_file)
    raise CheckpointError(
        f"No weights in {directory}: expected model.safetensors, a sharded model.safetensors.index.json "
        "or pytorch_model.bin (save the model with save_pretrained)."
    )


def read_config(directory: str) -> dict[str, Any]:
    """Read `config.json` of a Hugging Face directory."""
    path = os.path.join(directory, "config.json")
    if not os.path.exists(path):
        raise CheckpointError(f"No config.json in {directory}: save the model with save_pretrained.")
    try:
        with open(path) as f:
            return json.load(f)
    except ValueError as e:
        raise CheckpointError(f"Bad config.json in {directory}: {e}") from None


# --------------------------------------------------------------------------------------------------
# Renaming and checking
# --------------------------------------------------------------------------------------------------


def rename(name: str, rules: Rules) -> str | None:
    """Map a checkpoint name to a Flax path with the first matching rule; the name itself if none."""
    for pattern, repl in rules:
        if re.fullmatch(pattern, name):
            return None if repl is None else re.sub(pattern, repl, name)
    return name


def transpose_linear(x: Array) -> Array:
    """PyTorch Linear weight [out, in] -> Flax Dense kernel [in, out]."""
    return np.ascontiguousarray(x.T)


def conv_oihw_to_hwio(x: Array) -> Array:
    """PyTorch Conv2d weight [O, I, H, W] -> Flax Conv kernel [H, W, I, O]."""
    return np.ascontiguousarray(x.transpose(2, 3, 1, 0))


def conv_hwio_to_oihw(x: Array) -> Array:
    """Flax Conv kernel [H, W, I, O] -> PyTorch Conv2d weight [O, I, H, W]."""
    return np.ascontiguousarray(x.transpose(3, 2, 0, 1))


# hook -> its inverse (our layout back to the checkpoint's); converters register theirs with `invertible`
_INVERSE: dict[Hook, Callable[[Array], Array]] = {}


def invertible(hook: Hook, inverse: Callable[[Array], Array]) -> Hook:
    """Record `inverse` as the inverse of `hook` (for `unconvert`); returns the hook."""
    _INVERSE[hook] = inverse
    return hook


invertible(transpose_linear, transpose_linear)
invertible(conv_oihw_to_hwio, conv_hwio_to_oihw)


def paths_of(names: Iterable[str], rules: Rules) -> dict[str, str]:
    """Checkpoint name -> our Flax path, for the names `rules` map (dropped and unmatched names left out)."""
    rules = list(rules)
    out = {}
    for name in names:
        path = rename(name, rules)
        if path is not None and (path != name or any(re.fullmatch(p, name) for p, _ in rules)):
            out[name] = path
    return out


def unconvert(params: Mapping[str, Any], names: Iterable[str], rules: Rules, hooks: Hooks) -> dict[str, Array]:
    """Our parameters under the checkpoint's `names`, in its layout: `convert` read backwards through the same
    tables. Returns {name: array} for every name whose path is in `params` (a nested or flat tree)."""
    flat = flatten(params) if any(isinstance(v, Mapping) for v in params.values()) else dict(params)
    hooks = list(hooks)
    out = {}
    for name, path in paths_of(names, rules).items():
        if path not in flat:
            continue
        value = np.asarray(flat[path], np.float32)
        for pattern, fn in hooks:
            if re.fullmatch(pattern, path):
                if fn not in _INVERSE:
                    raise CheckpointError(f"{path}: the conversion of {name} has no registered inverse.")
                value = _INVERSE[fn](value)
                break
        out[name] = value
    return out


def convert(
    state: Mapping[str, Array],
    expected: Mapping[str, Any],
    rules: Rules = (),
    hooks: Hooks = (),
    *,
    source: str = "checkpoint",
    dtype: Any = None,
) -> dict[str, Any]:
    """Map `state` (checkpoint name -> array) onto the nested param tree `expected` (arrays or ShapeDtypeStructs).

    Returns a nested dict of NumPy arrays with exactly the structure of `expected`; raises one
    `CheckpointError` listing every missing, unexpected and mis-shaped tensor otherwise.
    """
    rules, hooks = list(rules), list(hooks)
    want = flatten(expected)
    got: dict[str, Array] = {}
    origin: dict[str, str] = {}
    unexpected: list[str] = []
    for name, value in state.items():
        path = rename(name, rules)
        if path is None:
            continue
        value = np.asarray(value)
        out: Array | dict[str, Array] = value
        for pattern, fn in hooks:
            if re.fullmatch(pattern, path):
                out = fn(value)
                break
        pieces = out if isinstance(out, dict) else {path: out}
        for p, v in pieces.items():
            if p not in want:
                unexpected.append(name if p == path else f"{name} -> {p}")
                continue
            got[p] = v
            origin[p] = name
    missing = sorted(set(want) - set(got))
    mismatched = [
        f"{origin[p]} -> {p}: checkpoint {tuple(v.shape)} vs model {tuple(want[p].shape)}"
        for p, v in sorted(got.items())
        if tuple(v.shape) != tuple(want[p].shape)
    ]
    if missing or unexpected or mismatched:
        parts = []
        if missing:
            parts.append(f"missing {len(missing)}: {_short(missing)}")
        if unexpected:
            parts.append(f"unexpected {len(unexpected)}: {_short(sorted(unexpected))}")
        if mismatched:
            parts.append(f"shape mismatch {len(mismatched)}: {_short(mismatched)}")
        raise CheckpointError(
            f"{source} does not fit the model ({'; '.join(parts)}). "
            "Check that config.json matches the weights and that the checkpoint family is right."
        )
    out_flat = {}
    for p, v in got.items():
        target = dtype or getattr(want[p], "dtype", v.dtype)
        out_flat[p] = v.astype(target) if np.issubdtype(v.dtype, np.floating) else v
    return unflatten(out_flat)


def _short(items: list[str], n: int = 12) -> str:
    more = f", ... (+{len(items) - n} more)" if len(items) > n else ""
    return ", ".join(items[:n]) + more
