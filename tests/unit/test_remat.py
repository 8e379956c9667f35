"""`UNet(remat=...)`: the same parameters, values and gradients under every policy, and less kept
for the backward pass where the policy says so.

XLA:CPU drops the optimisation barriers that keep recomputation apart and then merges the
recomputed ops back into the forward ones, so the compiled step's memory on a CPU does not show
a policy's effect (benchmarks/NOTES.md); what the backward pass is handed does, and is measured
here from `jax.vjp` without computing anything (`benchmarks.memory.kept_for_backward_bytes`).
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from benchmarks.memory import kept_for_backward_bytes
from unet_jax.config import ConfigError, UNetConfig
from unet_jax.model.compute import REMAT_POLICIES, Compute
from unet_jax.model.layers import center_crop
from unet_jax.model.unet import UNet
from unet_jax.training.losses import cross_entropy

SIZE, BATCH = 44, 2


def _inputs(config):
    rng = np.random.default_rng(0)
    images = jnp.asarray(rng.standard_normal((BATCH, SIZE, SIZE, 1)), jnp.float32)  # [N, H, W, C]
    masks = jnp.asarray(rng.integers(0, config.num_classes, (BATCH, SIZE, SIZE)), jnp.int32)
    return images, masks


def _loss_function(model, images, masks, batch_stats):
    def loss(params):
        variables = {"params": params}
        if batch_stats is None:
            logits = model.apply(variables, images, train=True)
        else:
            logits, _ = model.apply({**variables, "batch_stats": batch_stats}, images, train=True, mutable=["batch_stats"])
        return cross_entropy(logits, center_crop(masks, logits.shape[1], logits.shape[2]))

    return loss


@pytest.mark.slow
@pytest.mark.parametrize("norm", [None, "batch"])
def test_every_policy_has_the_same_parameters_loss_and_gradients(norm):
    config = UNetConfig(features=4, depth=2, norm=norm)
    images, masks = _inputs(config)
    reference = None
    for remat in REMAT_POLICIES:
        model = UNet(config, remat=remat)
        variables = jax.jit(model.init)(jax.random.key(0, impl="rbg"), images)
        loss = _loss_function(model, images, masks, variables.get("batch_stats"))
        value, grads = jax.jit(jax.value_and_grad(loss))(variables["params"])
        if reference is None:
            reference = variables, value, grads
            continue
        assert jax.tree.structure(variables) == jax.tree.structure(reference[0]), remat
        for a, b in zip(jax.tree.leaves(variables), jax.tree.leaves(reference[0])):
            np.testing.assert_array_equal(a, b)
        np.testing.assert_allclose(value, reference[1], rtol=1e-6)
        # Recomputation repeats the same float32 ops; fusion may round differently, by ~1e-7
        # of the largest gradient (measured: 0 on this CPU).
        scale = max(float(jnp.abs(g).max()) for g in jax.tree.leaves(reference[2]))
        for a, b in zip(jax.tree.leaves(grads), jax.tree.leaves(reference[2])):
            assert float(jnp.abs(a - b).max()) <= 1e-5 * scale, remat


@pytest.mark.slow
def test_blocks_keep_less_for_the_backward_pass_and_conv_outputs_keep_less_with_batchnorm():
    kept = {(norm, remat): kept_for_backward_bytes(UNet(UNetConfig(features=8, depth=3, norm=norm), remat=remat), BATCH, 92)
            for norm in (None, "batch") for remat in REMAT_POLICIES}
    # Measured (features 8, depth 3, 92 px, batch 2): without norm, none 2.44 MB, blocks 1.58 MB,
    # conv-outputs 3.22 MB (it keeps each block's second conv output beside the block output that
    # the pool and the skip read); with BatchNorm, 5.73, 1.58 and 3.23 MB (the norm's backward
    # reads its input and its centred input; conv-outputs keeps only the conv output).
    for norm in (None, "batch"):
        assert kept[norm, "blocks"] < 0.7 * kept[norm, "none"], kept
        # "dots" (jax's dots_saveable) keeps the conv outputs and the up-convolutions' matmul outputs:
        # measured 3.2241 against 3.2227 MB for conv-outputs (no norm), 3.2255 MB both (BatchNorm).
        assert kept[norm, "conv-outputs"] <= kept[norm, "dots"] < 1.01 * kept[norm, "conv-outputs"], kept
    assert kept["batch", "conv-outputs"] < 0.6 * kept["batch", "none"], kept


def test_unknown_policy_is_refused():
    with pytest.raises(ValueError, match="remat must be one of"):
        UNet(UNetConfig(features=4, depth=2), remat="everything").init(jax.random.key(0), jnp.zeros((1, SIZE, SIZE, 1)))
    with pytest.raises(ConfigError, match="remat"):
        Compute(remat="everything")
