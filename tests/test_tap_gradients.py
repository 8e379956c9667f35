"""The 3x3 convolutions' input gradient as nine matmuls against the stored kernel, where the kernel
outweighs the activations (`layers.conv_with_tap_gradients`): the convolution's values and both
gradients, in float64 to 1e-12 (a wrong tap, shift or kernel orientation is an O(1) error), and
the choice between the two forms."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax import lax

from unet_jax import layers


def _gradients(conv, x, kernel, padding, dims):
    def loss(x, kernel):
        return jnp.sum(jnp.sin(conv(x, kernel, (1, 1), padding, (1, 1), (1, 1), dims)))

    return jax.jit(jax.value_and_grad(loss, argnums=(0, 1)))(x, kernel)


# (batch, side, in, out channels): one where the kernel outweighs the zero-padded output
# gradient 32x (VALID) and 18x (SAME), so taps; one where it does not.
SHAPES = [(1, 4, 128, 4), (2, 20, 2, 3)]


def _input_gradient_in_jaxpr(batch, size, channels, out_channels):
    x = jnp.ones((batch, size, size, channels), jnp.float32)
    kernel = jnp.ones((3, 3, channels, out_channels), jnp.float32)
    grad = jax.grad(lambda x: jnp.sum(layers.conv_with_tap_gradients(x, kernel, (1, 1), "VALID")))
    return str(jax.make_jaxpr(grad)(x))


@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("padding", ["VALID", "SAME"])
def test_values_and_gradients_are_the_convolutions(shape, padding):
    batch, size, channels, out_channels = shape
    rng = np.random.default_rng(0)
    with jax.enable_x64(True):
        x = jnp.asarray(rng.standard_normal((batch, size, size, channels)))
        kernel = jnp.asarray(rng.standard_normal((3, 3, channels, out_channels)))
        dims = lax.conv_dimension_numbers(x.shape, kernel.shape, ("NHWC", "HWIO", "NHWC"))
        expected = _gradients(lax.conv_general_dilated, x, kernel, padding, dims)
        got = _gradients(layers.conv_with_tap_gradients, x, kernel, padding, dims)
        for g, e in zip(jax.tree.leaves(got), jax.tree.leaves(expected)):
            assert g.dtype == jnp.float64
            np.testing.assert_allclose(g, e, rtol=0, atol=1e-12)


def test_taps_only_where_the_kernel_outweighs_the_padded_gradient():
    assert "dot_general" in _input_gradient_in_jaxpr(*SHAPES[0])
    assert "dot_general" not in _input_gradient_in_jaxpr(*SHAPES[1])


def test_float32_and_bfloat16_gradients_accumulate_in_float32():
    rng = np.random.default_rng(1)
    x = jnp.asarray(rng.standard_normal((1, 4, 4, 128)), jnp.float32)  # taps: the kernel outweighs it 32x
    kernel = jnp.asarray(rng.standard_normal((3, 3, 128, 64)), jnp.float32)
    dims = lax.conv_dimension_numbers(x.shape, kernel.shape, ("NHWC", "HWIO", "NHWC"))
    with jax.default_matmul_precision("highest"):
        _, (dx, _) = _gradients(lax.conv_general_dilated, x, kernel, "VALID", dims)
        _, (got, _) = _gradients(layers.conv_with_tap_gradients, x, kernel, "VALID", dims)
        np.testing.assert_allclose(got, dx, rtol=0, atol=1e-4)
        _, (got16, _) = _gradients(layers.conv_with_tap_gradients, x.astype(jnp.bfloat16), kernel.astype(jnp.bfloat16),
                                   "VALID", dims)
    assert got16.dtype == jnp.bfloat16
