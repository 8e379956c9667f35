"""The 2x2 max-pool: the values of nn.max_pool, and the same gradient jitted and op by op.

`reshape + max(axis=(2, 4))` fails the second check on XLA:CPU (jax 0.10.2) inside a
BatchNorm U-Net (gradients off by 0.17 in float64); this guards the replacement.
"""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from unet_jax import UNet, UNetConfig, layers


def test_pool_equals_flax_max_pool():
    x = jnp.asarray(np.random.default_rng(0).standard_normal((2, 8, 6, 3)), jnp.float32)  # [N, H, W, C]
    np.testing.assert_array_equal(layers.max_pool_2x2(x), nn.max_pool(x, (2, 2), strides=(2, 2)))


def test_batchnorm_unet_gradient_is_the_same_jitted_and_eager():
    config = UNetConfig(features=4, depth=2, norm="batch")
    images = np.random.default_rng(0).standard_normal((2, 44, 44, 1)).astype(np.float32)
    labels = np.random.default_rng(1).integers(0, 2, (2, 4, 4))
    model = UNet(config)
    variables = jax.jit(model.init)(jax.random.key(0, impl="rbg"), images)

    def loss(params):
        logits, _ = model.apply({"params": params, "batch_stats": variables["batch_stats"]}, images, train=True,
                                mutable=["batch_stats"])
        return -jnp.mean(jnp.take_along_axis(jax.nn.log_softmax(logits), labels[..., None], -1))

    eager = jax.grad(loss)(variables["params"])
    jitted = jax.jit(jax.grad(loss))(variables["params"])
    scale = max(float(jnp.abs(g).max()) for g in jax.tree.leaves(eager))
    for a, b in zip(jax.tree.leaves(eager), jax.tree.leaves(jitted)):
        # float32 rounding differs between fused and unfused code by ~1e-7 of the largest gradient
        assert float(jnp.abs(a - b).max()) <= 1e-5 * scale


def test_up_conv_is_flax_conv_transpose_with_the_same_parameters():
    # A non-symmetric kernel and odd sizes: a flipped, transposed or shifted tap would show.
    x = jnp.asarray(np.random.default_rng(1).standard_normal((2, 5, 7, 3)), jnp.float32)  # [N, h, w, C]
    reference = nn.ConvTranspose(4, (2, 2), strides=(2, 2), padding="VALID")
    variables = reference.init(jax.random.key(0), x)
    variables = jax.tree.map(lambda v: v + jnp.arange(v.size, dtype=v.dtype).reshape(v.shape) / v.size, variables)
    expected = reference.apply(variables, x)  # [N, 2h, 2w, O]
    up = layers.UpConv2x2(4)
    assert jax.tree.map(jnp.shape, up.init(jax.random.key(0), x)) == jax.tree.map(jnp.shape, variables)
    with jax.default_matmul_precision("highest"):
        got = jax.jit(up.apply)(variables, x)
    assert got.shape == (2, 10, 14, 4)
    np.testing.assert_allclose(got, expected, rtol=0, atol=1e-6)  # float32 sums of 3 products
