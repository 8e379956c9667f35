"""The JAX train state every benchmark starts from, built one way: the seed's Adam (lr 1e-3)
and fresh parameters from seed 0 for `tile`-sized inputs (`unet_jax.training.step.create_train_state`)."""

from __future__ import annotations

from unet_jax.training.step import TrainState, create_train_state, make_optax_optimizer


def seed_train_state(model, tile: int) -> TrainState:
    """Parameters and Adam(1e-3) state for `model` (a `unet_jax.UNet`), seed 0."""
    return create_train_state(model, make_optax_optimizer("adam", 1e-3), 0, tile)
