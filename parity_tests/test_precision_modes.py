"""Forward, gradients and 10 Adam steps in each precision mode (strict, default, bf16).

Three scenarios: two small nets that run everywhere (on a CPU, "default" is plain float32 and
"bf16" is real bfloat16 compute), one of them with BatchNorm, and the seed network at
572 x 572, batch 2, which needs a GPU. All are measured against the float64 torch reference
(on the CPU; for the seed network on the GPU, see REFERENCE_DEVICE) and against each other:

- logits: max|a - ref| / max|ref|;
- gradients: one scale for the whole network, max over tensors of max|g - g_ref| divided by
  the largest max|g_ref| (harness.global_rel_error): in bf16 every small tensor's own relative
  error is noise, and in float32 the seed net's are dominated by ReLU/max-pool kink flips
  (see test_gradients);
- training: per-step loss, and ||w - w_ref|| / ||w_ref - w_init|| after the 10 steps.

Small-net bounds are ~10x (float32) or ~2x (bf16) what was measured on the CPU. The GPU
bounds come from the first GPU run (H200, parity_tests/results/nvidia-h200/), at most 10x
what it measured; the few it did not reach before its time cap are marked PROVISIONAL. A run's
report (python -m parity_tests.run_report) records every number beside its bound.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch

from parity_tests import harness, training
from unet_config import UNetConfig

SMALL = training.Recipe("features8-depth2-44px", UNetConfig(features=8, depth=2), 44, 2, "adam", 1e-3)
SMALL_BN = training.Recipe("features8-depth2-44px-batchnorm", UNetConfig(features=8, depth=2, norm="batch"), 44, 2,
                           "adam", 1e-3)
SEED_572 = training.Recipe("seed-572px-batch2", UNetConfig(), 572, 2, "adam", 1e-3)

# Measured here (AMD EPYC, 2 cores; jax 0.10.2, torch 2.13.0+cpu), worst of flax-vs-f64,
# torch-vs-f64 and flax-vs-torch, on the small nets; bounds ~10x (float32) and ~2x (bf16).
SMALL_TOLERANCES = {
    "strict": {
        "logits": 1e-5,  # the strict-mode bound of every forward test; measured 6.5e-7
        "gradients": 3e-6,  # measured 3.5e-7
        "loss per step": 3e-5,  # measured 3.2e-6
        "weights after 10 steps": 1e-4,  # measured 9.9e-6
    },
    "bf16": {  # bfloat16 compute: 8-bit mantissa, ~2e-3 per rounding, many layers deep.
        "logits": 3e-2,  # measured 1.4e-2 (between)
        "gradients": 3e-1,  # measured 0.14 (Flax, and between)
        "loss per step": 8e-2,  # measured 0.040 (between)
        "weights after 10 steps": 6e-1,  # measured 0.31 (Flax): bf16 Adam steps wander
    },
}
SMALL_BN_TOLERANCES = {
    "strict": {
        "logits": 1e-5,  # measured 5.7e-7 (eval mode: running statistics)
        "gradients": 2e-5,  # measured 2.0e-6: train-mode batch statistics, reduced in float32
        "loss per step": 4e-5,  # measured 4.3e-6
        # measured 1.4e-3: as test_train_steps' adam-batchnorm, Adam amplifies the small
        # gradient differences that the batch statistics' rounding leaves; 7x.
        "weights after 10 steps": 1e-2,
    },
    "bf16": {  # BatchNorm's statistics stay float32 in both frameworks; the convs are bf16
        "logits": 5e-2,  # measured 2.5e-2 (between)
        "gradients": 7e-1,  # measured 0.33 (between)
        "loss per step": 1e-1,  # measured 0.056 (Flax)
        "weights after 10 steps": 6e-2,  # measured 0.031 (between)
    },
}
# On a CPU "default" precision is float32, so it is held to the strict bounds; on an NVIDIA
# GPU it means TF32 convolutions (10-bit mantissa, ~5e-4 per rounding). Measured on an H200
# (parity_tests/results/nvidia-h200/, 2026-11-26; jax 0.11.2, torch 2.11.0+cu130) where a
# figure is named; the rest is PROVISIONAL: that run was cut by its time cap before it.
TF32_SMALL = {
    "logits": 3e-3,  # H200, small net: 8.6e-4 (between)
    "gradients": 5e-2,  # H200, small net: 1.1e-2 (Flax)
    "loss per step": 1e-2,  # PROVISIONAL; the seed net at 572 measured 4.7e-3
    "weights after 10 steps": 2e-1,  # PROVISIONAL: Adam turns small gradient differences into whole steps
}
for _table in (SMALL_TOLERANCES, SMALL_BN_TOLERANCES):
    _table["default"] = TF32_SMALL if harness.ON_GPU else _table["strict"]
SEED_572_TOLERANCES = {  # GPU only; H200 figures as above, worst of Flax, torch and between
    "strict": {
        "logits": 1e-5,  # H200: 5.6e-6 (torch)
        "gradients": 4e-4,  # H200: 4.4e-5 (torch): kink flips (test_gradients), 9x
        # H200: 1.2e-3 (Flax; torch 1.0e-3, between 2.1e-4). Not a framework's error: trained
        # in float64 the two agree (1.7e-12 for the seed net at 188 px on a CPU, 9.9e-16 for the
        # small net: test_adam_steps_float64_both_frameworks), and float32 drifts like this in
        # both on a CPU too (parity_tests/float32_adam_drift.py, results/cpu/):
        # Adam moves every weight by ~lr whatever its gradient, so rounding that flips a small
        # gradient's sign moves that weight by 2 lr, and the seed net amplifies it step by step.
        "loss per step": 5e-3,
        "weights after 10 steps": 2e-2,  # PROVISIONAL (not reached); the CPU's Adam nets reach 6e-4
    },
    "default": {  # TF32 convolutions
        "logits": 1e-2,  # H200: 2.5e-3 (both against float64; between 1.2e-3), 4x
        "gradients": 5e-2,  # PROVISIONAL (not reached): TF32 in both passes on top of the kink flips
        "loss per step": 2e-2,  # H200: 4.7e-3 (torch), 4x
        "weights after 10 steps": 2e-1,  # PROVISIONAL (not reached)
    },
    "bf16": {
        "logits": 1e-1,  # H200: 2.3e-2 (between), 4x
        "gradients": 5e-2,  # H200: 5.2e-3 (torch), 10x
        "loss per step": 1e-1,  # H200: 3.2e-2 (Flax), 3x
        "weights after 10 steps": 1.0,  # H200: 0.44 (torch): bf16 Adam steps wander, 2.3x
    },
}
TOLERANCES = {SMALL.name: SMALL_TOLERANCES, SMALL_BN.name: SMALL_BN_TOLERANCES, SEED_572.name: SEED_572_TOLERANCES}

SCENARIOS = [
    pytest.param(SMALL, id="small"),
    pytest.param(SMALL_BN, id="small-batchnorm"),
    pytest.param(SEED_572, id="seed572",
                 marks=[pytest.mark.gpu, pytest.mark.skipif(not harness.ON_GPU, reason=harness.GPU_SKIP_REASON)]),
]


# Where each scenario's float64 reference runs. The seed network at 572 px costs ~20 TFLOP in
# float64 (forward 0.6, gradients 1.8, ten Adam steps 18): many minutes on the GPU machine's
# CPU, against a 300 s cap for the whole suite, but ~0.3 s at an H100/H200's ~60 TFLOP/s of
# float64 and a few seconds at cuDNN's real float64 efficiency. So it runs on the GPU, the only
# place that scenario runs at all; the small nets stay on the CPU.
REFERENCE_DEVICE = {SEED_572.name: harness.TORCH_DEVICE}


def reference_device(recipe: training.Recipe) -> str:
    return REFERENCE_DEVICE.get(recipe.name, "cpu")


def reference_note(recipe: training.Recipe, note: str) -> str:
    device = reference_device(recipe)
    return note if device == "cpu" else "; ".join(filter(None, (note, f"float64 reference on {device}")))


@functools.cache
def reference(recipe: training.Recipe) -> dict:
    """Float64 logits and gradients on the first batch, and the float64 training run, computed
    on `reference_device(recipe)`; everything returned is on the host."""
    device = reference_device(recipe)
    images, masks = training.batches(recipe)[0]
    model64 = harness.reference_model(training.start(recipe), device)
    logits = harness.torch_forward(model64, images, train=False)
    _, grads = harness.torch_loss_and_grads(model64, recipe.config, images, masks)
    del model64
    init, run = training.run_reference(recipe, device)
    if device == "cuda":  # hand the float64 activations' memory back before JAX needs it
        torch.cuda.empty_cache()
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
    tol = TOLERANCES[recipe.name][mode]
    with parity.all_recorded():
        parity.check(recipe.name, mode, "logits", tol["logits"], flax=harness.rel_error(flax_logits, ref["logits"]),
                     torch=harness.rel_error(torch_logits, ref["logits"]),
                     between=harness.rel_error(flax_logits, torch_logits), note=reference_note(recipe, ""))
        parity.check(recipe.name, mode, "gradients", tol["gradients"],
                     flax=harness.global_rel_error(flax_grads, ref["grads"]),
                     torch=harness.global_rel_error(torch_grads, ref["grads"]),
                     between=harness.global_rel_error(flax_grads, torch_grads),
                     note=reference_note(recipe, "one scale for all tensors"))


@pytest.mark.parametrize("mode", harness.MODES)
@pytest.mark.parametrize("recipe", SCENARIOS)
def test_adam_steps(recipe, mode, parity):
    ref = reference(recipe)
    init, ref_run = ref["init"], ref["run"]
    torch_run, flax_run = training.run_frameworks(recipe, mode)
    tol = TOLERANCES[recipe.name][mode]
    assert np.isfinite(torch_run.losses).all() and np.isfinite(flax_run.losses).all()
    keys = [k for k, v in ref_run.state.items() if np.issubdtype(v.dtype, np.floating)]
    with parity.all_recorded():
        parity.check(recipe.name, mode, "loss per step", tol["loss per step"],
                     flax=training.step_errors(flax_run.losses, ref_run.losses),
                     torch=training.step_errors(torch_run.losses, ref_run.losses),
                     between=training.step_errors(flax_run.losses, torch_run.losses),
                     note=reference_note(recipe, "max over 10 Adam steps"))
        parity.check(recipe.name, mode, "weights after 10 steps", tol["weights after 10 steps"],
                     flax=training.global_drift(flax_run.state, ref_run.state, init, keys),
                     torch=training.global_drift(torch_run.state, ref_run.state, init, keys),
                     between=training.global_drift(flax_run.state, torch_run.state, init, keys),
                     note=reference_note(recipe, "||w - ref|| / ||ref - init||"))


# Both frameworks in float64, 10 Adam steps: rounding ~1e-16, so what is left is any difference
# in the function trained (forward, loss, gradients, Adam's update). Measured here (AMD EPYC,
# jax 0.10.2, torch 2.13.0+cpu), small net: loss 9.9e-16, weights 3.8e-15. The float32 runs
# above are then measuring rounding alone, which Adam amplifies on the seed network.
ADAM_FLOAT64_TOLERANCE = 1e-10


def test_adam_steps_float64_both_frameworks(parity):
    """On the small net, everywhere: on a GPU the seed net at 572 in float64 would take the
    device time the rest of the suite needs (its float32 runs are compared with the float64
    torch run there; parity_tests/float32_adam_drift.py shows the seed net's drift on a CPU)."""
    recipe = SMALL
    ref = reference(recipe)
    init, ref_run = ref["init"], ref["run"]
    model = training.start(recipe)
    data = [(images.astype(np.float64), masks) for images, masks in training.batches(recipe)]
    with jax.enable_x64(True):
        variables = jax.tree.map(lambda a: np.asarray(a, np.float64), harness.port_to_flax(model, recipe.config))
        flax_run = training.train_flax(recipe.config, variables, recipe, data, jnp.float64)
    assert flax_run.state[next(iter(flax_run.state))].dtype == np.float64
    keys = [k for k, v in ref_run.state.items() if np.issubdtype(v.dtype, np.floating)]
    with parity.all_recorded():
        parity.check(recipe.name, "float64", "loss per step", ADAM_FLOAT64_TOLERANCE,
                     between=training.step_errors(flax_run.losses, ref_run.losses),
                     note=reference_note(recipe, "Flax float64 vs the float64 torch run, 10 Adam steps"))
        parity.check(recipe.name, "float64", "weights after 10 steps", ADAM_FLOAT64_TOLERANCE,
                     between=training.global_drift(flax_run.state, ref_run.state, init, keys),
                     note=reference_note(recipe, "||w - ref|| / ||ref - init||"))
