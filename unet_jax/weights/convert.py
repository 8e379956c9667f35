"""`unet-jax convert`: PyTorch <-> Flax weight files, the direction chosen by file type."""

from __future__ import annotations

from typing import Callable, Optional

from unet_jax.config import ConfigError, UNetConfig
from unet_jax.runtime.safe_files import check_destination
from unet_jax.weights.io import (
    TORCH_SUFFIXES,
    ArchitectureRequest,
    WeightsFileError,
    read_weights_file,
    resolve_config,
    save_flax_weights,
    save_torch_state_dict,
)
from unet_jax.weights.namings import DIRECTIONS
from unet_jax.weights.port import flax_to_torch, torch_to_flax, unflatten_variables
from unet_jax.weights.run_outputs import weights_path
from unet_jax.weights.torch_files import sidecar_path


def convert(
    src,
    dst,
    direction: Optional[str] = None,
    config: ArchitectureRequest = None,
    naming: str = "unet_torch",
    overwrite: bool = False,
    report: Callable[[str], None] = lambda line: None,
) -> tuple[str, UNetConfig]:
    """Convert `src` to `dst`; returns (direction, config).

    Direction: `direction` if given, else what `src` holds (a Flax file converts to torch,
    a torch file to Flax). The architecture is the one stored in `src`, or `config` for a file
    without one (`weights_io.resolve_config`); `naming` picks the torch key style written by
    flax-to-torch (`namings.NAMINGS`; torch-to-flax detects it). `dst` must not exist unless
    `overwrite`, and is never `src`, which may be a run directory (its weights.safetensors).
    Non-tensor entries of the source (milesial's `mask_values`) are carried into `dst` (Flax
    metadata, a .pt's sidecar); `report` is told what was kept and what was skipped.
    """
    src = weights_path(src)  # a run directory: its weights.safetensors, as predict and evaluate take it
    dst = check_destination(dst, overwrite, sources=[src])  # before any work; never the source itself
    weights = read_weights_file(src)
    kind, tensors = weights.kind, weights.tensors
    config = resolve_config(weights.config, config, src, weights.config_origin)
    direction = direction or ("flax-to-torch" if kind == "flax" else "torch-to-flax")
    if direction not in DIRECTIONS:
        raise ConfigError(f"direction must be one of {DIRECTIONS}, got {direction!r}")
    wanted_kind = "torch" if direction == "torch-to-flax" else "flax"
    if kind != wanted_kind:
        raise WeightsFileError(f"{src} holds {kind} weights, but the direction is {direction}")
    if direction == "torch-to-flax":
        if dst.suffix in TORCH_SUFFIXES:
            raise WeightsFileError(f"{dst}: Flax weights are written as .safetensors, not {dst.suffix}")
        save_flax_weights(torch_to_flax(tensors, config), config, dst, overwrite=overwrite, extras=weights.extras)
    else:
        state_dict = flax_to_torch(unflatten_variables(tensors), config, naming=naming)
        save_torch_state_dict(state_dict, config, dst, overwrite=overwrite, naming=naming, extras=weights.extras)
    for note in weights.notes:
        report(f"{src}: {note}")
    if weights.extras:
        where = "its sidecar " + str(sidecar_path(dst)) if dst.suffix in TORCH_SUFFIXES else "its metadata"
        report(f"{dst}: carries {', '.join(weights.extras)} in {where}")
    return direction, config

