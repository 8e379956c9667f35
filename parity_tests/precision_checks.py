"""What the precision-mode tests measure, shared with the study that sets their bounds.

For a training recipe (network, input, Adam's lr) in a precision mode, `measure` returns per
quantity (Flax vs float64, torch vs float64, Flax vs torch):

- "logits": the train-mode logits of the first batch (the loss's input), max|a - ref| / max|ref|
  (small networks only, see `measure`);
- "gradients": step 1's, one scale for the whole network (harness.global_rel_error);
- "step t: loss" and "step t: weights" for t = 1, 2: ONE Adam step of each framework's train step
  (unet_torch.train_step, unet_jax's make_train_step) from the float64 run's state after t - 1
  steps (weights and Adam moments rounded to float32), against the float64 run's step t: the
  loss relative to the float64 loss, the weights as the root-mean-square of |w - w_ref| in units
  of lr (training.step_error_in_lr). A one-step error, not a trajectory: float32 trajectories of
  the seed network diverge from float64 in both frameworks (studies/float32_adam_drift), and a
  trajectory that diverges cannot show a bug.

The float64 reference is torch in float64 on `device` (the CPU, or the GPU for the seed network
at 572 px, which costs ~3.6 TFLOP in float64 for its 2 Adam steps), computed once per recipe.
"""

from __future__ import annotations

import dataclasses
import functools

import torch

import unet_torch
from parity_tests import bounds, harness, training
from unet_config import UNetConfig

CHECKED_STEPS = (1, 2)
SMALL = training.Recipe("features8-depth2-44px", UNetConfig(features=8, depth=2), 44, 2, "adam", 1e-3, steps=2)
SMALL_BN = training.Recipe("features8-depth2-44px-batchnorm", UNetConfig(features=8, depth=2, norm="batch"), 44, 2,
                           "adam", 1e-3, steps=2)
SEED_572 = training.Recipe("seed-572px-batch2", UNetConfig(), 572, 2, "adam", 1e-3, steps=2)
SMALL_RECIPES = (SMALL, SMALL_BN)
# Networks up to this many (input pixels x first-level features) also get a logits check (one
# forward compilation more): the small ones (44 x 44 x 8), not the seed network at 572 (572 x 572 x 64).
LOGITS_BUDGET = 1_000_000


@functools.cache
def reference(recipe: training.Recipe, device: str = "cpu") -> dict:
    """Float64 train-mode logits and gradients on the first batch, and the float64 Adam run's
    snapshots, computed on `device`; everything returned is on the host."""
    images, _ = training.batches(recipe)[0]
    logits = None
    if recipe.size ** 2 * recipe.config.features <= LOGITS_BUDGET:
        logits = harness.torch_forward(harness.reference_model(training.start(recipe), device), images, train=True)
    snapshots = training.reference_snapshots(recipe, device)  # step 1's gradients are the gradient check's reference
    if device == "cuda":  # hand the float64 activations' memory back before JAX needs it
        torch.cuda.empty_cache()
    # The start weights' rms sets the weight bounds' floor (parity_tests.bounds.weights_in_lr), the same for every mode.
    weights_rms = bounds.rms(snapshots[0].state, parameter_keys(recipe))
    return {"logits": logits, "grads": snapshots[1].grads, "snapshots": snapshots, "weights_rms": weights_rms}


@functools.cache
def parameter_keys(recipe: training.Recipe) -> tuple[str, ...]:
    """The trained tensors (torch naming): what Adam moves by ~lr per step. Read from a model
    without storage (the seed network's 31M weights need no drawing to be named)."""
    with torch.device("meta"):
        model = unet_torch.UNet(**dataclasses.asdict(recipe.config))
    return tuple(name for name, _ in model.named_parameters())


def measure(recipe: training.Recipe, mode: str, device: str = "cpu") -> dict[str, tuple[float, float, float]]:
    """{quantity: (Flax vs float64, torch vs float64, Flax vs torch)} in precision `mode`.

    One compilation per network and mode: the train step's (`training.flax_train_step`, shared
    with every test); the gradients are step 1's, read back from the Adam state. The logits cost
    a forward compilation of their own, so the seed network at 572 px leaves them to the loss (its
    strict logits are test_seed_checkpoint's)."""
    ref = reference(recipe, device)
    data = training.batches(recipe)
    keys = parameter_keys(recipe)
    lr = recipe.learning_rate
    figures = {}
    with harness.precision(mode) as prec:
        if recipe.size * recipe.size * recipe.config.features <= LOGITS_BUDGET:
            images, _ = data[0]
            model = training.start(recipe).to(harness.TORCH_DEVICE)
            flax_logits, _ = harness.flax_forward(recipe.config, harness.port_to_flax(model, recipe.config), images, True,
                                                  prec.flax_dtype)
            torch_logits = harness.torch_forward(model, images, True, prec)
            figures["logits"] = (harness.rel_error(flax_logits, ref["logits"]), harness.rel_error(torch_logits, ref["logits"]),
                                 harness.rel_error(flax_logits, torch_logits))
        for step in CHECKED_STEPS:
            before, after = ref["snapshots"][step - 1], ref["snapshots"][step]
            torch_loss, torch_state, torch_grads = training.one_step_torch(recipe, before, data[step - 1], prec)
            flax_loss, flax_state, flax_grads = training.one_step_flax(recipe, before, data[step - 1], prec.flax_dtype)
            if step == 1:
                figures["gradients"] = (harness.global_rel_error(flax_grads, ref["grads"]),
                                        harness.global_rel_error(torch_grads, ref["grads"]),
                                        harness.global_rel_error(flax_grads, torch_grads))
            figures[f"step {step}: loss"] = (abs(flax_loss - after.loss) / abs(after.loss),
                                             abs(torch_loss - after.loss) / abs(after.loss),
                                             abs(flax_loss - torch_loss) / abs(after.loss))
            figures[f"step {step}: weights"] = (training.step_error_in_lr(flax_state, after.state, lr, keys)[0],
                                                training.step_error_in_lr(torch_state, after.state, lr, keys)[0],
                                                training.step_error_in_lr(flax_state, torch_state, lr, keys)[0])
    return figures
