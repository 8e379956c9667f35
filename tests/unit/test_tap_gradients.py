"""The 3x3 convolutions' input gradient as nine matmuls against the stored kernel, where the kernel
outweighs the activations (`cpu_kernels.conv_with_tap_gradients`): the convolution's values and both
gradients, in float64 to 1e-12 (a wrong tap, shift or kernel orientation is an O(1) error), and
the choice between the two forms."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax import lax

from unet_jax.model import cpu_kernels


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
    grad = jax.grad(lambda x: jnp.sum(cpu_kernels.conv_with_tap_gradients(x, kernel, (1, 1), "VALID")))
    return str(jax.make_jaxpr(grad)(x))


@pytest.mark.slow
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
        got = _gradients(cpu_kernels.conv_with_tap_gradients, x, kernel, padding, dims)
        for g, e in zip(jax.tree.leaves(got), jax.tree.leaves(expected)):
            assert g.dtype == jnp.float64
            np.testing.assert_allclose(g, e, rtol=0, atol=1e-12)


def test_taps_only_where_the_kernel_outweighs_the_padded_gradient():
    assert "dot_general" in _input_gradient_in_jaxpr(*SHAPES[0])
    assert "dot_general" not in _input_gradient_in_jaxpr(*SHAPES[1])


@pytest.mark.slow
def test_float32_and_bfloat16_gradients_accumulate_in_float32():
    rng = np.random.default_rng(1)
    x = jnp.asarray(rng.standard_normal((1, 4, 4, 128)), jnp.float32)  # taps: the kernel outweighs it 32x
    kernel = jnp.asarray(rng.standard_normal((3, 3, 128, 64)), jnp.float32)
    dy = jnp.asarray(rng.standard_normal((1, 2, 2, 64)), jnp.float32)

    def input_gradient(conv, x, kernel):
        return jax.vjp(lambda x: conv(x, kernel, (1, 1), "VALID", dimension_numbers=("NHWC", "HWIO", "NHWC")),
                       x)[1](dy.astype(x.dtype))[0]

    with jax.default_matmul_precision("highest"):
        np.testing.assert_allclose(input_gradient(cpu_kernels.conv_with_tap_gradients, x, kernel),
                                   input_gradient(lax.conv_general_dilated, x, kernel),
                                   rtol=0, atol=1e-4)  # measured 9.5e-6 on values up to 36 (jax 0.10.2, this CPU)
    x16, kernel16 = x.astype(jnp.bfloat16), kernel.astype(jnp.bfloat16)
    got = input_gradient(cpu_kernels.conv_with_tap_gradients, x16, kernel16)
    assert got.dtype == jnp.bfloat16
    # XLA's bfloat16 convolution accumulates in float32 and rounds once; so do the taps (measured:
    # bit-identical). Nine partial products summed in bfloat16 miss this by up to 5x in 117 of 128.
    np.testing.assert_allclose(np.asarray(got, np.float32),
                               np.asarray(input_gradient(lax.conv_general_dilated, x16, kernel16), np.float32),
                               rtol=2.0**-7, atol=0)
