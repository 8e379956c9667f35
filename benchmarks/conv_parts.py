"""Each 3×3 convolution of a network timed alone, in its three parts: forward, input gradient and
weight gradient, in JAX (NHWC, XLA) and in PyTorch (NCHW and channels_last, oneDNN on a CPU).

The train step's standing says *that* one framework is slower; this says which convolution part
costs it (benchmarks/NOTES.md, 2026-12-04 23:30). Each framework runs in its own process, under
the XLA flags `unet-jax` sets (unet_jax.runtime.xla_cpu), random inputs, median of `--reps` calls
after 3 warm-ups:

    python -m benchmarks.conv_parts --features 16 --depth 3 --size 124 --batch 8
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys

from benchmarks.flops import conv_layers
from benchmarks.timing import summarize_ms, timed_calls
from unet_jax.config import UNetConfig

FRAMEWORKS = ("jax", "torch", "torch-cl")
PARTS = ("forward", "input_grad", "weight_grad")


def _shapes(args) -> list[tuple[str, int, int, int]]:
    """(name, input side, channels in, channels out) of each 3×3 convolution, in the model's order."""
    config = UNetConfig(features=args.features, depth=args.depth)
    return [(c.name, c.side + 2, c.in_channels, c.out_channels) for c in conv_layers(config, args.size) if c.taps == 9]


def _timed_row(name: str, calls: dict, reps: int) -> dict:
    """Median ms of each part's call, after 3 untimed ones (compiles, first-touch allocations)."""
    row = {"name": name}
    for part, call in calls.items():
        timed_calls(call, 3)
        row[part] = summarize_ms(timed_calls(call, reps))["median"]
    return row


def _time_jax(shapes, batch: int, reps: int) -> list[dict]:
    from unet_jax.runtime import xla_cpu

    xla_cpu.apply()
    import jax
    from jax import lax

    def conv(x, w):
        return lax.conv_general_dilated(x, w, (1, 1), "VALID", dimension_numbers=("NHWC", "HWIO", "NHWC"))

    forward = jax.jit(conv)
    input_grad = jax.jit(lambda x, w, g: jax.vjp(lambda x: conv(x, w), x)[1](g)[0])
    weight_grad = jax.jit(lambda x, w, g: jax.vjp(lambda w: conv(x, w), w)[1](g)[0])
    rows = []
    for name, side, cin, cout in shapes:
        kx, kw, kg = jax.random.split(jax.random.PRNGKey(0), 3)
        x = jax.random.normal(kx, (batch, side, side, cin))
        w = jax.random.normal(kw, (3, 3, cin, cout))
        g = jax.random.normal(kg, (batch, side - 2, side - 2, cout))
        calls = {"forward": lambda x=x, w=w: forward(x, w).block_until_ready(),
                 "input_grad": lambda x=x, w=w, g=g: input_grad(x, w, g).block_until_ready(),
                 "weight_grad": lambda x=x, w=w, g=g: weight_grad(x, w, g).block_until_ready()}
        rows.append(_timed_row(name, calls, reps))
    return rows


def _time_torch(shapes, batch: int, reps: int, channels_last: bool) -> list[dict]:
    import torch

    generator = torch.Generator().manual_seed(0)
    rows = []
    for name, side, cin, cout in shapes:
        x = torch.randn(batch, cin, side, side, generator=generator)
        w = torch.randn(cout, cin, 3, 3, generator=generator)
        g = torch.randn(batch, cout, side - 2, side - 2, generator=generator)
        if channels_last:
            x, w, g = (t.to(memory_format=torch.channels_last) for t in (x, w, g))

        def backward(mask, x=x, w=w, g=g):  # aten's own entry point: one gradient, nothing else
            torch.ops.aten.convolution_backward(g, x, w, None, [1, 1], [0, 0], [1, 1], False, [0, 0], 1, mask)

        def forward(x=x, w=w):
            with torch.inference_mode():
                torch.nn.functional.conv2d(x, w)

        calls = {"forward": forward, "input_grad": lambda backward=backward: backward([True, False, False]),
                 "weight_grad": lambda backward=backward: backward([False, True, False])}
        rows.append(_timed_row(name, calls, reps))
    return rows


def _child(args) -> None:
    shapes = _shapes(args)
    if args.framework == "jax":
        rows = _time_jax(shapes, args.batch, args.reps)
    else:
        rows = _time_torch(shapes, args.batch, args.reps, channels_last=args.framework == "torch-cl")
    print(json.dumps(rows))


def markdown(results: dict[str, list[dict]]) -> str:
    """One row per convolution: each part's ms in every framework, and the sums."""
    head = ["conv"] + [f"{part} {fw}" for part in PARTS for fw in results]
    lines = ["| " + " | ".join(head) + " |", "| --- |" + " ---: |" * (len(head) - 1)]
    names = [row["name"] for row in next(iter(results.values()))]
    for i, name in enumerate(names):
        cells = [f"{results[fw][i][part]:.2f}" for part in PARTS for fw in results]
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    sums = [f"**{sum(r[part] for r in results[fw]):.1f}**" for part in PARTS for fw in results]
    lines.append("| sum | " + " | ".join(sums) + " |")
    return "\n".join(lines)


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--features", type=int, default=16)
    parser.add_argument("--depth", type=int, default=3)
    parser.add_argument("--size", type=int, default=124, help="input tile side")
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--reps", type=int, default=30, help="timed calls per part (median)")
    parser.add_argument("--framework", choices=FRAMEWORKS, help="time one framework in this process and print JSON")
    args = parser.parse_args(argv)
    if args.framework:
        return _child(args)
    common = [f"--features={args.features}", f"--depth={args.depth}", f"--size={args.size}", f"--batch={args.batch}",
              f"--reps={args.reps}"]
    results = {}
    for framework in FRAMEWORKS:  # one process each: neither framework's threads or allocator sees the other's
        out = subprocess.run([sys.executable, "-m", "benchmarks.conv_parts", *common, f"--framework={framework}"],
                             capture_output=True, text=True, check=True, env=os.environ)
        results[framework] = json.loads(out.stdout.strip().splitlines()[-1])
    print(markdown(results))


if __name__ == "__main__":
    main()
