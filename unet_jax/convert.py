"""`unet-jax convert`: PyTorch <-> Flax weight files, the direction chosen by file type."""

from __future__ import annotations

from typing import Optional

from unet_jax.config import ConfigError, UNetConfig
from unet_jax.files import check_destination
from unet_jax.port import flax_to_torch, torch_to_flax, unflatten_variables
from unet_jax.weights_io import (
    TORCH_SUFFIXES,
    ArchitectureRequest,
    WeightsFileError,
    read_weights,
    resolve_config,
    save_flax_weights,
    save_torch_state_dict,
)

DIRECTIONS = ("torch-to-flax", "flax-to-torch")


def convert(
    src,
    dst,
    direction: Optional[str] = None,
    config: ArchitectureRequest = None,
    naming: str = "unet_torch",
    overwrite: bool = False,
) -> tuple[str, UNetConfig]:
    """Convert `src` to `dst`; returns (direction, config).

    Direction: `direction` if given, else what `src` holds (a Flax file converts to torch,
    a torch file to Flax). The architecture is the one stored in `src`, or `config` for a file
    without one (`weights_io.resolve_config`); `naming` picks the torch key style written by
    flax-to-torch ("unet_torch" or the seed's "seed"). `dst` must not exist unless `overwrite`,
    and is never `src`.
    """
    dst = check_destination(dst, overwrite, sources=[src])  # before any work; never the source itself
    kind, tensors, stored = read_weights(src)
    config = resolve_config(stored, config, src)
    direction = direction or ("flax-to-torch" if kind == "flax" else "torch-to-flax")
    if direction not in DIRECTIONS:
        raise ConfigError(f"direction must be one of {DIRECTIONS}, got {direction!r}")
    wanted_kind = "torch" if direction == "torch-to-flax" else "flax"
    if kind != wanted_kind:
        raise WeightsFileError(f"{src} holds {kind} weights, but the direction is {direction}")
    if direction == "torch-to-flax":
        if dst.suffix in TORCH_SUFFIXES:
            raise WeightsFileError(f"{dst}: Flax weights are written as .safetensors, not {dst.suffix}")
        save_flax_weights(torch_to_flax(tensors, config), config, dst, overwrite=overwrite)
    else:
        state_dict = flax_to_torch(unflatten_variables(tensors), config, naming=naming)
        save_torch_state_dict(state_dict, config, dst, overwrite=overwrite)
    return direction, config

