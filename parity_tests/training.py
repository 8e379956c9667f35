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
import functools

import jax
import jax.numpy as jnp
import numpy as np
import torch

import unet_torch
from parity_tests import harness
from unet_config import UNetConfig
from unet_jax.training.losses import make_loss
from unet_jax.training.step import make_optax_optimizer, make_train_step, state_from_variables
from unet_jax.weights.port import flatten_variables, flax_to_torch, torch_to_flax


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
    seed: int = 0  # another draw of the start weights and the batches (the bound studies repeat seeds)


@dataclasses.dataclass
class Run:
    losses: list[float]
    grad_norms: list[float]
    state: dict[str, np.ndarray]  # final weights and buffers, torch layout and naming


def batches(recipe: Recipe) -> list[tuple[np.ndarray, np.ndarray]]:
    """A different deterministic batch for every step, the same for every framework."""
    return [harness.make_batch(recipe.config, recipe.size, recipe.batch, seed=100 + 1000 * recipe.seed + i)
            for i in range(recipe.steps)]


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


@functools.cache
def flax_train_step():
    """`unet_jax.training.step.make_train_step(make_loss("ce"))`, made once for the session: its jit
    compiles once per network, dtype, optimizer and precision mode (all part of JAX's cache key)."""
    return make_train_step(make_loss("ce"))


ADAM_B1 = 0.9  # optax.adam's and torch.optim.Adam's default first-moment decay, which both factories keep


@functools.cache
def flax_optimizer(name: str, learning_rate: float, momentum: float = 0.99):
    """`make_optax_optimizer`, one object per setting: the optimizer is part of the train state's
    static structure, so a new one (new closures) would compile the jitted step again."""
    return make_optax_optimizer(name, learning_rate, momentum)


def train_flax(config: UNetConfig, variables, recipe: Recipe, data, dtype=jnp.float32) -> Run:
    """`unet_jax.training.step.make_train_step(make_loss("ce"))` (jitted, state donated) per batch."""
    model = harness.flax_model(config, dtype)
    tx = flax_optimizer(recipe.optimizer, recipe.learning_rate, recipe.momentum)
    state = state_from_variables(model, tx, jax.tree.map(jnp.array, variables), jax.random.key(0))
    step = flax_train_step()
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
    return harness.build_torch(recipe.config, seed=1 + recipe.seed)


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


# ------------------------------------------------------------------------ one step from the float64 run
@dataclasses.dataclass(frozen=True)
class Rounded:
    """A snapshot's weights, buffers and Adam moments rounded to one dtype, in both layouts (numpy,
    host): what a one-step check starts from. Never handed to a step as it is (steps donate or
    update their buffers in place): each step gets copies."""

    torch_state: dict[str, np.ndarray]  # torch naming
    torch_moments: tuple[dict, dict] | None  # (exp_avg, exp_avg_sq) per parameter name; None at step 0
    flax_variables: dict  # unet_jax.weights.port.torch_to_flax of torch_state
    flax_moments: tuple[dict, dict] | None  # (mu, nu) as Flax "params" trees; None at step 0


@dataclasses.dataclass
class Snapshot:
    """The float64 torch run after `step` Adam steps: weights and buffers (torch naming), Adam's
    moments per parameter name, and the loss of the step that led here (None at step 0)."""

    step: int
    state: dict[str, np.ndarray]
    exp_avg: dict[str, np.ndarray]
    exp_avg_sq: dict[str, np.ndarray]
    loss: float | None
    grads: dict[str, np.ndarray] | None = None  # step 1's gradients, Flax layout (the gradient check's reference)
    _rounded: dict = dataclasses.field(default_factory=dict, repr=False, compare=False)

    def rounded(self, config: UNetConfig, dtype) -> Rounded:
        """This snapshot rounded to `dtype` and ported, made once per dtype: the three precision
        modes start from the same float32 rounding, so the seed network's 31M-parameter state and
        moments are rounded and ported once for all three, not once per mode and framework."""
        key = np.dtype(dtype).name
        if key not in self._rounded:
            def cast(values: dict) -> dict:
                return {k: v.astype(dtype) if np.issubdtype(v.dtype, np.floating) else v for k, v in values.items()}

            state = cast(self.state)
            torch_moments = flax_moments = None
            if self.step:
                torch_moments = (cast(self.exp_avg), cast(self.exp_avg_sq))
                flax_moments = tuple(torch_to_flax({**state, **m}, config)["params"] for m in torch_moments)
            self._rounded[key] = Rounded(state, torch_moments, torch_to_flax(state, config), flax_moments)
        return self._rounded[key]


def reference_snapshots(recipe: Recipe, device: str = "cpu") -> list[Snapshot]:
    """[after 0 steps, after 1, ..., after recipe.steps] of the float64 torch Adam run on `device`."""
    if recipe.optimizer != "adam":
        raise ValueError(f"one-step checks are written for Adam, not {recipe.optimizer!r}")
    model = harness.reference_model(start(recipe), device)
    optimizer = unet_torch.make_torch_optimizer(model.parameters(), "adam", recipe.learning_rate)
    names = {id(p): n for n, p in model.named_parameters()}

    def snapshot(step: int, loss: float | None) -> Snapshot:
        moments = {names[id(p)]: s for p, s in optimizer.state.items()}

        def moment(name: str, which: str) -> np.ndarray:
            return harness.host_copy(moments[name][which]) if name in moments else np.zeros(model.get_parameter(name).shape)

        return Snapshot(step, harness.torch_state(model),
                        {n: moment(n, "exp_avg") for n in names.values()}, {n: moment(n, "exp_avg_sq") for n in names.values()},
                        loss, harness.torch_grads_as_flax(model, recipe.config) if step == 1 else None)

    snapshots = [snapshot(0, None)]
    for images, masks in batches(recipe):
        loss = unet_torch.train_step(model, optimizer, harness.torch_input(images, model), torch.from_numpy(masks).to(device))
        snapshots.append(snapshot(len(snapshots), float(loss)))
    return snapshots


