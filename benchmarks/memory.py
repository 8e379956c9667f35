"""What the train step's memory holds, and why: `python -m benchmarks.memory --out DIR`.

For one network, tile and batch (default: the seed network at 572 px, batch 16), in float32
and bfloat16, under each `UNet(remat=...)` policy:

- `needed_bytes`: the activations that backpropagation must keep, counted from the layer list
  (`needed_activation_elements`): every convolution's input (its weight gradient reads it) and
  every max-pool's input (its gradient reads it), once each, in the compute dtype. PyTorch keeps
  this set too (plus the pools' int64 indices).
- `kept_bytes`: what JAX hands the backward pass, read from `jax.vjp`'s residuals under
  `jax.eval_shape`: shapes only, nothing is computed or allocated. It includes the weights the
  input gradients read (at most `parameter_bytes`).
- `compiled_temp_bytes`: the compiled train step's temporary buffers
  (`jit(step).lower(...).compile().memory_analysis()`), the figure that peak device memory follows
  (peak = temporaries + arguments + outputs, less what donation aliases). It is the backend's
  own: on XLA:CPU, bfloat16 convolutions run in float32 and remat's recomputation is merged back
  into the forward pass (benchmarks/NOTES.md), so only a GPU shows those two effects.

    python -m benchmarks.memory --out benchmarks/results/cpu-amd-epyc
    python -m benchmarks.memory --features 8 --depth 3 --size 92 --batch 2 --out /tmp/mem   # seconds
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import jax
import jax.numpy as jnp

from benchmarks.devices import write_measurement
from benchmarks.jax_state import seed_train_state
from unet_jax.config import UNetConfig
from unet_jax.model.compute import REMAT_POLICIES
from unet_jax.model.unet import UNet
from unet_jax.training.losses import cross_entropy
from unet_jax.training.memory_plan import residual_bytes
from unet_jax.training.step import make_train_step

GiB = 2**30
DTYPES = {"float32": jnp.float32, "bfloat16": jnp.bfloat16}


def needed_activation_elements(config: UNetConfig, input_size: int) -> int:
    """Elements per image that backpropagation must keep: each conv's input and each pool's input.

    Walks the network as `UNet.__call__` does. The tensors are distinct: a pool's input (the
    block output) is no conv's input (the next conv reads the pooled map, the decoder a cropped
    copy inside the concatenation).
    """
    shrink = config.conv_shrink
    side, channels, total = input_size, config.in_channels, 0
    skip_channels = []

    def block(channels_out: int):
        nonlocal side, channels, total
        for _ in (1, 2):
            total += side * side * channels  # the conv's input
            side, channels = side - shrink, channels_out

    for level in range(1, config.depth + 1):
        block(config.channels(level - 1))
        total += side * side * channels  # the pool's input
        skip_channels.append(channels)
        side //= 2
    block(config.channels(config.depth))
    for step in range(1, config.depth + 1):
        total += side * side * channels  # the up-convolution's input
        side, channels = 2 * side, config.channels(config.depth - step) + skip_channels[config.depth - step]
        block(config.channels(config.depth - step))
    return total + side * side * channels  # the head's input


def _zeros_like_shapes(tree):
    return jax.tree.map(lambda s: jnp.zeros(s.shape, s.dtype), tree)


def kept_for_backward_bytes(model: UNet, batch: int, size: int) -> int:
    """Bytes of the residuals `jax.vjp` of the train step's loss keeps (shapes only)."""
    return residual_bytes(model, batch, size, size)


def compiled_temp_bytes(model: UNet, batch: int, size: int) -> tuple[int, float]:
    """(temporary bytes of the compiled train step, compile seconds); the state is abstract."""
    state = jax.eval_shape(lambda: seed_train_state(model, size))
    images = jax.ShapeDtypeStruct((batch, size, size, model.config.in_channels), jnp.float32)
    masks = jax.ShapeDtypeStruct((batch, size, size), jnp.int32)
    start = time.perf_counter()
    compiled = make_train_step(cross_entropy).lower(state, images, masks).compile()
    return int(compiled.memory_analysis().temp_size_in_bytes), time.perf_counter() - start


