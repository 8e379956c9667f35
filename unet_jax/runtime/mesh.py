"""Data parallelism over every device of every process: one `jax.sharding` mesh, one code path.

A run builds a 1-D mesh with a "data" axis (`DataParallel.create`): a single device is a mesh
of one. The global batch is sharded along that axis; parameters and optimizer state are
replicated, or (`fsdp=True`) sharded along it too, FSDP style, each array on its largest axis
the device count divides. `jax.jit` with these shardings makes XLA insert the collectives: the
gradient all-reduce, and the BatchNorm batch mean and variance over the whole global batch
(PyTorch's SyncBatchNorm), since under jit an array's mean is its global mean however it is laid out.

Several processes (hosts) join through `unet_jax.runtime.processes`. Each process reads only
its share of the training images (`unet_jax.training.sampling`), cuts only the tiles of its own devices
(`DataParallel.rows`) and assembles the global batch from them; only process 0 (`is_primary`)
writes the run directory.
"""

from __future__ import annotations

import dataclasses
from typing import Callable, NamedTuple, Optional

import jax
import numpy as np
from jax.experimental import multihost_utils
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from unet_jax.runtime.processes import DistributedError

DATA_AXIS = "data"


# ------------------------------------------------------------------ the mesh
def select_devices(devices: Optional[int] = None, local: bool = False) -> list:
    """The first `devices` devices (default all), the same number from each process; `local`: this process's only."""
    visible = jax.local_devices() if local else jax.devices()
    count = len(visible) if devices is None else devices
    processes = 1 if local else jax.process_count()
    if not 1 <= count <= len(visible):
        where = f"{len(visible)} {visible[0].platform.upper()} device(s)" + (f" over {processes} processes" if processes > 1 else "")
        raise DistributedError(f"--devices {count}: this run sees {where}. Fix: pass --devices between 1 and {len(visible)}")
    if processes == 1:
        return list(visible[:count])
    if count % processes:
        raise DistributedError(f"--devices {count} is not a multiple of the {processes} processes; every process needs the same share")
    per_process = count // processes
    return [d for p in range(processes) for d in [d for d in visible if d.process_index == p][:per_process]]


def check_batch_size(batch_size: int, device_count: int, flag: str = "--batch-size") -> None:
    """The global batch is split evenly over the devices: name the nearest sizes that are when it isn't."""
    if batch_size % device_count == 0:
        return
    below = batch_size // device_count * device_count
    above = below + device_count
    nearest = " or ".join(str(size) for size in (below, above) if size > 0)
    raise DistributedError(
        f"{flag} {batch_size} does not divide evenly over {device_count} devices. Fix: {flag} {nearest} "
        f"(a multiple of {device_count}), or --devices a divisor of {batch_size}"
    )


class StepShardings(NamedTuple):
    """What a jitted step takes and gives: the state's layout, the batch's, and replicated results."""

    state: object  # a pytree of NamedSharding shaped like the TrainState
    batch: NamedSharding
    replicated: NamedSharding


@dataclasses.dataclass(frozen=True)
class DataParallel:
    """The mesh of a run, and how its arrays are laid out on it."""

    mesh: Mesh
    fsdp: bool = False

    @classmethod
    def create(cls, devices: Optional[int] = None, fsdp: bool = False, local: bool = False) -> "DataParallel":
        return cls(Mesh(np.array(select_devices(devices, local)), (DATA_AXIS,)), fsdp)

    @property
    def device_count(self) -> int:
        return self.mesh.size

    @property
    def local_device_count(self) -> int:
        """This process's devices in the mesh."""
        return sum(d.process_index == jax.process_index() for d in self.mesh.devices.flat)

    @property
    def batch_sharding(self) -> NamedSharding:
        return NamedSharding(self.mesh, PartitionSpec(DATA_AXIS))  # axis 0 split over the devices

    @property
    def replicated(self) -> NamedSharding:
        return NamedSharding(self.mesh, PartitionSpec())

    def _parameter_sharding(self, shape: tuple) -> NamedSharding:
        """FSDP: split the largest axis the device count divides (a conv kernel's output channels,
        say); an array with no such axis (a scalar, an odd-sized bias) stays replicated."""
        if not self.fsdp:
            return self.replicated
        axes = [a for a in np.argsort(shape)[::-1] if shape[a] % self.device_count == 0 and shape[a] >= self.device_count]
        if not axes or self.device_count == 1:
            return self.replicated
        spec = [None] * len(shape)
        spec[axes[0]] = DATA_AXIS
        return NamedSharding(self.mesh, PartitionSpec(*spec))

    def state_shardings(self, state):
        """Shardings shaped like `state`: the step counter and augmentation key replicated, the
        parameters, optimizer state and BatchNorm statistics by `_parameter_sharding`."""
        shardings = jax.tree.map(lambda leaf: self._parameter_sharding(np.shape(leaf)), state)
        return shardings.replace(step=self.replicated, rng=self.replicated)

    def step_shardings(self, state) -> StepShardings:
        return StepShardings(self.state_shardings(state), self.batch_sharding, self.replicated)

    def place_state(self, state):
        """`state` (the same values in every process) laid out on the mesh."""
        return jax.tree.map(self.put, state, self.state_shardings(state))

    def put(self, value, sharding: Optional[NamedSharding] = None) -> jax.Array:
        """A host array that every process holds whole, laid out by `sharding` (default: the batch's)."""
        value = np.asarray(value)
        sharding = sharding or self.batch_sharding
        return jax.make_array_from_callback(value.shape, sharding, lambda index: value[index])

    def rows(self, batch_size: int) -> range:
        """The rows of a global batch that this process's devices hold: the tiles it must cut."""
        check_batch_size(batch_size, self.device_count)
        starts = sorted(index[0].start or 0 for index in self.batch_sharding.addressable_devices_indices_map((batch_size,)).values())
        share = batch_size // self.device_count
        # select_devices keeps each process's rows together
        if starts != list(range(starts[0], starts[0] + share * len(starts), share)):
            raise DistributedError(f"this process's devices hold rows {starts} of the batch, not one block")  # a bug if reached
        return range(starts[0], starts[0] + share * len(starts))

    def global_batch(self, batch_size: int, cut: Callable[[range], tuple]) -> tuple:
        """The global batch assembled from each process's share: `cut(rows)` returns this
        process's rows (numpy arrays with the batch on axis 0), which are the only tiles it cuts."""
        rows = self.rows(batch_size)
        local = cut(rows)

        def piece(part, index):  # index: the global slice of one of this process's devices
            first, stop, _ = index[0].indices(batch_size)
            return part[(slice(first - rows.start, stop - rows.start), *index[1:])]

        return tuple(
            jax.make_array_from_callback((batch_size, *part.shape[1:]), self.batch_sharding, lambda i, part=part: piece(part, i))
            for part in local
        )


def fetch(tree):
    """Host numpy copies of a pytree of (possibly multi-process, sharded) arrays, in every process."""
    def one(leaf):
        if isinstance(leaf, jax.Array) and not leaf.is_fully_addressable and not leaf.is_fully_replicated:
            return np.asarray(multihost_utils.process_allgather(leaf, tiled=True))
        return np.asarray(leaf)

    return jax.tree.map(one, tree)
