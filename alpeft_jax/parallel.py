"""One global mesh over every device of every process, and global batches assembled from each process's slice.

The mesh has axes ``("data", "model")`` over ``jax.devices()`` (all processes; ``model`` has size 1 today and
leaves room for tensor-parallel towers). Batches are split over ``data``; the trainable tree, the optimiser state and
the frozen weights are replicated. A global batch of G rows (a multiple of the device count) is row block
``[p·G/P, (p+1)·G/P)`` on process p (``jax.devices()`` lists each process's devices as one contiguous block), so each
process loads and decodes only its own rows and `jax.make_array_from_process_local_data` joins them; the jitted
steps then see one global array and XLA inserts the collectives (gradient all-reduce, metric sums).

Outputs that every process needs whole (pool scores, cached prefixes) come back with `Sharder.to_host`.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import jax
import numpy as np
from jax.experimental import multihost_utils
from jax.sharding import Mesh, NamedSharding, PartitionSpec


def make_mesh(devices: list[Any] | None = None) -> Mesh:
    """A ("data", "model") mesh over all devices of all processes (or the given ones), model axis of size 1."""
    devices = jax.devices() if devices is None else list(devices)
    if not devices:
        raise ValueError("make_mesh needs at least one device.")
    return Mesh(np.asarray(devices).reshape(-1, 1), ("data", "model"))


def round_up(n: int, m: int) -> int:
    """The smallest multiple of m at or above n."""
    return -(-int(n) // int(m)) * int(m)


class Sharder:
    """Places host data on the global mesh: batch axis over `data`, everything else replicated."""

    def __init__(self, mesh: Mesh | None = None) -> None:
        self.mesh = make_mesh() if mesh is None else mesh
        self.size = int(self.mesh.devices.size)
        self.batch = NamedSharding(self.mesh, PartitionSpec("data"))
        self.replicated = NamedSharding(self.mesh, PartitionSpec())
        procs = sorted({d.process_index for d in self.mesh.devices.flat})
        self.process_count = len(procs)
        self.process_index = procs.index(jax.process_index()) if jax.process_index() in procs else 0
        if self.size % self.process_count:
            raise ValueError(f"{self.size} devices do not split evenly over {self.process_count} processes.")

    @property
    def multiprocess(self) -> bool:
        """Whether the mesh spans more than one process."""
        return self.process_count > 1

    def global_size(self, requested: int) -> int:
        """Rows of a global batch: `requested` rounded up to a multiple of the device count."""
        return round_up(max(1, int(requested)), self.size)

    def local_slice(self, global_rows: np.ndarray) -> np.ndarray:
        """This process's block of a global batch's rows (length divisible by the process count)."""
        n = len(global_rows)
        if n % self.process_count:
            raise ValueError(f"a global batch of {n} rows does not split over {self.process_count} processes.")
        k = n // self.process_count
        return global_rows[self.process_index * k : (self.process_index + 1) * k]

    def put(self, local: Any) -> Any:
        """A global array (or tree) from this process's block of rows, batch axis sharded over `data`."""
        return jax.tree.map(lambda x: jax.make_array_from_process_local_data(self.batch, np.asarray(x)), local)

    def replicate(self, tree: Any) -> Any:
        """A tree replicated on every device of the mesh (every process must pass the same values)."""
        if not self.multiprocess:
            return jax.device_put(tree, self.replicated)

        def one(x: Any) -> Any:
            if isinstance(x, jax.Array) and x.sharding == self.replicated:
                return x
            if isinstance(x, jax.Array) and jax.dtypes.issubdtype(x.dtype, jax.dtypes.prng_key):
                return jax.random.wrap_key_data(one(jax.random.key_data(x)), impl=jax.random.key_impl(x))
            x = np.asarray(x) if not isinstance(x, jax.Array) or x.is_fully_addressable else x
            if isinstance(x, jax.Array):
                return jax.jit(lambda a: a, out_shardings=self.replicated)(x)
            return jax.make_array_from_callback(x.shape, self.replicated, lambda idx: x[idx])

        return jax.tree.map(one, tree)

    def to_host(self, tree: Any) -> Any:
        """NumPy copies of global arrays, whole on every process."""
        if not self.multiprocess:
            return jax.device_get(tree)
        return jax.tree.map(lambda x: np.asarray(multihost_utils.process_allgather(x, tiled=True)), tree)

    def global_batches(self, rows: np.ndarray, rows_per_batch: int) -> Iterator[np.ndarray]:
        """Batches of `rows` (`rows_per_batch` each, the last one short), padded with -1 to the global size."""
        g = self.global_size(rows_per_batch)
        for start in range(0, len(rows), rows_per_batch):
            part = np.asarray(rows[start : start + rows_per_batch], np.int64)
            yield np.concatenate([part, np.full(g - len(part), -1, np.int64)])


def is_leader() -> bool:
    """Whether this is process 0 (the one that writes JSON state, reports and talks to servers)."""
    return jax.process_index() == 0


def broadcast_json(obj: Any) -> Any:
    """Process 0's JSON-able value, on every process (identity in a single-process run)."""
    if jax.process_count() == 1:
        return obj
    raw = np.frombuffer(json.dumps(obj).encode(), np.uint8) if is_leader() else np.zeros((0,), np.uint8)
    n = int(multihost_utils.broadcast_one_to_all(np.asarray([len(raw)], np.int64))[0])
    buf = raw if is_leader() else np.zeros((n,), np.uint8)
    out = np.asarray(multihost_utils.broadcast_one_to_all(buf))
    return json.loads(out.astype(np.uint8).tobytes().decode())


def barrier(name: str) -> None:
    """Wait until every process reaches the same named point (no-op in a single-process run)."""
    if jax.process_count() > 1:
        multihost_utils.sync_global_devices(name)
