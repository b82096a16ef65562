"""The one batch layout that the model's consumers read (training, evaluation, pool scoring, prefix caching).

`alpeft_jax.inputs.SplitInputs.batches` makes them: fixed-shape, this process's block of each global batch, padded
with rows whose ``pos`` is -1, ``label`` -1 and ``_mask`` False (so a jitted step compiles once).
"""

from __future__ import annotations

from typing import Generic, TypedDict, TypeVar

A = TypeVar("A")  # the array type: np.ndarray on the host, jax.Array once on the mesh


class Batch(TypedDict, Generic[A]):
    """One fixed-shape batch of a split's rows."""

    inputs: A  # [B, ...] of the inputs' kind: images, cached hidden states or cached image features
    label: A  # int32[B]: the row's label, -1 where unknown or padding
    pos: A  # int64[B]: the row's position in the split, -1 for padding
    _mask: A  # bool[B]: True for real rows
