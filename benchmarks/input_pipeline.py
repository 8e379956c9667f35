"""Does the input pipeline keep the device busy? Host tile sampling vs the train step.

The trainer samples batch s+1 on the host while the device runs step s (JAX dispatch is
asynchronous), and augments on the device inside the jitted step. So the device idles only
if host sampling takes longer than a step. This measures, in one process:

- `host_sample_ms`: `sample_tiles` for one batch (random image, mirror-padded crop), numpy;
- `augment_ms`: the on-device flips/rotations alone, jitted, on a device-resident batch;
- `step_ms` / `step_with_augment_ms`: the product's train step without and with augmentation;
- `pipelined_step_ms`: the trainer's loop (sample on host, then dispatch), synchronised only
  at the end, so it shows what the overlap achieves.

    python -m benchmarks.input_pipeline --out DIR [--quick]              # the seed at 572, batch 16
    python -m benchmarks.input_pipeline --out DIR --features 16 --depth 3 --tile 124 --batch 8  # the demo
    python -m benchmarks.input_pipeline --out DIR --host-only   # host sampling alone (seed, 572, batch 16)

`--host-only` measures the host side where the device side is out of reach (the seed's train
step on a CPU) and writes `host_sampling.{json,md}`: to compare with a step time measured on
the accelerator.
"""

from __future__ import annotations

import argparse
import os
import time
from pathlib import Path

import jax
import numpy as np

from benchmarks.devices import write_measurement
from benchmarks.jax_state import seed_train_state
from benchmarks.timing import summarize_ms, timed_calls
from unet_jax import TrainConfig, UNet, UNetConfig
from unet_jax.data import make_cells, sample_tiles
from unet_jax.data.augment import augment
from unet_jax.data.tiles import TileRequest
from unet_jax.training.losses import make_loss
from unet_jax.training.step import make_train_step


def batch_sampler(config: UNetConfig, tile: int, batch: int, image_size: int, threads: int):
    """The trainer's host-side sampling of one batch from synthetic cells, a fresh generator per call."""
    label = config.output_size(tile)
    samples = make_cells(8, image_size, seed=0)
    rngs = iter(np.random.default_rng([0, i]) for i in range(10**6))
    return lambda: sample_tiles(samples.images, samples.masks, next(rngs), TileRequest(batch, tile, label, threads=threads))


def measure_host(config: UNetConfig, tile: int, batch: int, steps: int, image_size: int, threads: int) -> dict:
    """Sampling alone, on one thread and on `threads` (the trainer's --sampling-threads)."""
    timings = {n: summarize_ms(timed_calls(batch_sampler(config, tile, batch, image_size, n), steps))
               for n in sorted({1, threads})}
    return {"config": str(config), "tile": tile, "label": config.output_size(tile), "batch": batch, "steps": steps,
            "image_size": image_size, "threads": threads, "host_cpus": os.cpu_count(),
            "host_sample_ms": timings[threads], "host_sample_ms_by_threads": timings}


def measure(config: UNetConfig, tile: int, batch: int, steps: int, image_size: int, threads: int) -> dict:
    label = config.output_size(tile)
    sample = batch_sampler(config, tile, batch, image_size, threads)
    images, masks = sample()
    device_images, device_masks = jax.device_put(images), jax.device_put(masks)
    jitted_augment = jax.jit(augment)
    key = jax.random.PRNGKey(0)
    jax.block_until_ready(jitted_augment(key, device_images, device_masks))

    result = {
        "config": str(config), "tile": tile, "label": label, "batch": batch, "steps": steps, "threads": threads,
        "host_sample_ms": summarize_ms(timed_calls(sample, steps)),
        "augment_ms": summarize_ms(timed_calls(lambda: jax.block_until_ready(
            jitted_augment(key, device_images, device_masks)), steps)),
    }
    model = UNet(config)
    for name, augment_fn in (("step_ms", None), ("step_with_augment_ms", augment)):
        state = seed_train_state(model, tile)
        step = make_train_step(make_loss("ce"), augment=augment_fn)
        state, metrics = step(state, device_images, device_masks)  # compile
        jax.block_until_ready(metrics)

        def run_step():
            nonlocal state
            state, out = step(state, device_images, device_masks)
            jax.block_until_ready(out)

        result[name] = summarize_ms(timed_calls(run_step, steps))

    def pipelined():  # the trainer's loop: host sampling overlaps the running step
        nonlocal state
        for _ in range(steps):
            x, y = sample()
            state, out = step(state, x, y)
        jax.block_until_ready(out)

    start = time.perf_counter()
    pipelined()
    result["pipelined_step_ms"] = 1e3 * (time.perf_counter() - start) / steps
    device_ms = result["step_with_augment_ms"]["median"]
    result["host_share_of_step"] = result["host_sample_ms"]["median"] / device_ms
    result["pipeline_overhead"] = result["pipelined_step_ms"] / device_ms - 1
    return result


