"""The first convolution's forward pass as multiply-adds (`cpu_kernels.few_channel_conv`): the same
function as `lax.conv_general_dilated`, the same gradients, and used by the model in inference
where its input has few channels. The float64 comparisons show a wrong tap, offset or padding as an O(1) error."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax import lax

from unet_jax import UNet, UNetConfig
from unet_jax.model import cpu_kernels


def _conv_inputs(channels, dtype, seed=0):
    rng = np.random.default_rng(seed)
    x = jnp.asarray(rng.standard_normal((2, 9, 11, channels)), dtype)
    kernel = jnp.asarray(rng.standard_normal((3, 3, channels, 5)), dtype)
    return x, kernel, lax.conv_dimension_numbers(x.shape, kernel.shape, ("NHWC", "HWIO", "NHWC"))


@pytest.mark.parametrize("channels", [1, 2, 3, 4])
@pytest.mark.parametrize("padding", ["VALID", "SAME", ((1, 0), (2, 1))])
def test_values_are_the_convolutions(channels, padding):
    with jax.enable_x64(True):
        x, kernel, dims = _conv_inputs(channels, jnp.float64)
        expected = lax.conv_general_dilated(x, kernel, (1, 1), padding, dimension_numbers=dims)
        got = cpu_kernels.few_channel_conv(x, kernel, (1, 1), padding, (1, 1), (1, 1), dims)
        assert got.dtype == jnp.float64 and got.shape == expected.shape
        np.testing.assert_allclose(got, expected, rtol=0, atol=1e-12)


def test_float32_and_bfloat16_accumulate_in_float32():
    x, kernel, dims = _conv_inputs(3, jnp.float32)
    expected = lax.conv_general_dilated(x, kernel, (1, 1), "VALID", dimension_numbers=dims,
                                        precision=lax.Precision.HIGHEST)
    np.testing.assert_allclose(cpu_kernels.few_channel_conv(x, kernel, (1, 1), "VALID", dimension_numbers=dims), expected,
                               rtol=0, atol=1e-5)  # measured 1.9e-6 on values up to 19 (jax 0.10.2, this CPU)
    x16, kernel16 = x.astype(jnp.bfloat16), kernel.astype(jnp.bfloat16)
    exact = lax.conv_general_dilated(x16.astype(jnp.float32), kernel16.astype(jnp.float32), (1, 1), "VALID",
                                     dimension_numbers=dims, precision=lax.Precision.HIGHEST)
    got = cpu_kernels.few_channel_conv(x16, kernel16, (1, 1), "VALID", dimension_numbers=dims)
    assert got.dtype == jnp.bfloat16
    # One rounding to bfloat16 at the end, at most 2^-8 relative (measured 3.8e-3), not one per addition.
    np.testing.assert_allclose(np.asarray(got, np.float32), exact, rtol=2.0**-8, atol=1e-6)


def test_gradients_are_the_convolutions_bit_for_bit():
    x, kernel, dims = _conv_inputs(1, jnp.float32)

    def loss(conv):
        return lambda x, kernel: jnp.sum(jnp.sin(conv(x, kernel, (1, 1), "VALID", dimension_numbers=dims)))

    expected = jax.grad(loss(lax.conv_general_dilated), argnums=(0, 1))(x, kernel)
    got = jax.jit(jax.grad(loss(cpu_kernels.few_channel_conv), argnums=(0, 1)))(x, kernel)
    for g, e in zip(got, expected):
        np.testing.assert_allclose(g, e, rtol=1e-6, atol=1e-6)


def test_strides_and_dilations_go_to_the_convolution():
    x, kernel, dims = _conv_inputs(2, jnp.float32)
    for strides, dilation in (((2, 1), (1, 1)), ((1, 1), (2, 2))):
        np.testing.assert_array_equal(
            cpu_kernels.few_channel_conv(x, kernel, strides, "VALID", rhs_dilation=dilation, dimension_numbers=dims),
            lax.conv_general_dilated(x, kernel, strides, "VALID", rhs_dilation=dilation, dimension_numbers=dims))


@pytest.mark.parametrize("in_channels, train, multiply_adds", [(1, False, True), (4, False, True), (5, False, False),
                                                             (1, True, False)])
def test_the_model_uses_it_for_its_first_convolution_in_inference_up_to_four_channels(in_channels, train, multiply_adds):
    model = UNet(UNetConfig(features=8, depth=1, in_channels=in_channels))  # every later conv has >= 8 inputs
    x = jnp.zeros((1, 20, 20, in_channels), jnp.float32)
    params = jax.eval_shape(model.init, jax.random.PRNGKey(0), x)
    forward = str(jax.make_jaxpr(lambda p, x: model.apply(p, x, train=train))(params, x))
    assert ("name=_valid_multiply_adds" in forward) == multiply_adds
