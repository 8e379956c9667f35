"""The train step's peak memory per device, estimated before anything is compiled (`unet-jax plan`;
`unet_jax.training.memory_check` holds it against the device's budget before `unet-jax train` compiles).

What the estimate adds up, per device:
- parameters (and BatchNorm statistics), optimizer state, gradients: exact, from the state's
  shapes (`jax.eval_shape`: traced, nothing allocated or compiled);
- the batch: images, masks and weight maps as the trainer cuts them (shape arithmetic);
- activations kept for the backward pass: exact, the residuals of `jax.vjp` of the step's loss
  (traced as above), for this network, dtype and `--remat` policy;
- XLA's temporaries beyond them: fitted. No analytic rule lands within 15% on both backends
  (benchmarks/NOTES.md, "toward a memory plan"), so the step's compiled buffers are a measured
  factor times a basis, per backend (`GPU_FACTORS`, `CPU_FACTORS`):
  * GPU: the kept activations. XLA:GPU schedules the backward pass around what JAX keeps.
  * CPU: every feature map of the forward pass (`activation_bytes`). XLA:CPU merges remat's
    recomputation back into the forward pass and runs bfloat16 convolutions in float32, so what
    JAX keeps does not predict its buffers (0.98-2.8x of them over small networks), the maps do.
  Other backends (TPU) take the GPU's factors: never measured there, and the plan says so.

After compiling, `compiled_bytes` reads the executable's own figure, which the trainer logs
beside the estimate.
"""

from __future__ import annotations

import dataclasses
import functools
from typing import Optional

import jax
import jax.numpy as jnp

from unet_jax.config import TrainConfig, UNetConfig
from unet_jax.inference.tile_plan import activation_bytes
from unet_jax.model.compute import Compute
from unet_jax.model.unet import UNet
from unet_jax.training.losses import make_loss, needs_weights
from unet_jax.training.step import create_train_state, loss_and_logits, make_optax_optimizer

GiB = 2**30


@dataclasses.dataclass(frozen=True)
class Factor:
    """Compiled step buffers (activations and temporaries) = `value` x the backend's basis; where it was measured."""

    value: float
    measured: str


# Fitted by `python -m benchmarks.memory_plan_fit [--cpu]`, which prints every point, fitted or held out, and its error.
# GPU, by (--remat policy, --pin-relu-output): (XLA temporaries - gradients) / kept activations of the bfloat16 batch-16
# rows, batch 1 and float32 held out. Measured on one NVIDIA H200 (jax/jaxlib 0.11.2, CUDA 13.0, cuDNN 9.19, the seed
# network at 572 px, `python3 -m benchmarks.run --budget-s 334 --out $OUT/nvidia-h200-sweep ...`) where a device ran
# the setting; otherwise from the same step compiled for an H200 on a CPU (`_AOT`).
_AOT = ("compiled for an H200 without a device (benchmarks/results/gpu-aot-h200/, jax 0.11.2: within 2% of the "
        "device's temporaries where both exist), seed network 572 px, bfloat16 batch 16")
GPU_FACTORS: dict[tuple[str, bool], Factor] = {
    ("none", False): Factor(1.508, "NVIDIA H200, jax 0.11.2, seed network 572 px, bfloat16 batch 16"),
    ("blocks", False): Factor(1.324, "NVIDIA H200, jax 0.11.2, seed network 572 px, bfloat16 batch 16, --remat blocks"),
    ("dots", False): Factor(0.900, f"--remat dots {_AOT}"),
    ("none", True): Factor(1.127, f"--pin-relu-output {_AOT}"),
    ("blocks", True): Factor(1.232, f"--remat blocks --pin-relu-output {_AOT}"),
    ("dots", True): Factor(0.861, f"--remat dots --pin-relu-output {_AOT}"),
}
# CPU, by (dtype, norm): a 2-core AMD EPYC, jax/jaxlib 0.10.2 with the project's XLA:CPU flags, the median over
# FIT_CONFIGS of benchmarks/memory_plan_fit.py of (temporaries - gradients) / feature maps; HELD_OUT_CONFIGS are
# the check (tests/unit/test_memory_plan.py). BatchNorm's maps count twice in the basis, but XLA fuses them.
CPU_FACTORS: dict[tuple[str, Optional[str]], Factor] = {
    ("float32", None): Factor(1.70, "2-core AMD EPYC, jax 0.10.2, small networks, float32"),
    ("float32", "batch"): Factor(1.43, "2-core AMD EPYC, jax 0.10.2, small networks, float32, BatchNorm"),
    ("bfloat16", None): Factor(2.43, "2-core AMD EPYC, jax 0.10.2, small networks, bfloat16"),
    ("bfloat16", "batch"): Factor(2.60, "2-core AMD EPYC, jax 0.10.2, small networks, bfloat16, BatchNorm"),
}


