"""What each precision mode promises, checked directly, so that a precision bug fails a test
whose bound is a few float32 rounding units rather than the mode's own (coarse) error:

- the loss is computed in float32 from float32 logits whatever the compute dtype (a bf16 loss
  or un-cast bf16 logits are off by ~1e-3, the bf16 mode's bounds by ~1e-1 would not see it);
- bf16 training keeps float32 master weights;
- Adam's update is torch's, in float64, on gradients of every scale (eps shows on tiny ones);
- strict mode is true float32: one convolution and one matmul in each framework agree with
  float64 to float32 rounding (TF32 is off by ~1e-3). On a CPU there is no TF32, so this can
  only fail on an NVIDIA GPU.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch

import unet_torch
from parity_tests import bounds, harness, precision_checks, training
from unet_jax.training.step import make_optax_optimizer

# A few float32 rounding units: 32 u = 1.9e-6 (parity_tests.bounds). Measured here (AMD EPYC,
# jax 0.10.2, torch 2.13.0+cpu): the loss from its own logits 1e-7 or less in both modes; the
# probes 1e-7 or less. A bf16 loss or bf16 logits measure >= 1e-4, TF32 ~1e-3 (H200: 2.5e-3).
FLOAT32_BOUND = bounds.FLOOR_UNITS * bounds.FLOAT32_UNIT


def numpy_cross_entropy(logits: np.ndarray, labels: np.ndarray) -> float:
    """Mean softmax cross-entropy in float64, [N, H, W, C] logits and [N, H, W] labels."""
    logits = logits.astype(np.float64)
    shifted = logits - logits.max(axis=-1, keepdims=True)
    log_probs = shifted - np.log(np.exp(shifted).sum(axis=-1, keepdims=True))
    return float(-np.take_along_axis(log_probs, labels[..., None], axis=-1).mean())


@pytest.mark.parametrize("mode", ["strict", "bf16"])
def test_the_loss_is_float32_from_float32_logits(mode, parity):
    recipe = precision_checks.SMALL
    images, masks = training.batches(recipe)[0]
    variables = harness.port_to_flax(training.start(recipe), recipe.config)
    with harness.precision(mode) as prec:
        fn = harness.jitted_loss_and_grads(recipe.config, prec.flax_dtype)
        (loss, (logits, labels, _)), _ = fn(variables["params"], variables.get("batch_stats"), images, masks)
    assert logits.dtype == jnp.float32, f"the model's logits are {logits.dtype} in {mode} mode, not float32"
    expected = numpy_cross_entropy(np.asarray(logits), np.asarray(labels))
    parity.check(recipe.name, mode, "loss from the model's own logits", FLOAT32_BOUND,
                 flax=abs(float(loss) - expected) / abs(expected), note="|loss - float64 CE of the same logits| / |.|")


def test_bf16_training_keeps_float32_master_weights():
    recipe = precision_checks.SMALL
    snapshots = precision_checks.reference(recipe)["snapshots"]
    with harness.precision("bf16") as prec:
        _, state, _ = training.one_step_flax(recipe, snapshots[1], training.batches(recipe)[1], prec.flax_dtype)
    dtypes = {k: state[k].dtype for k in precision_checks.parameter_keys(recipe)}
    assert all(d == np.float32 for d in dtypes.values()), f"master weights after a bf16 step: {dtypes}"


def test_adam_update_is_torchs_on_gradients_of_every_scale(parity):
    """Three Adam steps on one vector whose gradients span 1e-12 .. 10 (random signs), float64."""
    rng = np.random.default_rng(0)
    start = rng.standard_normal(200)
    grads = [np.sign(rng.standard_normal(200)) * 10.0 ** rng.uniform(-12, 1, 200) for _ in range(3)]
    lr = 1e-3
    weight = torch.nn.Parameter(torch.from_numpy(start.copy()))
    optimizer = unet_torch.make_torch_optimizer([weight], "adam", lr)
    tx = make_optax_optimizer("adam", lr)
    # optax's Adam raises its decay rates to the int32 step count: standard promotion, as the
    # train step applies it (unet_jax/train_step.py).
    with jax.enable_x64(True), jax.numpy_dtype_promotion("standard"):
        params = jnp.asarray(start)
        opt_state = tx.init(params)
        for g in grads:
            weight.grad = torch.from_numpy(g)
            optimizer.step()
            updates, opt_state = tx.update(jnp.asarray(g), opt_state, params)
            params = params + updates
        flax = np.asarray(params)
    error = float(np.abs(flax - weight.detach().numpy()).max()) / lr
    parity.check("adam, 200 weights", "float64", "3 Adam steps, gradients 1e-12..10", 1e-9, between=error,
                 note="max|w - w_torch| / lr")


def _probe_data():
    rng = np.random.default_rng(0)
    return rng.standard_normal((2, 64, 40, 40)), rng.standard_normal((64, 64, 3, 3)), rng.standard_normal((256, 512))


def test_strict_mode_is_true_float32(parity):
    x, kernel, matrix = _probe_data()
    conv64 = torch.nn.functional.conv2d(torch.from_numpy(x), torch.from_numpy(kernel)).numpy()
    matmul64 = matrix @ matrix.T
    device = harness.TORCH_DEVICE
    with harness.precision("strict"):
        t = {k: torch.from_numpy(v).float().to(device) for k, v in (("x", x), ("kernel", kernel), ("matrix", matrix))}
        torch_conv = torch.nn.functional.conv2d(t["x"], t["kernel"]).double().cpu().numpy()
        torch_matmul = (t["matrix"] @ t["matrix"].T).double().cpu().numpy()
        jax_conv = jax.jit(lambda a, b: jax.lax.conv_general_dilated(a, b, (1, 1), "VALID"))(
            x.astype(np.float32), kernel.astype(np.float32))
        jax_matmul = jax.jit(lambda a: a @ a.T)(matrix.astype(np.float32))
    with parity.all_recorded():
        parity.check("probe: 3x3 conv, 64 channels", "strict", "float32 against float64", FLOAT32_BOUND,
                     flax=harness.rel_error(np.asarray(jax_conv), conv64), torch=harness.rel_error(torch_conv, conv64))
        parity.check("probe: matmul, k=512", "strict", "float32 against float64", FLOAT32_BOUND,
                     flax=harness.rel_error(np.asarray(jax_matmul), matmul64), torch=harness.rel_error(torch_matmul, matmul64))
