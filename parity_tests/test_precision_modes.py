"""Forward, gradients and 10 Adam steps in each precision mode (strict, default, bf16).

Two scenarios: a small net that runs everywhere (on a CPU, "default" is plain float32 and
"bf16" is real bfloat16 compute), and the seed network at 572 x 572, batch 2, which needs a
GPU. Both are measured against the float64 torch reference on the CPU and against each other:

- logits: max|a - ref| / max|ref|;
- gradients: one scale for the whole network, max over tensors of max|g - g_ref| divided by
  the largest max|g_ref| (harness.global_rel_error): in bf16 every small tensor's own relative
  error is noise, and in float32 the seed net's are dominated by ReLU/max-pool kink flips
  (see test_gradients);
- training: per-step loss, and ||w - w_ref|| / ||w_ref - w_init|| after the 10 steps.

GPU tolerances are PROVISIONAL: derived from the DESIGN.md H200 measurement (seed network at
572: strict float32 1.1e-7 vs float64, TF32 8.8e-5 between the frameworks) with margin, to
be confirmed by the first GPU run, whose report (python -m parity_tests.run_report) records
every measured number next to its tolerance.
"""

from __future__ import annotations

import functools

import numpy as np
import pytest

from parity_tests import harness, training
from unet_jax.config import UNetConfig

SMALL = training.Recipe("features8-depth2-44px", UNetConfig(features=8, depth=2), 44, 2, "adam", 1e-3)
SEED_572 = training.Recipe("seed-572px-batch2", UNetConfig(), 572, 2, "adam", 1e-3)

# CPU figures measured here (AMD EPYC, 2 cores; jax 0.10.2, torch 2.13.0+cpu) on the small net.
TOLERANCES = {
    "strict": {
        "logits": 1e-5,  # the bound; CPU 6.5e-7, H200 (DESIGN.md) 1.1e-7
        # Kink flips (test_gradients): the seed net measured 2e-3..5e-3 on this metric at
        # 188-204 px on CPU, the small net 3.5e-7.
        "gradients": 2e-2,
        "loss per step": 1e-4,  # CPU 3.2e-6; room for the seed net's kink flips at 572
        "weights after 10 steps": 2e-2,  # CPU 9.9e-6; test_train_steps' Adam nets up to 6e-4
    },
    "default": {  # on NVIDIA: TF32 convolutions (10-bit mantissa, ~5e-4 per rounding). PROVISIONAL.
        "logits": 1e-3,  # H200: 8.8e-5 between the frameworks at 572 (DESIGN.md), ~10x
        "gradients": 5e-2,  # TF32 in both passes on top of the float32 kink flips
        "loss per step": 1e-3,
        "weights after 10 steps": 2e-1,  # Adam turns small gradient differences into whole steps
    },
    "bf16": {  # bfloat16 compute: 8-bit mantissa, ~2e-3 per rounding, many layers deep.
        "logits": 1e-1,  # CPU: 9.5e-3 Flax, 7.4e-3 torch autocast, 1.4e-2 between
        "gradients": 5e-1,  # CPU: 0.14 Flax, 0.03 torch, 0.14 between
        "loss per step": 5e-1,  # CPU: 0.030 Flax, 0.034 torch, 0.039 between (worst of 10 steps)
        # After 10 bf16 Adam steps the weights are not near the float64 ones (CPU: 0.31 Flax,
        # 0.22 torch); reported only, the loss trajectory above is what is asserted.
        "weights after 10 steps": None,
    },
}

SCENARIOS = [
    pytest.param(SMALL, id="small"),
    pytest.param(SEED_572, id="seed572", marks=pytest.mark.skipif(not harness.ON_GPU, reason=harness.GPU_SKIP_REASON)),
]


@functools.cache
def reference(recipe: training.Recipe) -> dict:
    """Float64 logits and gradients on the first batch, and the float64 training run (CPU)."""
    images, masks = training.batches(recipe)[0]
    model64 = harness.reference_model(training.start(recipe))
    logits = harness.torch_forward(model64, images, train=False)
    _, grads = harness.torch_loss_and_grads(model64, recipe.config, images, masks)
    init, run = training.run_reference(recipe)
    return {"images": images, "masks": masks, "logits": logits, "grads": grads, "init": init, "run": run}


@pytest.mark.parametrize("mode", harness.MODES)
@pytest.mark.parametrize("recipe", SCENARIOS)
def test_forward_and_gradients(recipe, mode, parity):
    ref = reference(recipe)
    images, masks, cfg = ref["images"], ref["masks"], recipe.config
    model = training.start(recipe).to(harness.TORCH_DEVICE)
    variables = harness.port_to_flax(model, cfg)
    with harness.precision(mode) as prec:
        torch_logits = harness.torch_forward(model, images, False, prec)
        flax_logits, _ = harness.flax_forward(cfg, variables, images, False, prec.flax_dtype)
        _, torch_grads = harness.torch_loss_and_grads(model, cfg, images, masks, prec)
        _, flax_grads = harness.flax_loss_and_grads(cfg, variables, images, masks, prec.flax_dtype)
    tol = TOLERANCES[mode]
    parity.check(recipe.name, mode, "logits", tol["logits"], flax=harness.rel_error(flax_logits, ref["logits"]),
                 torch=harness.rel_error(torch_logits, ref["logits"]), between=harness.rel_error(flax_logits, torch_logits))
    parity.check(recipe.name, mode, "gradients", tol["gradients"],
                 flax=harness.global_rel_error(flax_grads, ref["grads"]),
                 torch=harness.global_rel_error(torch_grads, ref["grads"]),
                 between=harness.global_rel_error(flax_grads, torch_grads), note="one scale for all tensors")


@pytest.mark.parametrize("mode", harness.MODES)
@pytest.mark.parametrize("recipe", SCENARIOS)
def test_adam_steps(recipe, mode, parity):
    ref = reference(recipe)
    init, ref_run = ref["init"], ref["run"]
    torch_run, flax_run = training.run_frameworks(recipe, mode)
    tol = TOLERANCES[mode]
    assert np.isfinite(torch_run.losses).all() and np.isfinite(flax_run.losses).all()
    parity.check(recipe.name, mode, "loss per step", tol["loss per step"],
                 flax=training.step_errors(flax_run.losses, ref_run.losses),
                 torch=training.step_errors(torch_run.losses, ref_run.losses),
                 between=training.step_errors(flax_run.losses, torch_run.losses), note="max over 10 Adam steps")
    keys = [k for k, v in ref_run.state.items() if np.issubdtype(v.dtype, np.floating)]
    parity.check(recipe.name, mode, "weights after 10 steps", tol["weights after 10 steps"],
                 flax=training.global_drift(flax_run.state, ref_run.state, init, keys),
                 torch=training.global_drift(torch_run.state, ref_run.state, init, keys),
                 between=training.global_drift(flax_run.state, torch_run.state, init, keys),
                 note="||w - ref|| / ||ref - init||")
