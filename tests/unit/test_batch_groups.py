"""UNet(batch_groups=G): the same network on G groups of the batch, the same function.

Measured (features 4, depth 1, 30 px, batch 5, 3 groups, jax 0.10.2 CPU): the logits are
bit-identical; the parameter gradients differ by 6.3e-7 of their largest value (the per-group
weight gradients are summed in another order), while the grouped ones are within 4.2e-7 of a float64
reference (the whole batch's: 5.1e-7). Bound: 5e-6.
"""

import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from unet_jax.config import UNetConfig
from unet_jax.model.unet import UNet, default_batch_groups
from unet_jax.runtime import xla_cpu

CFG = UNetConfig(features=4, depth=1)
GRADIENT_TOLERANCE = 5e-6


def _batch():
    return jnp.asarray(np.random.default_rng(0).standard_normal((5, 30, 30, 1)), jnp.float32)


def _max_relative(a, b):
    pairs = zip(jax.tree.leaves(a), jax.tree.leaves(b))
    return max(float(np.max(np.abs(np.float64(u) - np.float64(w))) / np.max(np.abs(np.float64(w)))) for u, w in pairs)


@pytest.mark.slow
def test_groups_share_every_weight_and_give_the_same_logits():
    x = _batch()
    whole, grouped = UNet(CFG), UNet(CFG, batch_groups=3)
    variables = jax.jit(whole.init)(jax.random.key(0), x[:1])
    shapes = jax.eval_shape(grouped.init, jax.random.key(0), x)  # the same parameters, not one set per group
    assert jax.tree.map(lambda a: a.shape, shapes) == jax.tree.map(lambda a: a.shape, variables)
    np.testing.assert_array_equal(jax.jit(grouped.apply)(variables, x), jax.jit(whole.apply)(variables, x))
    assert jax.eval_shape(grouped.apply, variables, x[:2]).shape == (2, 14, 14, 2)  # fewer images than groups


@pytest.mark.slow
def test_grouped_gradients_match_a_float64_reference_as_the_whole_batchs_do():
    x = _batch()
    params = jax.jit(UNet(CFG).init)(jax.random.key(0), x[:1])["params"]

    def gradients(model, params, x):
        return jax.jit(jax.grad(lambda p, x: jnp.sum(jnp.square(model.apply({"params": p}, x)))))(params, x)

    whole = gradients(UNet(CFG), params, x)
    grouped = gradients(UNet(CFG, batch_groups=3), params, x)
    with jax.enable_x64(True):
        reference = gradients(UNet(CFG, dtype=jnp.float64, param_dtype=jnp.float64),
                              jax.tree.map(lambda p: p.astype(jnp.float64), params), x.astype(jnp.float64))
        to_grouped, to_whole = _max_relative(grouped, reference), _max_relative(whole, reference)
    assert _max_relative(grouped, whole) < GRADIENT_TOLERANCE
    assert to_grouped < GRADIENT_TOLERANCE and to_whole < GRADIENT_TOLERANCE, (to_grouped, to_whole)


@pytest.mark.slow
def test_batchnorm_training_refuses_groups_and_predicts_with_them():
    x = _batch()
    cfg = UNetConfig(features=4, depth=1, norm="batch")
    variables = jax.jit(UNet(cfg).init)(jax.random.key(0), x[:1])
    with pytest.raises(ValueError, match="its own batch statistics"):
        UNet(cfg, batch_groups=2).apply(variables, x, train=True, mutable=["batch_stats"])
    np.testing.assert_array_equal(jax.jit(UNet(cfg, batch_groups=2).apply)(variables, x), jax.jit(UNet(cfg).apply)(variables, x))


@pytest.mark.parametrize("ynnpack", [True, False])
def test_the_default_groups_only_a_single_cpu_device_under_ynnpack_convolutions_two_per_core(ynnpack, monkeypatch):
    monkeypatch.setattr(xla_cpu, "ynnpack_convolutions", lambda: ynnpack)
    cores = default_batch_groups(1, None)
    assert cores == (2 * len(os.sched_getaffinity(0)) if jax.default_backend() == "cpu" and ynnpack else 1)
    assert default_batch_groups(8, None) == 1  # devices already run side by side
    assert default_batch_groups(1, "batch") == 1 and default_batch_groups(1, "batch", train=False) == cores
