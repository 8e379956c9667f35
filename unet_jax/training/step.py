"""The train state, the pure jit-compiled `(state, batch) -> (state, metrics)` train step, and its
inference-mode twin `(state, batch) -> metrics` that validation runs."""

from __future__ import annotations

from typing import Any, Callable, Optional

import flax.linen as nn
import jax
import jax.numpy as jnp
import optax
from flax.training import train_state

from unet_jax.config import OPTIMIZERS
from unet_jax.inference.metrics import segmentation_counts
from unet_jax.model.layers import center_crop


class TrainState(train_state.TrainState):
    """params, optimizer state and step (from Flax), plus BatchNorm statistics and the
    on-device augmentation key, so that the whole run state is one checkpointable pytree."""

    batch_stats: Any = None
    rng: Optional[jax.Array] = None


def make_optax_optimizer(name: str = "adam", learning_rate: float = 1e-3, momentum: float = 0.99):
    """optax twins of `unet_torch.make_torch_optimizer`: Adam (same formula as torch.optim.Adam) or SGD
    with heavy-ball momentum (optax's trace equals torch's momentum buffer)."""
    if name == "adam":
        return optax.adam(learning_rate)
    if name == "sgd":
        return optax.sgd(learning_rate, momentum=momentum)
    raise ValueError(f"optimizer must be one of {OPTIMIZERS}, got {name!r}")


def create_train_state(model: nn.Module, tx, seed: int, input_size: int) -> TrainState:
    """Fresh parameters for `model` (He init) from `seed`, and the optimizer state.

    Parameters are drawn with an "rbg" key: XLA:CPU takes 10-20 s to compile the ~30 normal
    draws of `init` under threefry's partitionable lowering (jax 0.10), rbg about 2 s. The
    augmentation key stays a plain threefry `PRNGKey(seed)`, a uint32 array that checkpoints as is.
    """
    sample = jnp.zeros((1, input_size, input_size, model.config.in_channels), model.dtype)
    variables = jax.jit(model.init)(jax.random.key(seed, impl="rbg"), sample)
    return state_from_variables(model, tx, variables, jax.random.PRNGKey(seed))


def state_from_variables(model: nn.Module, tx, variables, rng: jax.Array) -> TrainState:
    """A train state that starts from given (e.g. ported) variables; `rng` drives augmentation."""
    return TrainState.create(
        apply_fn=model.apply, params=variables["params"], tx=tx, batch_stats=variables.get("batch_stats"), rng=rng
    )


def loss_and_logits(params, batch_stats, apply_fn, images, masks, loss_fn, train: bool = True, weights=None):
    """(loss, (logits, labels, new batch_stats)): the differentiable heart of a train step.

    Masks (and per-pixel `weights`, given to losses that take them) may be larger than the
    logits, e.g. input-sized for elastic deformation: their centre is the part scored.
    """
    variables = {"params": params}
    if batch_stats is not None:
        variables["batch_stats"] = batch_stats
        logits, updates = apply_fn(variables, images, train=train, mutable=["batch_stats"])
        batch_stats = updates["batch_stats"]
    else:
        logits = apply_fn(variables, images, train=train)
    labels = center_crop(masks, logits.shape[1], logits.shape[2])
    if weights is None:
        return loss_fn(logits, labels), (logits, labels, batch_stats)
    weights = center_crop(weights, logits.shape[1], logits.shape[2])
    return loss_fn(logits, labels, weights), (logits, labels, batch_stats)


def make_train_step(loss_fn: Callable, augment: Optional[Callable] = None, jit: bool = True, shardings=None):
    """`step(state, images [N,H,W,C], masks [N,H',W'], weights [N,H',W'] = None) -> (state, metrics)`.

    `augment(key, images, masks[, weights])` runs inside the compiled step, on the device.
    `weights` (per-pixel loss weights) go to a `loss_fn(logits, labels, weights)`. The state
    is donated: the caller must use the returned state, never the one passed in. Like a jitted
    function, the step has `.lower(state, images, masks[, weights])` (its memory figures, say).
    `shardings` (`unet_jax.runtime.mesh.StepShardings`) lays the step out on a device mesh: the
    batch split, the state as given, the metrics replicated; XLA adds the collectives.
    """

    def train_step(state: TrainState, images, masks, weights=None):
        rng, augment_key = jax.random.split(state.rng)
        if augment is not None and weights is None:
            images, masks = augment(augment_key, images, masks)
        elif augment is not None:
            images, masks, weights = augment(augment_key, images, masks, weights)
        grad_fn = jax.value_and_grad(loss_and_logits, has_aux=True)
        (loss, (logits, labels, batch_stats)), grads = grad_fn(
            state.params, state.batch_stats, state.apply_fn, images, masks, loss_fn, True, weights
        )
        # optax's Adam raises its decay rates to the int32 step count (`b1 ** count`), which
        # needs JAX's standard dtype promotion; everything else here runs under "strict" too,
        # as the tests do (conftest.py).
        with jax.numpy_dtype_promotion("standard"):
            state = state.apply_gradients(grads=grads, batch_stats=batch_stats, rng=rng)
        metrics = {"loss": loss, "grad_norm": optax.tree.norm(grads), **segmentation_counts(logits, labels)}
        return state, metrics

    if not jit:
        return train_step
    if shardings is None:
        return jax.jit(train_step, donate_argnums=0)
    # With shardings every positional argument needs one, `weights` too (None holds no array).
    sharded = jax.jit(train_step, donate_argnums=0, in_shardings=(shardings.state,) + (shardings.batch,) * 3,
                      out_shardings=(shardings.state, shardings.replicated))

    def step(state, images, masks, weights=None):
        return sharded(state, images, masks, weights)

    # As jit's own: `step.lower(...).compile()` is the executable the next call runs, compiled once.
    step.lower = lambda state, images, masks, weights=None: sharded.lower(state, images, masks, weights)
    return step


def make_eval_step(loss_fn: Callable, jit: bool = True, shardings=None):
    """`eval_step(state, images [N,H,W,C], masks [N,H',W'], weights = None) -> metrics`: the train step's loss and
    per-class counts in inference mode (BatchNorm uses its running statistics; no augmentation,
    no update), plus the predicted classes `predictions` [N, h, w] of the logits' size.

    The state is only read, never donated. `shardings` as for `make_train_step`.
    """

    def eval_step(state: TrainState, images, masks, weights=None):
        loss, (logits, labels, _) = loss_and_logits(
            state.params, state.batch_stats, state.apply_fn, images, masks, loss_fn, train=False, weights=weights
        )
        return {"loss": loss, **segmentation_counts(logits, labels), "predictions": jnp.argmax(logits, axis=-1)}

    if not jit:
        return eval_step
    if shardings is None:
        return jax.jit(eval_step)
    sharded = jax.jit(eval_step, in_shardings=(shardings.state,) + (shardings.batch,) * 3, out_shardings=shardings.replicated)
    return lambda state, images, masks, weights=None: sharded(state, images, masks, weights)
