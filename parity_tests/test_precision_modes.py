"""Forward, gradients and one Adam step in each precision mode (strict, default, bf16), bounded
relative to PyTorch in the same mode (parity_tests.bounds; docs/parity.md, "How the bounds are set").

Three scenarios: two small nets that run everywhere (on a CPU "default" is plain float32 and
"bf16" is real bfloat16 compute), one with BatchNorm, and the seed network at 572 x 572, batch
2, which needs a GPU (its float64 reference runs there too). The quantities are
`parity_tests.precision_checks.measure`'s: train-mode logits, gradients (one scale for the whole
network), and the loss and weights of one Adam step from the float64 run's state at steps 1
and 2 (weights in units of lr). Each is bound = K x torch's own error + a floor in the mode's
rounding unit; Flax's error and the Flax-torch difference are asserted, torch's recorded.

Both frameworks also run in float64 (the small net everywhere, the seed network at 572 on a
GPU): with rounding at ~1e-16, what is left is any difference in the function computed.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from parity_tests import bounds, harness, precision_checks, training
from parity_tests.precision_checks import SEED_572, SMALL, SMALL_BN

GPU_ONLY = [pytest.mark.gpu, pytest.mark.skipif(not harness.ON_GPU, reason=harness.GPU_SKIP_REASON)]
SCENARIOS = [
    pytest.param(SMALL, id="small"),
    pytest.param(SMALL_BN, id="small-batchnorm"),
    pytest.param(SEED_572, id="seed572", marks=GPU_ONLY),
]
# The seed network at 572 px costs ~7 TFLOP in float64 with its two Adam steps: many minutes on
# the GPU machine's CPU, seconds on the GPU, the only place that scenario runs at all.
REFERENCE_DEVICE = {SEED_572.name: harness.TORCH_DEVICE}


def reference_device(recipe: training.Recipe) -> str:
    return REFERENCE_DEVICE.get(recipe.name, "cpu")


def reference_note(recipe: training.Recipe, note: str) -> str:
    device = reference_device(recipe)
    return note if device == "cpu" else "; ".join(filter(None, (note, f"float64 reference on {device}")))


@pytest.mark.parametrize("mode", harness.MODES)
@pytest.mark.parametrize("recipe", SCENARIOS)
def test_precision_mode_relative_to_torch(recipe, mode, parity):
    device = reference_device(recipe)
    figures = precision_checks.measure(recipe, mode, device)
    weights_rms = precision_checks.reference(recipe, device)["weights_rms"]
    with parity.all_recorded():
        for quantity, (flax, torch, between) in figures.items():
            if quantity.endswith("weights"):
                bound = bounds.weights_in_lr(torch, mode, weights_rms, recipe.learning_rate)
                what = "rms|w - ref| / lr, one Adam step from the float64 state"
            else:
                bound = bounds.relative_to_torch(torch, mode, harness.ON_GPU)
                what = "one scale for all tensors" if quantity == "gradients" else ""
            parity.check(recipe.name, mode, quantity, bound.value, flax=flax, torch=torch, between=between,
                         assert_torch=False, note=reference_note(recipe, "; ".join(filter(None, (what, bound.describe())))))


# Both frameworks in float64: rounding ~1e-16, so what is left is any difference in the function
# trained (forward, loss, gradients, Adam's update). Measured here (AMD EPYC, jax 0.10.2, torch
# 2.13.0+cpu), small net, 10 steps: loss 9.9e-16, weights 3.8e-15; on the H200 (2026-12-04,
# jax 0.11.2, torch 2.11.0+cu130) 9.9e-16 and 3.2e-15.
FLOAT64_TOLERANCE = 1e-10


# Which steps each network checks in float64. Step 2 is Adam from non-zero moments (bias
# correction at count 2): elementwise code that no network size changes, checked on the small net
# here and over 10 steps by test_adam_steps_float64_both_frameworks. The seed network at 572 px adds
# what only it can show, its function (forward, loss, gradients, the first update), at step 1: its
# second float64 step would cost ~4 s of an H200's float64 and its 31M weights' host work again.
FLOAT64_STEPS = {SMALL.name: precision_checks.CHECKED_STEPS, SEED_572.name: (1,)}


@pytest.mark.parametrize("recipe", [pytest.param(SMALL, id="small"), pytest.param(SEED_572, id="seed572", marks=GPU_ONLY)])
def test_one_step_float64_both_frameworks(recipe, parity):
    """One Flax step in float64 from each float64 torch state, against torch's next state (and
    step 1's gradients against torch's, tensor by tensor: in float64 each tensor's own scale is
    meaningful, as in test_gradients' float64 check, which a GPU run leaves to this one)."""
    device = reference_device(recipe)
    ref = precision_checks.reference(recipe, device)
    keys = precision_checks.parameter_keys(recipe)
    data = [(images.astype(np.float64), masks) for images, masks in training.batches(recipe)]
    with jax.enable_x64(True), parity.all_recorded():
        for step in FLOAT64_STEPS[recipe.name]:
            before, after = ref["snapshots"][step - 1], ref["snapshots"][step]
            loss, state, grads = training.one_step_flax(recipe, before, data[step - 1], jnp.float64, np.float64)
            assert all(state[k].dtype == np.float64 for k in keys)
            if grads is not None:  # step 1's, read back from Adam's first moment
                error, worst = harness.max_rel_error(grads, ref["grads"], harness.zero_to_rounding(ref["grads"]))
                parity.check(recipe.name, "float64", "gradients", FLOAT64_TOLERANCE, between=error,
                             note=reference_note(recipe, f"Flax vs torch, max over tensors (worst {worst})"))
            parity.check(recipe.name, "float64", f"step {step}: loss", FLOAT64_TOLERANCE,
                         between=abs(loss - after.loss) / abs(after.loss), note=reference_note(recipe, "Flax vs torch"))
            parity.check(recipe.name, "float64", f"step {step}: weights", FLOAT64_TOLERANCE,
                         between=training.step_error_in_lr(state, after.state, recipe.learning_rate, keys)[1],
                         note=reference_note(recipe, "max|w - ref| / lr, Flax vs torch"))


def test_adam_steps_float64_both_frameworks(parity):
    """Ten steps, a trajectory: in float64 it cannot diverge, so Flax must follow torch to ~1e-15."""
    recipe = training.Recipe("features8-depth2-44px-10adam", SMALL.config, SMALL.size, SMALL.batch, "adam", 1e-3)
    init, ref_run = training.run_reference(recipe)
    data = [(images.astype(np.float64), masks) for images, masks in training.batches(recipe)]
    with jax.enable_x64(True):
        variables = jax.tree.map(lambda a: np.asarray(a, np.float64), harness.port_to_flax(training.start(recipe), recipe.config))
        flax_run = training.train_flax(recipe.config, variables, recipe, data, jnp.float64)
    assert flax_run.state[next(iter(flax_run.state))].dtype == np.float64
    keys = [k for k, v in ref_run.state.items() if np.issubdtype(v.dtype, np.floating)]
    with parity.all_recorded():
        parity.check(recipe.name, "float64", "loss per step", FLOAT64_TOLERANCE,
                     between=training.step_errors(flax_run.losses, ref_run.losses), note="Flax vs torch, 10 Adam steps")
        parity.check(recipe.name, "float64", "weights after 10 steps", FLOAT64_TOLERANCE,
                     between=training.global_drift(flax_run.state, ref_run.state, init, keys),
                     note="||w - ref|| / ||ref - init||")
