"""A run's estimated step memory (`unet_jax.training.memory_plan`) against its device's budget
(`unet_jax.runtime.memory`): what `unet-jax plan` prints, and the one message of a run that `unet-jax
train` refuses before compiling, with what would fit by the same estimate.

The advice tries one change at a time: the largest batch, `--dtype bfloat16`, `--remat blocks`,
`--pin-relu-output` (it changes only a GPU's figure), the largest smaller tile, more devices (never
on the CPU, whose devices share the host's memory). Each is offered only where its own estimate fits.
"""

from __future__ import annotations

import dataclasses
import json
from typing import Optional

import jax

from unet_jax.runtime.memory import BUDGET_VARIABLE, device_budget
from unet_jax.runtime.processes import EveryProcessError, gather_text
from unet_jax.training.errors import OverMemoryBudget
from unet_jax.training.memory_plan import StepLayout, StepMemory, estimate, gib, layout_of


class RefusedInEveryProcess(OverMemoryBudget, EveryProcessError):
    """The refusal of `check_run`'s verdict, which every process of a run reaches alike (they decide
    on the same, smallest budget), so that they leave together."""


@dataclasses.dataclass(frozen=True)
class MemoryCheck:
    """A run's estimate against its device budget."""

    memory: StepMemory
    budget: Optional[int]  # bytes per device; None where the machine reports no figure
    budget_source: str
    device_count_available: int = 1  # devices of this kind on the machine, for the --devices advice

    @property
    def fits(self) -> bool:
        return self.budget is None or self.memory.total <= self.budget

    def report(self) -> str:
        """What `unet-jax plan` prints: the layout, the breakdown, the budget and, over it, what would fit."""
        layout = self.memory.layout
        head = (f"memory plan: {layout.model}, tile {layout.tile_size} px, batch {layout.batch_size} over {layout.devices} "
                f"{layout.backend} device(s){' (FSDP)' if layout.fsdp else ''}, {layout.dtype}, --remat {layout.remat}"
                f"{', --pin-relu-output' if layout.pin_relu_output else ''}; "
                "estimated before compiling")
        if self.budget is None:
            verdict = f"budget: unknown ({self.budget_source}), nothing checked"
        else:
            verdict = f"budget: {gib(self.budget)} per device ({self.budget_source}): "
            verdict += f"fits, {gib(self.budget - self.memory.total)} to spare" if self.fits else f"does not fit. {self.advice()}"
        return "\n".join([head, *self.memory.lines(), verdict])

    def refusal(self) -> str:
        """The one message of a run refused before compiling."""
        parts = sorted(((size, name) for name, size in self._parts()), reverse=True)[:2]
        largest = ", ".join(f"{name} {gib(size)}" for size, name in parts)
        return (f"the train step needs about {gib(self.memory.total)} per device by the memory plan (largest: {largest}), "
                f"over the budget of {gib(self.budget)} ({self.budget_source}). {self.advice()} `unet-jax plan` with the same "
                f"options shows the whole estimate; if it is wrong for this machine, --no-memory-check runs anyway")

    def _parts(self):
        memory = self.memory
        return [("parameters", memory.parameters), ("optimizer state", memory.optimizer_state), ("gradients", memory.gradients),
                ("batch", memory.batch), ("kept activations", memory.kept), ("temporaries", memory.temporaries)]

    def advice(self) -> str:
        """What would fit the budget by the same estimate: the largest batch, and each option alone."""
        layout, fitting = self.memory.layout, []
        batch = largest_batch(layout, self.budget)
        said = (f"The largest batch that fits is {batch} (--batch-size {batch})" if batch
                else "No batch fits as the run is set up")
        if layout.dtype == "float32":
            fitting += self._if_fits("--dtype bfloat16", dataclasses.replace(layout, dtype="bfloat16"))
        if layout.remat == "none":
            fitting += self._if_fits("--remat blocks", dataclasses.replace(layout, remat="blocks"))
        if not layout.pin_relu_output:
            fitting += self._if_fits("--pin-relu-output", dataclasses.replace(layout, pin_relu_output=True))
        tile = largest_tile(layout, self.budget)
        if tile is not None:
            fitting += self._if_fits(f"--tile-size {tile}", with_tile(layout, tile))
        if layout.backend != "cpu":  # CPU devices share the host's memory: more of them fit nothing more
            devices = fewest_devices(layout, self.budget)
            if devices is not None:
                have = "" if devices <= self.device_count_available else f"; this machine has {self.device_count_available}"
                fitting += self._if_fits(f"--devices {devices}{have}", dataclasses.replace(layout, devices=devices))
        options = f"; it would also fit with {', or '.join(fitting)}" if fitting else "; no single other option fits"
        return said + options + "."

    def _if_fits(self, option: str, layout: StepLayout) -> list[str]:
        total = estimate(layout).total
        return [f"{option} ({gib(total)})"] if total <= self.budget else []


