"""Optimizer-step parity: the same ported start and batches through both frameworks' train steps.

Each run returns a `Run`: per-step losses and gradient norms, and the final weights as a
torch state_dict (numpy, unet_torch naming), so both frameworks are compared in one layout.

Parameter error after training is measured *relative to how far training moved the tensor*:

    drift_error(p, ref, init) = max|p - ref| / max|ref - init|

because after a few steps the weights are still almost their initial values: max|ref| would
make any error look small. Adam's update is ~lr * sign(g) wherever |g| >> eps, so a parameter
whose gradient is near zero can move by up to lr per step in one framework and not the other;
`max_abs_error_in_steps` (max|p - ref| / lr) states that error in units of one Adam step.
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import torch

import unet_torch
from parity_tests import harness
from unet_config import UNetConfig
from unet_jax.training.losses import make_loss
from unet_jax.training.step import make_optax_optimizer, make_train_step, state_from_variables
from unet_jax.weights.port import flax_to_torch


@dataclasses.dataclass(frozen=True)
class Recipe:
    """One training-parity scenario: network, input, optimizer and number of steps."""

    name: str
    config: UNetConfig
    size: int
    batch: int
    optimizer: str  # "adam" | "sgd"
    learning_rate: float
    momentum: float = 0.99  # SGD only (the paper's value)
    steps: int = 10


@dataclasses.dataclass
class Run:
    losses: list[float]
    grad_norms: list[float]
    state: dict[str, np.ndarray]  # final weights and buffers, torch layout and naming


def batches(recipe: Recipe) -> list[tuple[np.ndarray, np.ndarray]]:
    """A different deterministic batch for every step, the same for every framework."""
    return [harness.make_batch(recipe.config, recipe.size, recipe.batch, seed=100 + i) for i in range(recipe.steps)]


def train_torch(model: torch.nn.Module, recipe: Recipe, data, prec: harness.Precision | None = None) -> Run:
    """`unet_torch.train_step` for every batch, on `model` as it is (dtype and device)."""
    optimizer = unet_torch.make_torch_optimizer(model.parameters(), recipe.optimizer, recipe.learning_rate, recipe.momentum)
    device = next(model.parameters()).device
    losses, grad_norms = [], []
    for images, masks in data:
        loss = unet_torch.train_step(
            model, optimizer, harness.torch_input(images, model), torch.from_numpy(masks).to(device),
            autocast_dtype=prec.autocast_dtype if prec else None,
        )
        losses.append(float(loss))
        grad_norms.append(float(torch.sqrt(sum((p.grad.double() ** 2).sum() for p in model.parameters()))))
    return Run(losses, grad_norms, harness.torch_state(model))


def train_flax(config: UNetConfig, variables, recipe: Recipe, data, dtype=jnp.float32) -> Run:
    """`unet_jax.training.step.make_train_step(make_loss("ce"))` (jitted, state donated) per batch."""
    model = harness.flax_model(config, dtype)
    tx = make_optax_optimizer(recipe.optimizer, recipe.learning_rate, recipe.momentum)
    state = state_from_variables(model, tx, jax.tree.map(jnp.array, variables), jax.random.key(0))
    step = make_train_step(make_loss("ce"))
    losses, grad_norms = [], []
    for images, masks in data:
        state, metrics = step(state, jnp.asarray(images), jnp.asarray(masks))
        losses.append(float(metrics["loss"]))
        grad_norms.append(float(metrics["grad_norm"]))
    final = {"params": state.params}
    if state.batch_stats is not None:
        final["batch_stats"] = state.batch_stats
    return Run(losses, grad_norms, flax_to_torch(jax.tree.map(np.asarray, final), config))


def start(recipe: Recipe) -> torch.nn.Module:
    """The float32 torch model every run of `recipe` starts from (CPU; same seed every time)."""
    return harness.build_torch(recipe.config, seed=1)


def run_reference(recipe: Recipe, device: str = "cpu") -> tuple[dict[str, np.ndarray], Run]:
    """(initial state, the float64 torch run on `device`, the CPU by default)."""
    model = start(recipe)
    return harness.torch_state(model), train_torch(harness.reference_model(model, device), recipe, batches(recipe))


def run_frameworks(recipe: Recipe, mode: str) -> tuple[Run, Run]:
    """(torch run, Flax run) in precision `mode`, from `start(recipe)` on the same batches."""
    model = start(recipe)
    data = batches(recipe)
    with harness.precision(mode) as prec:
        variables = harness.port_to_flax(model, recipe.config)
        torch_run = train_torch(model.to(harness.TORCH_DEVICE), recipe, data, prec)
        flax_run = train_flax(recipe.config, variables, recipe, data, prec.flax_dtype)
    return torch_run, flax_run


def run_both(recipe: Recipe, mode: str = "strict") -> dict:
    """{"init": state, "reference": float64 Run, "torch": Run, "flax": Run}."""
    init, reference = run_reference(recipe)
    torch_run, flax_run = run_frameworks(recipe, mode)
    return {"init": init, "reference": reference, "torch": torch_run, "flax": flax_run}


def step_errors(values, refs) -> float:
    """Largest per-step |a - ref| / |ref| over a run (losses or gradient norms)."""
    return max(abs(a - r) / abs(r) for a, r in zip(values, refs, strict=True))


def drift_error(state, ref, init) -> tuple[float, str]:
    """(largest per-tensor max|p - ref| / max|ref - init|, its key), floating tensors only."""
    errors = {}
    for key, value in ref.items():
        if not np.issubdtype(value.dtype, np.floating):
            continue
        moved = np.abs(value - init[key].astype(np.float64)).max()
        diff = np.abs(state[key].astype(np.float64) - value).max()
        errors[key] = 0.0 if diff == 0 else (float(diff / moved) if moved > 0 else float("inf"))
    worst = max(errors, key=errors.get)
    return errors[worst], worst


def global_drift(state, ref, init, keys) -> float:
    """||w - ref|| / ||ref - init|| over the floating tensors `keys`, as one vector."""
    num = sum(float(((state[k].astype(np.float64) - ref[k]) ** 2).sum()) for k in keys)
    den = sum(float(((ref[k].astype(np.float64) - init[k].astype(np.float64)) ** 2).sum()) for k in keys)
    return (num / den) ** 0.5


def max_abs_error_in_steps(state, ref, learning_rate: float) -> float:
    """max over floating tensors of max|p - ref| / lr: the error in units of one Adam step."""
    return max(
        float(np.abs(state[k].astype(np.float64) - v).max()) / learning_rate
        for k, v in ref.items()
        if np.issubdtype(v.dtype, np.floating)
    )


def integer_buffers_equal(state, ref) -> bool:
    """BatchNorm's num_batches_tracked (and any integer buffer) must match exactly."""
    return all(np.array_equal(state[k], v) for k, v in ref.items() if not np.issubdtype(v.dtype, np.floating))
