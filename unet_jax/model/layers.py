"""Small building blocks of the Flax U-Net whose semantics must match PyTorch exactly.

How XLA:CPU computes some of them fast is apart, in `unet_jax.model.cpu_kernels`."""

from __future__ import annotations

from typing import Any

import flax.linen as nn
import jax.numpy as jnp
from flax.linen.dtypes import promote_dtype
from jax import lax


def at_least_float32(dtype):
    """float64 for float64, else float32: the precision of BatchNorm statistics and of logits.

    Spelled out rather than `jnp.promote_types(dtype, float32)`, which JAX's strict dtype
    promotion (the tests run under it) refuses for bfloat16."""
    return jnp.float64 if jnp.dtype(dtype) == jnp.float64 else jnp.float32


class UpConv2x2(nn.Module):
    """The 2x2 stride-2 "up-convolution" as one matmul and a depth-to-space.

    Its 2x2 windows don't overlap, so every output pixel receives exactly one kernel tap:
    out[n, 2i+a, 2j+b, o] = bias[o] + sum_c x[n, i, j, c] K'[a, b, c, o]. That is a [C] x [C, 4*O]
    product per input pixel, rearranged. `nn.ConvTranspose` computes the same thing as a
    convolution of the input dilated by 2, which XLA:CPU runs as a slow generic
    "convolution-base-dilated" (3 up-convs, under 2% of the demo network's FLOPs, took 16% of its
    train step; benchmarks/NOTES.md). Parameters are exactly `nn.ConvTranspose`'s, kernel
    (2, 2, in, out) and bias (out,), in its convention (K' is K flipped in both spatial axes,
    since `nn.ConvTranspose` does not flip), so checkpoints and `unet_jax.weights.port` are unchanged.
    """

    features: int
    kernel_init: Any = nn.initializers.lecun_normal()
    dtype: Any = jnp.float32
    param_dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x):
        n, h, w, c = x.shape
        kernel = self.param("kernel", self.kernel_init, (2, 2, c, self.features), self.param_dtype)
        bias = self.param("bias", nn.initializers.zeros, (self.features,), self.param_dtype)
        x, kernel, bias = promote_dtype(x, kernel, bias, dtype=self.dtype)
        y = jnp.einsum("nhwc,abco->nhawbo", x, kernel[::-1, ::-1])  # [N, h, 2, w, 2, O]
        return y.reshape(n, 2 * h, 2 * w, self.features) + per_channel(bias)


def center_crop(x, height: int, width: int):
    """The centre `height x width` window of axes 1 and 2: the paper's copy-and-crop of a skip
    `[N, H, W, C]`, and the label crop of masks `[N, H, W]` to the logits' size."""
    top = (x.shape[1] - height) // 2
    left = (x.shape[2] - width) // 2
    return x[:, top : top + height, left : left + width]


class BatchNorm(nn.Module):
    """BatchNorm2d with PyTorch's semantics, so ported statistics keep their meaning.

    Differs from `flax.linen.BatchNorm` in one way that matters for parity: the running
    variance is updated with the *unbiased* batch variance (n / (n - 1)), as PyTorch does;
    normalisation itself uses the biased variance in both. `momentum` is PyTorch's
    (running = (1 - momentum) * running + momentum * batch), i.e. Flax's 0.9 is 0.1 here.
    `num_batches_tracked` is kept only so that torch -> flax -> torch is lossless.
    """

    momentum: float = 0.1
    epsilon: float = 1e-5
    dtype: Any = None
    param_dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x, train: bool):
        channels = x.shape[-1]
        stats_dtype = at_least_float32(self.param_dtype)  # float32 under bf16, float64 for references
        scale = self.param("scale", nn.initializers.ones, (channels,), self.param_dtype)
        bias = self.param("bias", nn.initializers.zeros, (channels,), self.param_dtype)
        running_mean = self.variable("batch_stats", "mean", jnp.zeros, (channels,), stats_dtype)
        running_var = self.variable("batch_stats", "var", jnp.ones, (channels,), stats_dtype)
        batches_tracked = self.variable("batch_stats", "num_batches_tracked", jnp.zeros, (), jnp.int32)

        if train:
            wide = jnp.float64 if jnp.float64 in (x.dtype, stats_dtype) else jnp.float32  # never bf16
            x_wide = x.astype(wide)
            mean = x_wide.mean(axis=(0, 1, 2))  # [C]
            var = jnp.square(x_wide - per_channel(mean)).mean(axis=(0, 1, 2))
            if not self.is_initializing():
                count = x.size // channels
                running_mean.value = (1 - self.momentum) * running_mean.value + self.momentum * mean
                running_var.value = (1 - self.momentum) * running_var.value + self.momentum * var * (
                    count / max(count - 1, 1)
                )
                batches_tracked.value = batches_tracked.value + 1
        else:
            mean, var = running_mean.value, running_var.value

        dtype = self.dtype or x.dtype
        multiplier = (lax.rsqrt(var + self.epsilon) * scale.astype(var.dtype)).astype(dtype)  # in the statistics dtype
        return (x - per_channel(mean.astype(dtype))) * per_channel(multiplier) + per_channel(bias.astype(dtype))


def per_channel(vector):
    """[C] -> [1, 1, 1, C]: broadcast against NHWC maps explicitly (no implicit rank promotion)."""
    return vector.reshape(1, 1, 1, -1)