def with_tile(layout: StepLayout, tile: int) -> StepLayout:
    label = tile if layout.label_size == layout.tile_size else layout.model.output_size(tile)
    return dataclasses.replace(layout, tile_size=tile, label_size=label)


def largest_batch(layout: StepLayout, budget: int) -> int:
    """The largest global batch (a multiple of the devices) whose estimate fits `budget`; 0 if none does.
    The estimate is linear in the batch, so two estimates give the whole line."""
    one = estimate(dataclasses.replace(layout, batch_size=layout.devices)).total
    per_image = estimate(dataclasses.replace(layout, batch_size=2 * layout.devices)).total - one
    if budget < one:
        return 0
    return (1 + (budget - one) // max(per_image, 1)) * layout.devices


def largest_tile(layout: StepLayout, budget: int) -> Optional[int]:
    """The largest valid tile smaller than the layout's whose estimate fits: a binary search, since each
    size is traced (about a second for the seed network) and memory grows with the tile."""
    model, step = layout.model, 2**layout.model.depth
    sizes = list(range(model.smallest_input_size, layout.tile_size, step))
    low, high, found = 0, len(sizes) - 1, None
    while low <= high:
        middle = (low + high) // 2
        if estimate(with_tile(layout, sizes[middle])).total <= budget:
            found, low = sizes[middle], middle + 1
        else:
            high = middle - 1
    return found


def fewest_devices(layout: StepLayout, budget: int) -> Optional[int]:
    """The fewest devices, more than now and dividing the batch, over which the step fits."""
    for devices in range(layout.devices + 1, layout.batch_size + 1):
        if layout.batch_size % devices == 0 and estimate(dataclasses.replace(layout, devices=devices)).total <= budget:
            return devices
    return None


def check_run(plan) -> MemoryCheck:
    """The memory check of a `RunPlan`: its estimate against the budget of its first device."""
    parallel = plan.parallel
    device = parallel.mesh.devices.flat[0]
    layout = layout_of(plan)
    budget, source = device_budget(device)
    if budget is not None and device.platform == "cpu" and source != f"${BUDGET_VARIABLE}" and parallel.local_device_count > 1:
        budget //= parallel.local_device_count  # the CPU devices share the host
        source += f", shared by {parallel.local_device_count} CPU devices"
    budget, source = tightest_budget(budget, source)
    available = sum(d.platform == device.platform for d in jax.devices())
    return MemoryCheck(estimate(layout), budget, source, available)


def tightest_budget(budget: Optional[int], source: str) -> tuple[Optional[int], str]:
    """The smallest budget over the run's processes (this one's alone outside a multi-process run).

    Each host measures its own (free memory differs from host to host, and so may
    UNET_JAX_MEMORY_BUDGET), but the run fits only where it fits on every one: deciding on the
    smallest, every process refuses or goes on alike, instead of one leaving the others to wait."""
    reports = [json.loads(text) for text in gather_text(json.dumps([budget, source]))]
    known = [(figure, process, where) for process, (figure, where) in enumerate(reports) if figure is not None]
    if len(reports) == 1 or not known:
        return budget, source
    figure, process, where = min(known)
    return figure, f"{where}, process {process} of {len(reports)}: the smallest of the run's processes"
