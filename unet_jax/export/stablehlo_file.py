"""StableHLO export through `jax.export`: the Flax network with its weights as constants,
serialised. `jax.export.deserialize(open(path, "rb").read()).call(images)` runs it in any JAX
of a compatible serialisation version, without this project.

The function is NHWC, as the Flax model: image [batch, T, T, C] -> logits [batch, T', T', K],
the batch a symbolic dimension. It is lowered for CPU and CUDA GPUs (the CUDA lowering has not
yet been run on a GPU: tests/e2e/test_export.py runs the CPU one).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from unet_jax.export.check import relative_difference
from unet_jax.export.source import ExportSource
from unet_jax.runtime.safe_files import write_atomically

LAYOUT = "NHWC"
PLATFORMS = ("cpu", "cuda")


def exported_function(source: ExportSource):
    """The `jax.export.Exported` of the network at the source's tile size, batch symbolic."""
    import jax
    import jax.numpy as jnp

    from unet_jax.model.unet import UNet

    model, variables = UNet(source.config), source.variables  # one batch group: a symbolic batch can't be split

    def logits(images):
        # The weights are constants of the program; the barrier keeps XLA from folding them
        # (BatchNorm's scale and shift) into other constants at compile time, which rounds
        # differently from the Flax network that takes them as arguments (7e-9 apart, measured).
        return model.apply(jax.lax.optimization_barrier(variables), images, train=False)

    shape = jax.export.symbolic_shape(f"batch, {source.tile_size}, {source.tile_size}, {source.config.in_channels}")
    return jax.export.export(jax.jit(logits), platforms=PLATFORMS)(jax.ShapeDtypeStruct(shape, jnp.float32))


def write_stablehlo(source: ExportSource, out: Path, overwrite: bool) -> Path:
    return write_atomically(out, bytes(exported_function(source).serialize()), overwrite=overwrite)


def load_stablehlo(path: Path):
    import jax

    return jax.export.deserialize(bytearray(Path(path).read_bytes()))


def check_stablehlo(source: ExportSource, out: Path) -> float:
    """The deserialised file's logits against Flax's, relative to the largest logit."""
    exported = load_stablehlo(out)
    return relative_difference(source, lambda images: np.asarray(exported.call(images)))
