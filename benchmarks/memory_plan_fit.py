"""The memory plan's factors (`unet_jax.training.memory_plan.FACTORS`): fitted here, and checked on held-out points.

    python -m benchmarks.memory_plan_fit            # the GPU points only (committed results; seconds)
    python -m benchmarks.memory_plan_fit --cpu      # and the CPU's: compiles every config below (minutes)

CPU: each config's train step, as `unet-jax train` compiles it (`make_train_step` with on-device
augmentation, label-sized masks, Adam), is compiled on this machine; `memory_analysis()` gives its
peak (temporaries + arguments + outputs not aliased). The factor of a dtype and norm is the median over the
FIT configs of (temporaries - gradients) / the forward pass's feature maps; the HELD_OUT configs are
never used to fit, and tests/unit/test_memory_plan.py checks the estimate against them.

GPU: the committed H200 results (`benchmarks/results/nvidia-h200*/results.json`, the seed
network's step as `benchmarks.jax_step` runs it: no augmentation, input-sized masks). The factor
of a remat policy is fitted on its bfloat16 batch-16 row; the other rows are held out. Where no
device measured a setting (`--remat dots`, `--pin-relu-output`), the step compiled for an H200
without a device (`benchmarks.gpu_aot`, results/gpu-aot-h200/: its temporaries were within 2% of
the device's on the four jobs both have) stands in: fitted on bfloat16 batch 16, the rest held out.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import statistics
from pathlib import Path
from typing import Optional

RESULTS = Path(__file__).resolve().parent / "results"
GPU_RESULT_DIRS = ("nvidia-h200", "nvidia-h200-fair", "nvidia-h200-sweep", "nvidia-h200-sweep-extra")
GPU_FIT = {("bfloat16", "none", 16), ("bfloat16", "blocks", 16)}  # (dtype, remat, batch) the GPU factors come from
GPU_AOT = RESULTS / "gpu-aot-h200" / "gpu_aot.json"


@dataclasses.dataclass(frozen=True)
class CpuConfig:
    features: int
    depth: int
    tile_size: int
    batch_size: int
    dtype: str = "float32"
    remat: str = "none"
    norm: Optional[str] = None
    padding: str = "valid"


# Small enough to compile in seconds on a 2-core CPU; they vary width, depth, tile, batch, dtype, norm, padding, remat.
FIT_CONFIGS = (
    CpuConfig(8, 2, 92, 8), CpuConfig(16, 3, 124, 8), CpuConfig(8, 3, 140, 4, remat="blocks"), CpuConfig(8, 2, 64, 4, padding="same"),
    CpuConfig(32, 4, 188, 2), CpuConfig(16, 3, 124, 8, "bfloat16"), CpuConfig(8, 3, 108, 8, "bfloat16"),
    CpuConfig(16, 3, 124, 4, norm="batch"), CpuConfig(8, 3, 108, 4, remat="conv-outputs", norm="batch"),
    CpuConfig(8, 2, 92, 4, "bfloat16", norm="batch"), CpuConfig(8, 3, 108, 4, "bfloat16", "blocks", "batch"),
)
HELD_OUT_CONFIGS = (
    CpuConfig(4, 2, 60, 16), CpuConfig(8, 3, 108, 2), CpuConfig(8, 2, 48, 8, padding="same"), CpuConfig(4, 3, 124, 16),
    CpuConfig(8, 2, 76, 4, "bfloat16"), CpuConfig(16, 2, 76, 2, "bfloat16", remat="blocks"),
    CpuConfig(16, 3, 64, 4, "bfloat16", padding="same"), CpuConfig(8, 2, 92, 8, norm="batch"), CpuConfig(16, 2, 92, 4, norm="batch"),
    CpuConfig(16, 3, 124, 2, "bfloat16", norm="batch"),
)
SMALLEST = CpuConfig(4, 2, 60, 4)  # the one a fast test compiles


def cpu_layout(config: CpuConfig):
    from unet_jax.config import UNetConfig
    from unet_jax.training.memory_plan import StepLayout

    model = UNetConfig(features=config.features, depth=config.depth, norm=config.norm, padding=config.padding)
    return StepLayout(model, config.tile_size, model.output_size(config.tile_size), config.batch_size, config.dtype,
                      config.remat, backend="cpu")


def compiled_cpu_step(layout) -> dict:
    """The compiled train step of `layout` (as `unet-jax train` builds it, augmentation on) and its memory figures."""
    import jax
    import jax.numpy as jnp

    from unet_jax.data.augment import augment
    from unet_jax.model.unet import UNet
    from unet_jax.training.losses import make_loss
    from unet_jax.training.memory_plan import compiled_bytes
    from unet_jax.training.step import create_train_state, make_optax_optimizer, make_train_step

    model = UNet(layout.model, dtype=jnp.dtype(layout.dtype), remat=layout.remat, batch_groups=1)
    state = jax.eval_shape(lambda: create_train_state(model, make_optax_optimizer(layout.optimizer), 0, layout.tile_size))
    images = jax.ShapeDtypeStruct((layout.batch_size, layout.tile_size, layout.tile_size, layout.model.in_channels), jnp.float32)
    masks = jax.ShapeDtypeStruct((layout.batch_size, layout.label_size, layout.label_size), jnp.int32)
    compiled = make_train_step(make_loss("ce"), augment=augment).lower(state, images, masks).compile()
    return {"compiled": compiled_bytes(compiled), "temp": int(compiled.memory_analysis().temp_size_in_bytes)}


def cpu_ratio(layout, temp: int) -> float:
    """What the CPU factor would have to be for this point: (temporaries - gradients) / feature maps."""
    import jax.numpy as jnp

    from unet_jax.inference.tile_plan import activation_bytes
    from unet_jax.training.memory_plan import estimate

    maps = layout.batch_size * activation_bytes(layout.model, layout.tile_size, jnp.dtype(layout.dtype).itemsize)
    return (temp - estimate(layout).gradients) / maps


def gpu_points() -> list[dict]:
    """Every JAX train row of the committed H200 results, once: its layout and measured peak.

    The peak is the row's `step_peak_memory_bytes` (bytes live between steps + temporaries + new
    outputs) where the run recorded it, else the compiled figure (temporaries + arguments + outputs
    not aliased), with `peak_source` saying which."""
    from unet_jax.config import UNetConfig
    from unet_jax.training.memory_plan import StepLayout

    points = {}
    for name in GPU_RESULT_DIRS:
        path = RESULTS / name / "results.json"
        if not path.exists():
            continue
        result = json.loads(path.read_text())
        model, size = UNetConfig(**result["config"]["model"]), result["config"]["size"]
        versions = result["environment"]["versions"]
        for row in result["results"]:
            if row.get("framework") != "jax" or row.get("task") != "train" or row.get("status") != "ok":
                continue
            if row.get("precision") not in (None, "default") or row.get("variant_xla_flags"):
                continue
            dtype = {"bf16": "bfloat16", "fp32": "float32"}[row["dtype"]]
            pinned = bool(row.get("pin_relu_output"))
            key = (dtype, row.get("remat") or "none", row["batch"], pinned)
            compiled = row["compiled_temp_bytes"] + row["compiled_argument_bytes"] + row["compiled_output_bytes"] \
                - row["compiled_alias_bytes"]
            peak, source = (compiled, "compiled")
            if row.get("step_peak_memory_bytes"):
                peak, source = row["step_peak_memory_bytes"], "step peak"
            if key in points and points[key]["peak_source"] == "step peak":
                continue  # the same job in another run's copy; a recorded step peak wins
            # benchmarks.jax_step's step: input-sized int32 masks, no augmentation, no weight maps.
            layout = StepLayout(model, size, size, row["batch"], dtype, key[1], "adam", backend="gpu", pin_relu_output=pinned)
            points[key] = {"layout": layout, "peak": peak, "peak_source": source, "temp": row["compiled_temp_bytes"],
                           "fit": key[:3] in GPU_FIT and not pinned, "file": str(path.relative_to(RESULTS.parent.parent)),
                           "device": result["device"]["name"], "jax": versions.get("jax")}
    return list(points.values())


def gpu_compiled_points() -> list[dict]:
    """The settings no device measured, from the step compiled for an H200 without one (GPU_AOT): their
    compiled figure (temporaries + arguments + outputs not aliased); bfloat16 batch 16 fits each factor
    that no device row gave."""
    from benchmarks.variants import VARIANTS
    from unet_jax.config import UNetConfig
    from unet_jax.training.memory_plan import StepLayout

    result = json.loads(GPU_AOT.read_text())["result"]
    if result["config"] != str(UNetConfig()):
        raise ValueError(f"{GPU_AOT}: the seed network's step expected, found {result['config']}")
    measured = {(p["layout"].dtype, p["layout"].remat, p["layout"].batch_size, p["layout"].pin_relu_output) for p in gpu_points()}
    points = []
    for row in result["rows"]:
        if row["what_if"] not in (None, "relu-output-barrier"):
            continue  # a compile-only form of the network that no option builds
        variant = VARIANTS[row["variant"]]
        remat, pinned = variant.remat, variant.pin_relu_output or row["what_if"] == "relu-output-barrier"
        dtype = {"bf16": "bfloat16", "fp32": "float32"}[variant.dtype]
        if (dtype, remat, row["batch"], pinned) in measured:
            continue  # measured on the device (gpu_points), or the same step compiled twice (variant or what-if)
        measured.add((dtype, remat, row["batch"], pinned))
        layout = StepLayout(UNetConfig(), result["size"], result["size"], row["batch"], dtype, remat,
                            "adam", backend="gpu", pin_relu_output=pinned)
        compiled = row["temp_bytes"] + row["argument_bytes"] + row["output_bytes"] - row["alias_bytes"]
        fit = dtype == "bfloat16" and row["batch"] == 16 and (pinned or remat == "dots")
        points.append({"layout": layout, "peak": compiled, "peak_source": "compiled without a device", "temp": row["temp_bytes"],
                       "fit": fit, "file": str(GPU_AOT.relative_to(RESULTS.parent.parent))})
    return points


def cpu_committed_points() -> list[dict]:
    """The seed network's CPU rows in the committed `benchmarks.memory` results (`results/cpu-*/memory.json`):
    temporaries only (that harness records no arguments), so they check the estimate's gradients, kept
    activations and temporaries. Its step: no augmentation, input-sized masks. Never used to fit."""
    from unet_jax.config import UNetConfig
    from unet_jax.training.memory_plan import StepLayout

    points = []
    for path in sorted(RESULTS.glob("cpu-*/memory.json")):
        measured = json.loads(path.read_text())
        result = measured["result"]
        if not result["config"].startswith("UNetConfig(") or result["config"] != str(UNetConfig()):
            continue  # only the default (seed) network's file names its config in a form read back here
        for row in result["rows"]:
            if "compiled_temp_bytes" not in row:
                continue
            layout = StepLayout(UNetConfig(), result["size"], result["size"], result["batch"], row["dtype"], row["remat"],
                                backend="cpu")
            points.append({"layout": layout, "temp": row["compiled_temp_bytes"], "file": str(path.relative_to(RESULTS.parent.parent)),
                           "device": measured["device"]["name"], "jax": measured["versions"].get("jax")})
    return points


def step_buffers(memory) -> int:
    """What a compiled step's temporaries hold by the estimate: gradients, kept activations, the rest."""
    return memory.gradients + memory.kept + memory.temporaries