def one_step_torch(recipe: Recipe, before: Snapshot, batch, prec: harness.Precision) -> tuple[float, dict, dict | None]:
    """(loss, state after, the step's gradients in Flax layout) of one `unet_torch.train_step` in
    float32 (autocast per `prec`) from the float64 run's state `before`, its weights and Adam
    moments rounded to float32. The gradients after step 1 only (as `one_step_flax`'s): later
    steps' are not checked, and reading back 31M of them costs the seed network seconds."""
    start = before.rounded(recipe.config, np.float32)

    def on_device(values: dict) -> dict:  # copies: the step updates its tensors in place
        return {k: torch.from_numpy(v).to(harness.TORCH_DEVICE, copy=True) for k, v in values.items()}

    with torch.device("meta"):  # no initialisation to pay for: every tensor comes from `before`
        model = unet_torch.UNet(**dataclasses.asdict(recipe.config))
    model.load_state_dict(on_device(start.torch_state), assign=True)
    optimizer = unet_torch.make_torch_optimizer(model.parameters(), "adam", recipe.learning_rate)
    if start.torch_moments is not None:
        exp_avg, exp_avg_sq = (on_device(m) for m in start.torch_moments)
        for name, param in model.named_parameters():
            optimizer.state[param] = {"step": torch.tensor(float(before.step)), "exp_avg": exp_avg[name],
                                      "exp_avg_sq": exp_avg_sq[name]}
    images, masks = batch
    loss = unet_torch.train_step(model, optimizer, harness.torch_input(images, model),
                                 torch.from_numpy(masks).to(harness.TORCH_DEVICE), autocast_dtype=prec.autocast_dtype)
    grads = harness.torch_grads_as_flax(model, recipe.config) if before.step == 0 else None
    return float(loss), harness.torch_state(model), grads


def one_step_flax(recipe: Recipe, before: Snapshot, batch, dtype, weights_dtype=np.float32) -> tuple[float, dict, dict]:
    """(loss, state after in torch naming, the step's gradients) of one `make_train_step` step in
    compute `dtype` from the float64 run's state `before` (weights and Adam moments as
    `weights_dtype`: float32, or float64 for the float64 comparison, under jax.enable_x64).

    The gradients are read back from Adam's first moment, which after step 1 is (1 - b1) g: so the
    gradient check costs no compilation of its own (the seed network's at 572 px takes 10-20 s on
    an H200), and checks the gradients the product's train step computed. Rounding of that
    product: 1 unit of the moments' dtype. After later steps None (the moment mixes steps)."""
    config = recipe.config
    start = before.rounded(config, weights_dtype)
    variables = jax.tree.map(jnp.array, start.flax_variables)  # copies: the step donates its state
    tx = flax_optimizer("adam", recipe.learning_rate)
    state = state_from_variables(harness.flax_model(config, dtype), tx, variables, jax.random.key(0))
    if start.flax_moments is not None:
        adam = state.opt_state[0]
        mu, nu = (jax.tree.map(jnp.array, m) for m in start.flax_moments)
        state = state.replace(step=before.step,
                              opt_state=(adam._replace(count=jnp.asarray(before.step, jnp.int32), mu=mu, nu=nu),
                                         *state.opt_state[1:]))
    images, masks = batch
    state, metrics = flax_train_step()(state, jnp.asarray(images.astype(weights_dtype)), jnp.asarray(masks))
    final = {"params": state.params, **({"batch_stats": state.batch_stats} if state.batch_stats is not None else {})}
    grads = None
    if before.step == 0:
        decay = float(ADAM_B1)
        grads = {f"params/{k}": np.divide(np.asarray(v), 1.0 - decay, dtype=np.float64)
                 for k, v in flatten_variables(state.opt_state[0].mu).items()}
    return float(metrics["loss"]), flax_to_torch(jax.tree.map(np.asarray, final), config), grads


def step_error_in_lr(state, ref, learning_rate: float, keys) -> tuple[float, float]:
    """(root-mean-square, largest) of |w - w_ref| over every entry of `keys`, in units of lr.

    Adam's step is ~lr per weight whatever the gradient's size, so lr is the natural unit: a
    weight whose (tiny) gradient's sign rounding flips is off by 2 lr, whatever the network.
    One pass over the differences serves both figures (the seed network's 31M weights)."""
    squares, largest, count = 0.0, 0.0, 0
    for key in keys:
        for diff in harness.float64_differences(state[key], ref[key]):
            squares += float(np.einsum("i,i->", diff, diff))  # not np.dot: BLAS threads on a busy CPU took 10x as long
            largest = max(largest, float(np.abs(diff, out=diff).max()))
            count += diff.size
    return (squares / count) ** 0.5 / learning_rate, largest / learning_rate
