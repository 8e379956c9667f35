"""Gradient parity: the same cross-entropy (labels centre-cropped to the logits), differentiated
by jax.grad through `unet_jax.training.step.loss_and_logits` and by torch's backward.

Torch gradients are mapped into Flax layout by the port table (a permutation of entries, so
gradients map exactly like weights). Error per tensor = max|g - g_ref| / max|g_ref|, then the
maximum over tensors; tensors whose exact gradient is 0 are measured against the network's
largest gradient instead (harness.zero_to_rounding).

Two checks, because float32 alone cannot prove gradient parity for this network:
- float64 in *both* frameworks (jax x64 inside `jax.enable_x64`): rounding is ~1e-16, far from
  every ReLU and max-pool kink, so the two gradients must agree to ~1e-13. This is the proof
  that both frameworks differentiate the same function.
- strict float32 against the float64 reference: the numerical quality on the running device.
  The loss is only piecewise smooth; float32 rounding (~1e-7 relative in the activations)
  moves some pre-activations across a ReLU/max-pool kink, and each such flip moves a
  per-channel gradient sum of ~N terms by ~1/sqrt(N). In the 64-feature seed net at 188 px
  (N ~ 34,000 pixels per channel at level 1) that is ~5e-3 per flip, and flips are likely.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from parity_tests import harness
from unet_jax.weights.port import torch_to_flax

# Both frameworks in float64. Measured here (AMD EPYC, jax 0.10.2, torch 2.13.0+cpu): at most
# 1.3e-13 (BatchNorm nets, whose reductions are longest). Any real mismatch is O(1e-2..1).
GRAD_TOL_FLOAT64 = 1e-10

# Loss value in strict float32: a forward quantity, the bound. Measured <= 6e-7.
LOSS_TOL_STRICT = 1e-5

# Strict float32, small nets (features=8 and the variants), on this test's batch: measured at
# most 1.5e-5 (Flax, head bias of features8, whose gradient is small because it is a mean of
# p - onehot). 2e-4 is ~13x that. On other batches a kink flip can be larger: over 10 data
# draws features8 measured <= 9e-6 for torch and once 4.0e-3 for Flax
# (parity_tests/results/cpu/float32_gradient_noise.md); the float64 test is the proof.
GRAD_TOL_STRICT = 2e-4

# Strict float32, the 64-feature seed net: kink flips dominate (module docstring). Measured
# 7.8e-3 torch, 4.2e-3 Flax, 7.9e-3 between at this input; over data draws torch reached
# 2.5e-2 at 188 px (6 draws) and 3.9e-2 at 204 px (float32_gradient_noise.md). A sanity bound
# (2.5x the worst draw); the float64 test is the proof.
GRAD_TOL_STRICT_SEED = 1e-1

GRAD_CASES = list(harness.CASES)
# The seed network's float64 check on a GPU is test_precision_modes' test_one_step_float64_both_frameworks
# [seed572]: the same tensor-by-tensor gradient check and bound, through the product's train step, at
# 572 px and batch 2, plus the loss and the first update; this one at 188 px would add ~9 s there.
LEFT_TO_THE_SEED_572 = pytest.mark.cpu_only(reason="test_one_step_float64_both_frameworks[seed572] checks more")
FLOAT64_CASES = [pytest.param(name, marks=LEFT_TO_THE_SEED_572) if name == "seed" else name for name in GRAD_CASES]


@functools.cache
def reference(name: str):
    """(images, masks, loss, float64 gradients in Flax layout) for a case, computed once, on the
    accelerator where there is one (float64 is float64 on either; on a GPU the seed network's, at
    ~0.1 TFLOP, takes ~0.2 s at the H200's measured float64 rate, against seconds on its CPU)."""
    case = harness.CASES[name]
    images, masks = harness.make_batch(case.config, case.size, case.batch)
    model = harness.reference_model(harness.build_torch(case.config), harness.TORCH_DEVICE)
    loss, grads = harness.torch_loss_and_grads(model, case.config, images, masks)
    return images, masks, loss, grads


@pytest.mark.parametrize("name", FLOAT64_CASES)
def test_gradients_float64_both_frameworks(name, parity):
    case = harness.CASES[name]
    images, masks, ref_loss, ref_grads = reference(name)
    state64 = harness.torch_state(harness.reference_model(harness.build_torch(case.config)))
    with jax.enable_x64(True):
        variables = jax.tree.map(jnp.asarray, torch_to_flax(state64, case.config))
        assert variables["params"]["head"]["kernel"].dtype == jnp.float64
        loss, grads = harness.flax_loss_and_grads(case.config, variables, images.astype(np.float64), masks, jnp.float64)
    zeros = harness.zero_to_rounding(ref_grads)
    error, worst = harness.max_rel_error(grads, ref_grads, zeros)
    parity.check(name, "float64", "loss", GRAD_TOL_FLOAT64, between=abs(loss - ref_loss) / abs(ref_loss))
    parity.check(name, "float64", "parameter gradients", GRAD_TOL_FLOAT64, between=error, note=f"worst {worst}")


@pytest.mark.parametrize("name", GRAD_CASES)
def test_gradients_strict_float32(name, parity):
    case = harness.CASES[name]
    images, masks, ref_loss, ref_grads = reference(name)
    model = harness.build_torch(case.config)
    variables = harness.port_to_flax(model, case.config)
    with harness.precision("strict") as prec:
        torch_loss, torch_grads = harness.torch_loss_and_grads(
            model.to(harness.TORCH_DEVICE), case.config, images, masks, prec
        )
        flax_loss, flax_grads = harness.flax_loss_and_grads(case.config, variables, images, masks, prec.flax_dtype)

    parity.check(
        name, "strict", "loss", LOSS_TOL_STRICT,
        flax=abs(flax_loss - ref_loss) / ref_loss,
        torch=abs(torch_loss - ref_loss) / ref_loss,
        between=abs(flax_loss - torch_loss) / abs(torch_loss),
    )
    zeros = harness.zero_to_rounding(ref_grads)
    flax_error, flax_worst = harness.max_rel_error(flax_grads, ref_grads, zeros)
    torch_error, torch_worst = harness.max_rel_error(torch_grads, ref_grads, zeros)
    between, _ = harness.max_rel_error(flax_grads, torch_grads, zeros)
    parity.check(
        name, "strict", "parameter gradients", GRAD_TOL_STRICT_SEED if name == "seed" else GRAD_TOL_STRICT,
        flax=flax_error, torch=torch_error, between=between,
        note=f"max over tensors; worst flax {flax_worst.split('/', 1)[1]}, torch {torch_worst.split('/', 1)[1]}",
    )