def gpu_ratio(point: dict) -> float:
    """What the GPU factor would have to be for this point: (temporaries - gradients) / kept activations."""
    from unet_jax.training.memory_plan import estimate

    memory = estimate(point["layout"])
    return (point["temp"] - memory.gradients) / memory.kept


def _describe(layout) -> str:
    model = layout.model
    return (f"f{model.features} d{model.depth} {model.padding} norm={model.norm} {layout.tile_size}px b{layout.batch_size} "
            f"{layout.dtype} remat={layout.remat}{' pinned' if layout.pin_relu_output else ''}")


def main(argv=None) -> None:
    from unet_jax.runtime import xla_cpu

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--cpu", action="store_true", help="also compile the CPU configs on this machine (minutes)")
    args = parser.parse_args(argv)
    xla_cpu.apply()  # as `unet-jax` runs: the figures are those of its XLA:CPU flags
    from unet_jax.training.memory_plan import estimate

    print("GPU (committed results): fitted factor = (temporaries - gradients) / kept activations")
    for point in sorted(gpu_points() + gpu_compiled_points(), key=lambda p: (not p["fit"], _describe(p["layout"]))):
        total = estimate(point["layout"]).total
        print(f"  {'fit ' if point['fit'] else 'held'} {_describe(point['layout']):<48} ratio {gpu_ratio(point):.3f}  "
              f"estimate {total / 2**30:7.3f} GiB  {point['peak_source']} {point['peak'] / 2**30:7.3f} GiB  "
              f"{100 * (total / point['peak'] - 1):+5.1f}%  ({point['file']})")
    print("CPU (committed benchmarks.memory results, temporaries only; held out)")
    for point in cpu_committed_points():
        buffers = step_buffers(estimate(point["layout"]))
        print(f"  held {_describe(point['layout']):<48} estimate {buffers / 2**30:7.3f} GiB  compiled temporaries "
              f"{point['temp'] / 2**30:7.3f} GiB  {100 * (buffers / point['temp'] - 1):+5.1f}%  ({point['file']})")
    if not args.cpu:
        return
    print("CPU (compiled here): fitted factor = (temporaries - gradients) / feature maps")
    ratios: dict[tuple, list[float]] = {}
    for label, configs in (("fit ", FIT_CONFIGS), ("held", HELD_OUT_CONFIGS)):
        for config in configs:
            layout = cpu_layout(config)
            figures = compiled_cpu_step(layout)
            ratio = cpu_ratio(layout, figures["temp"])
            if label == "fit ":
                ratios.setdefault((layout.dtype, layout.model.norm), []).append(ratio)
            total = estimate(layout).total
            print(f"  {label} {_describe(layout):<48} ratio {ratio:.3f}  estimate {total / 2**20:8.1f} MiB  "
                  f"compiled {figures['compiled'] / 2**20:8.1f} MiB  {100 * (total / figures['compiled'] - 1):+5.1f}%", flush=True)
    for (dtype, norm), values in ratios.items():
        print(f"  fitted CPU factor, {dtype}, norm {norm}: median {statistics.median(values):.3f} of {len(values)} fit configs")


if __name__ == "__main__":
    main()