def measure(config: UNetConfig, size: int, batch: int, dtypes, policies, compile_step: bool) -> dict:
    parameters = jax.eval_shape(UNet(config).init, jax.random.key(0), jnp.zeros((1, size, size, config.in_channels)))
    parameter_bytes = sum(leaf.size * leaf.dtype.itemsize for leaf in jax.tree.leaves(parameters["params"]))
    rows = []
    for dtype in dtypes:
        needed = batch * needed_activation_elements(config, size) * jnp.dtype(DTYPES[dtype]).itemsize
        for remat in policies:
            model = UNet(config, dtype=DTYPES[dtype], remat=remat)
            row = {"dtype": dtype, "remat": remat, "needed_bytes": needed,
                   "kept_bytes": kept_for_backward_bytes(model, batch, size)}
            if compile_step:
                row["compiled_temp_bytes"], row["compile_s"] = compiled_temp_bytes(model, batch, size)
            rows.append(row)
            print({k: (_gib(v) if k.endswith("bytes") else v) for k, v in row.items()}, flush=True)
    return {"config": str(config), "size": size, "batch": batch, "parameter_bytes": parameter_bytes, "rows": rows}


def _gib(size: int) -> str:
    return f"{size / GiB:.3g}"


def to_markdown(report: dict) -> str:
    result, device = report["result"], report["device"]
    versions = ", ".join(f"{k} {report['versions'].get(k)}" for k in ("jax", "jaxlib", "flax"))
    lines = [
        f"# Train-step memory: {result['config']}, {result['size']} px, batch {result['batch']}", "",
        f"{device['name']} ({device['kind']}), {versions}, {report['measured_utc']}; "
        f"`{report['command']}`. Parameters: {_gib(result['parameter_bytes'])} GiB.", "",
        "| dtype | remat | needed by backprop (GiB) | kept by JAX (GiB) | compiled temporaries (GiB) |",
        "| --- | --- | ---: | ---: | ---: |",
    ]
    for row in result["rows"]:
        temp = row.get("compiled_temp_bytes")
        lines.append(f"| {row['dtype']} | {row['remat']} | {_gib(row['needed_bytes'])} | {_gib(row['kept_bytes'])} | "
                     + (_gib(temp) if temp is not None else "not compiled") + " |")
    lines += ["", "needed: every conv's and pool's input, once each, in the compute dtype; kept: `jax.vjp` residuals "
              "(weights included); temporaries: `memory_analysis()` of the compiled step on this backend "
              "(XLA:CPU runs bfloat16 convolutions in float32 and merges remat's recomputation away).", ""]
    return "\n".join(lines)


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, required=True, help="directory for memory.json and memory.md")
    parser.add_argument("--features", type=int, default=64)
    parser.add_argument("--depth", type=int, default=4)
    parser.add_argument("--norm", choices=["none", "batch"], default="none")
    parser.add_argument("--size", type=int, default=572)
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--dtypes", nargs="+", choices=list(DTYPES), default=list(DTYPES))
    parser.add_argument("--remat", nargs="+", choices=REMAT_POLICIES, default=list(REMAT_POLICIES))
    parser.add_argument("--no-compile", action="store_true", help="skip the compiled step (residuals only: seconds)")
    args = parser.parse_args(argv)
    config = UNetConfig(features=args.features, depth=args.depth, norm=None if args.norm == "none" else args.norm)
    config.check_input_size(args.size, args.size)
    result = measure(config, args.size, args.batch, args.dtypes, args.remat, not args.no_compile)
    command = "python -m benchmarks.memory " + " ".join(sys.argv[1:] if argv is None else argv)
    write_measurement(args.out, "memory", result, to_markdown, command=command)


if __name__ == "__main__":
    main()
