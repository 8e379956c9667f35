"""The layers whose semantics must match PyTorch: the 2x2 max-pool (values of nn.max_pool, PyTorch's
gradient, the same gradient jitted and op by op), the ReLU, and what each keeps for the backward pass.

`reshape + max(axis=(2, 4))` fails the jitted-vs-eager check on XLA:CPU (jax 0.10.2) inside a
BatchNorm U-Net (gradients off by 0.17 in float64); this guards the replacement.
"""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from unet_jax import UNet, UNetConfig
from unet_jax.model import cpu_kernels, layers


def test_pool_equals_flax_max_pool():
    x = jnp.asarray(np.random.default_rng(0).standard_normal((2, 8, 6, 3)), jnp.float32)  # [N, H, W, C]
    np.testing.assert_array_equal(cpu_kernels.max_pool_2x2(x), nn.max_pool(x, (2, 2), strides=(2, 2)))


def _saved_for_backward(function, x):
    """Shapes and dtypes of what `jax.vjp(function, x)` keeps for its backward pass (nothing is computed)."""
    residuals = jax.eval_shape(lambda x: jax.vjp(function, x)[1], x)
    return sorted((leaf.shape, str(leaf.dtype)) for leaf in jax.tree.leaves(residuals))


@pytest.mark.parametrize("seed", [0, 1])
def test_pool_gradient_is_torch_max_pool2d_gradient_with_ties(seed):
    # Values from a small set, so that most windows hold ties: PyTorch sends each window's
    # gradient to its first maximum in row-major order; so must we (jnp.maximum splits ties).
    torch = pytest.importorskip("torch")
    rng = np.random.default_rng(seed)
    x = rng.integers(-1, 2, (2, 6, 8, 3)).astype(np.float32)  # [N, H, W, C]
    upstream = rng.standard_normal((2, 3, 4, 3)).astype(np.float32)
    ours = jax.jit(jax.grad(lambda x: (cpu_kernels.max_pool_2x2(x) * upstream).sum()))(jnp.asarray(x))
    x_torch = torch.from_numpy(x).permute(0, 3, 1, 2).requires_grad_()  # [N, C, H, W]
    (torch.nn.functional.max_pool2d(x_torch, 2) * torch.from_numpy(upstream).permute(0, 3, 1, 2)).sum().backward()
    np.testing.assert_array_equal(np.asarray(ours), x_torch.grad.permute(0, 2, 3, 1).numpy())


def test_relu_values_and_gradient_are_nn_relu():
    x = jnp.asarray([[-2.0, -0.0, 0.0, 1e-30, 3.0]], jnp.float32)
    np.testing.assert_array_equal(cpu_kernels.relu(x), nn.relu(x))
    np.testing.assert_array_equal(jax.grad(lambda x: cpu_kernels.relu(x).sum())(x), jax.grad(lambda x: nn.relu(x).sum())(x))
    np.testing.assert_array_equal(jax.grad(lambda x: cpu_kernels.relu(x).sum())(x), [[0, 0, 0, 1, 1]])


def test_relu_and_pool_keep_one_tensor_for_the_backward_pass():
    # The ReLU keeps its output (the next conv keeps it too); the pool keeps its input (the
    # block's output, which the skip connection keeps). nn.relu keeps a mask beside another tensor.
    x = jnp.zeros((2, 8, 6, 3), jnp.float32)
    assert _saved_for_backward(cpu_kernels.relu, x) == [((2, 8, 6, 3), "float32")]
    assert _saved_for_backward(cpu_kernels.max_pool_2x2, x) == [((2, 8, 6, 3), "float32")]
    assert len(_saved_for_backward(nn.relu, x)) == 2


@pytest.mark.slow
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


@pytest.mark.slow
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