@dataclasses.dataclass(frozen=True)
class StepLayout:
    """Everything the step's memory depends on."""

    model: UNetConfig
    tile_size: int  # input side
    label_size: int  # side of the masks (and weight maps) the step takes
    batch_size: int  # the global batch, split over `devices`
    dtype: str = "float32"
    remat: str = "none"
    optimizer: str = "adam"
    weight_maps: bool = False  # per-pixel loss weights in the batch
    devices: int = 1
    fsdp: bool = False  # parameters and optimizer state split over the devices
    backend: str = "cpu"  # jax.default_backend() of the devices: picks the factor
    pin_relu_output: bool = False  # UNet.pin_relu_output: XLA:GPU keeps fewer temporaries

    @classmethod
    def of_run(cls, train: TrainConfig, compute: Compute, devices: int, fsdp: bool, backend: str) -> "StepLayout":
        """The step `unet-jax train` compiles for this config (elastic deformation takes input-sized labels)."""
        return cls(train.model, train.tile_size, train.tile_size if train.elastic else train.label_size, train.batch_size,
                   train.dtype, compute.remat, train.optimizer, needs_weights(train.loss), devices, fsdp, backend,
                   compute.pin_relu_output)

    @property
    def per_device_batch(self) -> int:
        return max(self.batch_size // self.devices, 1)

    def factor(self) -> Factor:
        """The factor of this backend, dtype, norm and remat policy (module docstring: what it multiplies)."""
        if self.backend == "cpu":
            return CPU_FACTORS[(self.dtype, self.model.norm)]
        factor = GPU_FACTORS.get((self.remat, self.pin_relu_output))
        if factor is None:  # conv-outputs: it keeps more than "none", so none's factor on what it keeps
            none = GPU_FACTORS[("none", self.pin_relu_output)]
            factor = dataclasses.replace(none, measured=none.measured + f"; --remat {self.remat} not measured, none's factor")
        if self.backend != "gpu":
            factor = dataclasses.replace(factor, measured=factor.measured + f"; never measured on {self.backend}")
        return factor


@dataclasses.dataclass(frozen=True)
class StepMemory:
    """The estimated peak of one device during a train step, in bytes, by what holds it."""

    layout: StepLayout
    parameters: int  # with BatchNorm statistics
    optimizer_state: int
    gradients: int
    batch: int
    kept: int  # activations JAX keeps for the backward pass
    temporaries: int  # XLA's buffers beyond them (fitted; negative where XLA keeps less than them)
    factor: Factor

    @property
    def total(self) -> int:
        return self.parameters + self.optimizer_state + self.gradients + self.batch + self.kept + self.temporaries

    def lines(self) -> list[str]:
        """The breakdown, one part a line, for `unet-jax plan`."""
        layout = self.layout
        rows = [("parameters", self.parameters, ""), (f"optimizer state ({layout.optimizer})", self.optimizer_state, ""),
                ("gradients", self.gradients, ""),
                ("batch", self.batch, f"{layout.per_device_batch} tile(s) of {layout.tile_size} px, labels {layout.label_size} px"),
                ("activations kept for backward", self.kept, f"{layout.dtype}, --remat {layout.remat}"),
                ("temporaries", self.temporaries, f"fitted: {self.factor.measured}"
                 + ("; negative: XLA keeps less than JAX's residuals count" if self.temporaries < 0 else ""))]
        width = max(len(name) for name, *_ in rows)
        said = [f"  {name:<{width}}  {gib(size):>10}  {note}".rstrip() for name, size, note in rows]
        return said + [f"  {'total (estimate)':<{width}}  {gib(self.total):>10}  per device"]


def gib(size: int) -> str:
    """Bytes as GiB, or MiB below one GiB: "7.95 GiB", "61.3 MiB"."""
    return f"{size / GiB:.2f} GiB" if abs(size) >= GiB else f"{size / 2**20:.1f} MiB"


def _bytes(tree) -> int:
    return sum(leaf.size * jnp.dtype(leaf.dtype).itemsize for leaf in jax.tree.leaves(tree))


@functools.lru_cache(maxsize=64)
def _state_bytes(model: UNetConfig, tile_size: int, dtype: str, optimizer: str) -> tuple[int, int, int]:
    """(parameters, BatchNorm statistics, optimizer state) in bytes: traced, nothing allocated."""
    net = UNet(model, dtype=jnp.dtype(dtype))
    state = jax.eval_shape(lambda: create_train_state(net, make_optax_optimizer(optimizer), 0, tile_size))
    return _bytes(state.params), _bytes(state.batch_stats), _bytes(state.opt_state)


def residual_bytes(net: UNet, batch: int, tile_size: int, label_size: int) -> int:
    """Bytes of the residuals `jax.vjp` of the step's loss keeps for `batch` tiles (shapes only, traced)."""
    channels = net.config.in_channels
    sample = jax.ShapeDtypeStruct((1, tile_size, tile_size, channels), jnp.float32)
    variables = jax.eval_shape(net.init, jax.random.key(0), sample)
    images = jax.ShapeDtypeStruct((batch, tile_size, tile_size, channels), jnp.float32)
    masks = jax.ShapeDtypeStruct((batch, label_size, label_size), jnp.int32)
    loss = make_loss("ce")

    def residuals(variables, images, masks):
        def of_params(params):
            return loss_and_logits(params, variables.get("batch_stats"), net.apply, images, masks, loss)[0]

        return jax.vjp(of_params, variables["params"])[1]

    return _bytes(jax.eval_shape(residuals, variables, images, masks))


@functools.lru_cache(maxsize=64)
def _kept_per_image(model: UNetConfig, tile_size: int, label_size: int, dtype: str, remat: str) -> int:
    """Bytes of the residuals kept per image: traced at batches 1 and 2, so that what does not grow
    with the batch (the weights the backward pass reads) drops out."""
    net = UNet(model, dtype=jnp.dtype(dtype), remat=remat, batch_groups=1)
    return residual_bytes(net, 2, tile_size, label_size) - residual_bytes(net, 1, tile_size, label_size)


def estimate(layout: StepLayout) -> StepMemory:
    """The step's peak memory per device for `layout`: traced and counted, never compiled."""
    gradients, statistics, optimizer_state = _state_bytes(layout.model, layout.tile_size, layout.dtype, layout.optimizer)
    parameters = gradients + statistics  # a gradient per parameter, in its dtype
    if layout.fsdp and layout.devices > 1:  # split over the devices (an array no axis of which divides stays whole: ignored)
        parameters, optimizer_state, gradients = (-(-part // layout.devices) for part in (parameters, optimizer_state, gradients))
    batch = layout.per_device_batch
    pixels, labels = layout.tile_size**2 * layout.model.in_channels, layout.label_size**2
    batch_bytes = batch * 4 * (pixels + labels * (2 if layout.weight_maps else 1))  # float32 images, int32 masks, float32 weights
    kept = batch * _kept_per_image(layout.model, layout.tile_size, layout.label_size, layout.dtype, layout.remat)
    factor = layout.factor()
    if layout.backend == "cpu":
        maps = batch * activation_bytes(layout.model, layout.tile_size, jnp.dtype(layout.dtype).itemsize)
        buffers = max(round(factor.value * maps), kept)
    else:  # below 1 where XLA:GPU keeps less than JAX's residuals count (--remat dots, its outputs fused)
        buffers = round(factor.value * kept)
    return StepMemory(layout, parameters, optimizer_state, gradients, batch_bytes, kept, buffers - kept, factor)


def layout_of(plan) -> StepLayout:
    """The step a `RunPlan` (`unet_jax.training.plan`) compiles, on its own devices."""
    parallel = plan.parallel
    platform = parallel.mesh.devices.flat[0].platform
    return StepLayout.of_run(plan.train, plan.compute, parallel.device_count, parallel.fsdp, platform)


def compiled_bytes(compiled) -> Optional[int]:
    """The compiled step's own peak figure: temporaries + arguments + outputs not aliased to donated
    arguments (`memory_analysis()`); None where the backend gives none."""
    try:
        stats = compiled.memory_analysis()
    except Exception:  # noqa: BLE001 - backend-specific, and absent is not a failure of the step
        return None
    if stats is None:
        return None
    return int(stats.temp_size_in_bytes + stats.argument_size_in_bytes + stats.output_size_in_bytes - stats.alias_size_in_bytes)


def compared(estimated: StepMemory, compiled: Optional[int]) -> str:
    """The one line the trainer logs after compiling: the compiled figure beside the estimate."""
    if compiled is None:
        return f"memory: estimated {gib(estimated.total)} per device; this backend gives no compiled figure"
    return (f"memory: compiled step {gib(compiled)} per device (memory_analysis: temporaries + arguments + new outputs), "
            f"estimated {gib(estimated.total)} before compiling ({100 * (estimated.total / compiled - 1):+.0f}%)")
