"""`UNet(pin_relu_output=True)` (`--pin-relu-output`): the same values and gradients as the default, in
float32 and bfloat16, and the barrier really reaches the compiled step (an option that silently did
nothing would pass the first test alone). What it is for, fewer temporaries on a GPU, shows only in
a GPU compile: benchmarks/results/gpu-aot-h200/."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from unet_jax.config import UNetConfig
from unet_jax.model.layers import center_crop
from unet_jax.model.unet import UNet
from unet_jax.training.losses import cross_entropy

CONFIG, SIZE = UNetConfig(features=4, depth=2), 44


def _loss_and_gradients(model, images, masks):
    params = model.init(jax.random.key(0), images[:1])["params"]

    def loss(params):
        logits = model.apply({"params": params}, images, train=True)
        return cross_entropy(logits, center_crop(masks, logits.shape[1], logits.shape[2]))

    return jax.jit(jax.value_and_grad(loss)), params


@pytest.mark.parametrize("dtype", [jnp.float32, jnp.bfloat16])
def test_pinned_relu_output_gives_the_same_loss_and_gradients(dtype):
    rng = np.random.default_rng(0)
    images = jnp.asarray(rng.standard_normal((2, SIZE, SIZE, 1)), jnp.float32)
    masks = jnp.asarray(rng.integers(0, 2, (2, SIZE, SIZE)), jnp.int32)
    plain, params = _loss_and_gradients(UNet(CONFIG, dtype=dtype), images, masks)
    pinned, _ = _loss_and_gradients(UNet(CONFIG, dtype=dtype, pin_relu_output=True), images, masks)
    (loss, grads), (pinned_loss, pinned_grads) = plain(params), pinned(params)
    # The same operations in the same order on this CPU: bit for bit (the barrier only keeps a buffer).
    assert float(loss) == float(pinned_loss)
    for a, b in zip(jax.tree.leaves(grads), jax.tree.leaves(pinned_grads)):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))


def test_the_barrier_reaches_the_lowered_step():
    images, masks = jnp.zeros((1, SIZE, SIZE, 1)), jnp.zeros((1, SIZE, SIZE), jnp.int32)
    texts = {}
    for pinned in (False, True):
        step, params = _loss_and_gradients(UNet(CONFIG, pin_relu_output=pinned), images, masks)
        texts[pinned] = step.lower(params).as_text()
    blocks = 2 * CONFIG.depth + 1  # down blocks, the bottom, up blocks: two ReLUs each
    assert texts[False].count("optimization_barrier") == 0
    assert texts[True].count("optimization_barrier") == 2 * blocks
