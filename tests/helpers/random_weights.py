"""Random U-Net weights for inference tests, shared by the predict and evaluate tests."""

import jax
import jax.numpy as jnp
import numpy as np

from unet_jax import UNet


def random_variables(config, seed=0):
    """He-scaled kernels, random (not zero) biases and BatchNorm statistics (positive variances),
    so every layer's offset is exercised, drawn with numpy into the shapes `init` makes."""
    size = 16 if config.padding == "same" else config.nearest_valid_input_sizes(60)[1]
    x = jax.ShapeDtypeStruct((1, size, size, config.in_channels), jnp.float32)
    shapes = jax.eval_shape(UNet(config).init, jax.random.key(0), x)
    rng = np.random.default_rng(seed)

    def draw(path, leaf):
        name = jax.tree_util.keystr(path)
        if "num_batches_tracked" in name:
            return np.zeros(leaf.shape, leaf.dtype)
        if "'var'" in name:  # running variances must be positive
            return rng.uniform(0.5, 1.5, leaf.shape).astype(np.float32)
        std = np.sqrt(2 / np.prod(leaf.shape[:-1])) if len(leaf.shape) > 1 else 0.1
        return (std * rng.normal(size=leaf.shape)).astype(np.float32)

    return jax.tree_util.tree_map_with_path(draw, shapes)
