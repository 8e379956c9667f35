"""The up-convolution convention: PyTorch's ConvTranspose2d vs Flax's ConvTranspose.

With a kernel that is symmetric in H or W a missing flip would go unnoticed, so the kernel is
`arange` (every entry different) and the input is not square. Inputs and weights are small
integers, so every product and sum is exact in float32 and equality can be exact.
"""

from __future__ import annotations

import flax.linen as nn
import jax.numpy as jnp
import numpy as np
import torch

from parity_tests import harness
from unet_jax.weights.port import PARAMS

IN_CHANNELS, OUT_CHANNELS = 3, 2
WEIGHT = np.arange(IN_CHANNELS * OUT_CHANNELS * 4, dtype=np.float32).reshape(IN_CHANNELS, OUT_CHANNELS, 2, 2)
BIAS = np.array([0.5, -1.0], np.float32)
IMAGES = np.random.default_rng(0).integers(-3, 4, (2, 3, 4, IN_CHANNELS)).astype(np.float32)  # [N, H, W, C]

KERNEL_PARAM, BIAS_PARAM = PARAMS["conv_transpose"]


def by_formula(x: np.ndarray, w: np.ndarray, bias: np.ndarray) -> np.ndarray:
    """out[n, 2i+a, 2j+b, o] = sum_c x[n, i, j, c] * W[c, o, a, b] + bias[o]  (NHWC)."""
    n, h, width, _ = x.shape
    out = np.zeros((n, 2 * h, 2 * width, w.shape[1]), np.float64)
    for a in range(2):
        for b in range(2):
            out[:, a::2, b::2, :] = np.einsum("nijc,co->nijo", x, w[:, :, a, b])
    return out + bias


def torch_conv_transpose(x: np.ndarray) -> np.ndarray:
    layer = torch.nn.ConvTranspose2d(IN_CHANNELS, OUT_CHANNELS, kernel_size=2, stride=2)
    with torch.no_grad():
        layer.weight.copy_(torch.from_numpy(WEIGHT))
        layer.bias.copy_(torch.from_numpy(BIAS))
        return harness.to_nhwc(layer(torch.from_numpy(harness.to_nchw(x))).numpy())


def flax_conv_transpose(x: np.ndarray, kernel: np.ndarray) -> np.ndarray:
    layer = nn.ConvTranspose(OUT_CHANNELS, (2, 2), strides=(2, 2), padding="VALID")
    with harness.precision("strict"):
        params = {"kernel": jnp.asarray(kernel), "bias": jnp.asarray(BIAS_PARAM.to_flax(BIAS))}
        return np.asarray(layer.apply({"params": params}, jnp.asarray(x)))


def test_weight_is_not_symmetric():
    assert not np.array_equal(WEIGHT, WEIGHT[:, :, ::-1, :]) and not np.array_equal(WEIGHT, WEIGHT[:, :, :, ::-1])


def test_torch_matches_the_formula():
    np.testing.assert_array_equal(torch_conv_transpose(IMAGES), by_formula(IMAGES, WEIGHT, BIAS))


def test_flax_with_the_ported_kernel_matches_torch_and_the_formula():
    out = flax_conv_transpose(IMAGES, KERNEL_PARAM.to_flax(WEIGHT))
    assert out.shape == (2, 6, 8, OUT_CHANNELS)
    np.testing.assert_array_equal(out, by_formula(IMAGES, WEIGHT, BIAS))
    np.testing.assert_array_equal(out, torch_conv_transpose(IMAGES))


def test_the_port_flips_and_unflips():
    kernel = KERNEL_PARAM.to_flax(WEIGHT)
    assert kernel.shape == (2, 2, IN_CHANNELS, OUT_CHANNELS)  # (kH, kW, in, out)
    np.testing.assert_array_equal(kernel, WEIGHT.transpose(2, 3, 0, 1)[::-1, ::-1])
    np.testing.assert_array_equal(KERNEL_PARAM.to_torch(kernel), WEIGHT)


def test_without_the_flip_flax_disagrees():
    """The check above can fail: an unflipped kernel (only the axis transpose) is wrong."""
    out = flax_conv_transpose(IMAGES, WEIGHT.transpose(2, 3, 0, 1))
    assert np.abs(out - by_formula(IMAGES, WEIGHT, BIAS)).max() > 1.0
    flipped_by_flax = nn.ConvTranspose(OUT_CHANNELS, (2, 2), strides=(2, 2), padding="VALID", transpose_kernel=True)
    # Flax's own transpose_kernel=True also flips, but expects (kH, kW, out, in): the same numbers.
    params = {"kernel": jnp.asarray(WEIGHT.transpose(2, 3, 1, 0)), "bias": jnp.asarray(BIAS)}
    with harness.precision("strict"):
        np.testing.assert_array_equal(
            np.asarray(flipped_by_flax.apply({"params": params}, jnp.asarray(IMAGES))), by_formula(IMAGES, WEIGHT, BIAS)
        )