def to_markdown(report: dict) -> str:
    r = report["result"]
    med = lambda k: f"{r[k]['median']:.2f} ({r[k]['p10']:.2f}–{r[k]['p90']:.2f})"  # noqa: E731
    return "\n".join([
        f"# Input pipeline: {report['device']['name']}",
        "",
        f"{r['config']}, {r['tile']}→{r['label']} tiles, batch {r['batch']}, {r['steps']} steps, "
        f"{r.get('threads', 1)} sampling thread(s); "
        f"versions: {', '.join(f'{k} {v}' for k, v in report['versions'].items() if v)}.",
        "",
        "| quantity | ms median (p10–p90) |",
        "| --- | ---: |",
        f"| host: sample one batch of tiles | {med('host_sample_ms')} |",
        f"| device: augment one batch (alone) | {med('augment_ms')} |",
        f"| device: train step, no augmentation | {med('step_ms')} |",
        f"| device: train step with augmentation | {med('step_with_augment_ms')} |",
        f"| trainer loop per step (host sampling overlapped) | {r['pipelined_step_ms']:.2f} |",
        "",
        f"Host sampling is {100 * r['host_share_of_step']:.0f}% of a step; the loop runs "
        f"{100 * r['pipeline_overhead']:+.0f}% against the bare step with augmentation.",
        "",
    ])


def host_markdown(report: dict) -> str:
    r = report["result"]
    ms = r["host_sample_ms"]
    return "\n".join([
        f"# Host tile sampling: {report['device']['name']}",
        "",
        f"{r['config']}, {r['tile']}→{r['label']} tiles from {r['image_size']}×{r['image_size']} synthetic images, "
        f"batch {r['batch']}, {r['steps']} batches, one process; versions: "
        f"{', '.join(f'{k} {v}' for k, v in report['versions'].items() if v)}.",
        "",
        f"Sampling one batch on {r['threads']} thread(s) ({r['host_cpus']} CPUs): **{ms['median']:.2f} ms** median "
        f"(p10–p90 {ms['p10']:.2f}–{ms['p90']:.2f}).",
        "",
        "| threads | ms median (p10–p90) |",
        "| ---: | ---: |",
        *[f"| {n} | {t['median']:.2f} ({t['p10']:.2f}–{t['p90']:.2f}) |" for n, t in r["host_sample_ms_by_threads"].items()],
        "",
    ])


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--out", required=True, type=Path)
    parser.add_argument("--quick", action="store_true", help="tiny network for CI; not a measurement")
    parser.add_argument("--features", type=int, default=64)
    parser.add_argument("--depth", type=int, default=4)
    parser.add_argument("--tile", type=int, default=572)
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--steps", type=int, default=30)
    parser.add_argument("--host-only", action="store_true", help="measure host sampling only (no train step)")
    parser.add_argument("--threads", type=int, default=TrainConfig().sampling_threads,
                        help="sampling threads, as the trainer's --sampling-threads (--host-only also times 1)")
    args = parser.parse_args(argv)
    measure_fn, stem, markdown = (
        (measure_host, "host_sampling", host_markdown) if args.host_only else (measure, "input_pipeline", to_markdown)
    )
    if args.quick:
        result = measure_fn(UNetConfig(features=4, depth=2), tile=60, batch=2, steps=5, image_size=64, threads=args.threads)
    else:  # default: the seed network at the seed's batch, on 700x700 images
        config = UNetConfig(features=args.features, depth=args.depth)
        result = measure_fn(config, tile=args.tile, batch=args.batch, steps=args.steps, image_size=max(700, args.tile),
                            threads=args.threads)
    write_measurement(args.out, stem, result, markdown, quick=args.quick)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
