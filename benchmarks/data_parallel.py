"""What data parallelism costs: the gradient all-reduce of a network, and the step time against the
device count.

- `allreduce`: the bytes one data-parallel step all-reduces (every parameter's float32 gradient;
  BatchNorm statistics add a few KB) and what a ring all-reduce of them takes, 2(N-1)/N times the
  bytes through each device's link, at NVLink 4 (H100 SXM: 900 GB/s total per GPU, 450 GB/s each
  way, NVIDIA's H100 datasheet) and at 100 Gb/s Ethernet (12.5 GB/s). A lower bound: latency,
  protocol overhead and the overlap of the all-reduce with the backward pass are left out.
- `step time vs devices`: the product's sharded train step at one global batch on 1, 2, 4, 8
  devices. On forced CPU devices (XLA_FLAGS=--xla_force_host_platform_device_count=8) these share
  the same cores, so the figures only show that the harness runs; they say nothing about scaling.

    python -m benchmarks.data_parallel --out DIR                 # all-reduce note for the seed network
    XLA_FLAGS=--xla_force_host_platform_device_count=8 python -m benchmarks.data_parallel --out DIR --steps 10
"""

from __future__ import annotations

import argparse
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np

from benchmarks.devices import write_measurement
from benchmarks.jax_state import seed_train_state
from benchmarks.timing import summarize_ms, timed_calls
from unet_jax import UNet, UNetConfig
from unet_jax.data import make_cells, sample_tiles
from unet_jax.data.tiles import TileRequest
from unet_jax.runtime.mesh import DataParallel
from unet_jax.training.losses import make_loss
from unet_jax.training.step import make_train_step

LINKS_GB_PER_S = {"NVLink 4 (H100 SXM, per direction)": 450.0, "100 Gb/s Ethernet": 12.5}
DEVICE_COUNTS = (2, 4, 8)


def parameter_count(config: UNetConfig, input_size: int = 572) -> int:
    shapes = jax.eval_shape(UNet(config).init, jax.random.key(0), jax.ShapeDtypeStruct((1, input_size, input_size, 1), jnp.float32))
    return sum(int(np.prod(leaf.shape)) for leaf in jax.tree.leaves(shapes["params"]))


def allreduce(config: UNetConfig) -> dict:
    """Bytes of one step's gradient all-reduce (float32) and its ring time per link and device count."""
    params = parameter_count(config)
    size = 4 * params  # float32 gradients
    times = {link: {n: 1e3 * 2 * (n - 1) / n * size / (gb_s * 1e9) for n in DEVICE_COUNTS} for link, gb_s in LINKS_GB_PER_S.items()}
    return {"config": str(config), "parameters": params, "gradient_bytes": size, "ring_allreduce_ms": times}


def step_times(config: UNetConfig, tile: int, batch: int, steps: int) -> dict:
    """Median train-step ms at one global batch on 1, 2, 4, ... of the visible devices."""
    label = config.output_size(tile)
    cells = make_cells(8, max(tile, 128), seed=0)
    images, masks = sample_tiles(cells.images, cells.masks, np.random.default_rng(0), TileRequest(batch, tile, label))
    counts = [n for n in (1, *DEVICE_COUNTS) if n <= len(jax.devices()) and batch % n == 0]
    return {"config": str(config), "tile": tile, "global_batch": batch, "steps": steps, "visible_devices": len(jax.devices()),
            "platform": jax.devices()[0].platform, "step_ms": {n: _time_on(n, config, tile, images, masks, steps) for n in counts}}


def _time_on(devices: int, config: UNetConfig, tile: int, images, masks, steps: int) -> dict:
    parallel = DataParallel.create(devices)
    state = parallel.place_state(seed_train_state(UNet(config), tile))
    step = make_train_step(make_loss("ce"), shardings=parallel.step_shardings(state))
    x, y = parallel.put(images), parallel.put(masks)
    holder = {"state": state}

    def one_step():
        holder["state"], metrics = step(holder["state"], x, y)
        jax.block_until_ready(metrics)

    one_step()  # compile
    return summarize_ms(timed_calls(one_step, steps))


def to_markdown(report: dict) -> str:
    r = report["result"]
    note = r["allreduce"]
    lines = [
        "# Data parallelism: gradient all-reduce and step time against devices",
        "",
        f"Measured {report['measured_utc']} on {report['device']['name']} (jax {report['versions'].get('jax')}).",
        "",
        f"**All-reduce per step** ({note['config']}): {note['parameters']:,} parameters, "
        f"{note['gradient_bytes'] / 1e6:.1f} MB of float32 gradients. Ring all-reduce, 2(N-1)/N × bytes per link, "
        "bandwidth only (a lower bound):",
        "",
        "| link | " + " | ".join(f"N = {n}" for n in DEVICE_COUNTS) + " |",
        "| --- |" + " ---: |" * len(DEVICE_COUNTS),
    ]
    for link, times in note["ring_allreduce_ms"].items():
        lines.append(f"| {link} | " + " | ".join(f"{times[n]:.2f} ms" for n in DEVICE_COUNTS) + " |")
    if "steps" in r:
        s = r["steps"]
        lines += ["", f"**Step time against devices — harness check only** ({s['config']}, tile {s['tile']}, global batch "
                  f"{s['global_batch']}, {s['visible_devices']} {s['platform'].upper()} devices; forced CPU devices share the "
                  "same cores, so this shows the harness runs, not how training scales):", "",
                  "| devices | step ms, median (p10–p90) |", "| ---: | ---: |"]
        for n, ms in s["step_ms"].items():
            lines.append(f"| {n} | {ms['median']:.1f} ({ms['p10']:.1f}–{ms['p90']:.1f}) |")
    return "\n".join(lines) + "\n"


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--out", required=True, type=Path)
    parser.add_argument("--steps", type=int, default=0, help="also time this many train steps per device count (default: 0, none)")
    parser.add_argument("--features", type=int, default=16, help="network of the step timing (default: the demo's)")
    parser.add_argument("--depth", type=int, default=3)
    parser.add_argument("--tile", type=int, default=124)
    parser.add_argument("--batch", type=int, default=8)
    args = parser.parse_args(argv)
    result = {"allreduce": allreduce(UNetConfig())}  # the seed network
    if args.steps:
        result["steps"] = step_times(UNetConfig(features=args.features, depth=args.depth), args.tile, args.batch, args.steps)
    write_measurement(args.out, "data_parallel", result, to_markdown)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
