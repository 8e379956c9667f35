"""`unet-jax train --init-weights W`: a new run (fresh optimizer, step 0) that starts from given weights.

W is any weights file `weights_io` reads: a Flax `.safetensors`, a PyTorch `.pt`/`.pth`/
`.safetensors` in any naming (`unet_jax.weights.namings`), a training checkpoint that wraps one. Where W
says its architecture (stored, in a sidecar, or by milesial's shapes) the run takes it, and
architecture options that contradict it are an error; a plain state_dict is checked against the
preset's architecture and the options given, and a mismatch names the options to pass.

The run keeps the input normalisation the weights were trained with (`init_normalization`):
refitting it to the new data would shift every input the weights see, and an exported model
would no longer match what its original code feeds it.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any, Mapping, Optional

import jax
import jax.numpy as jnp

from unet_jax.config import TrainConfig, UNetConfig
from unet_jax.data import Normalization
from unet_jax.weights.io import WeightsFile, read_weights_file, resolve_config, variables_of
from unet_jax.weights.run_outputs import normalization_beside, weights_path

_ARCHITECTURE_FIELDS = {f.name for f in dataclasses.fields(UNetConfig)}


def with_init_architecture(options: Mapping[str, Any]) -> tuple[dict[str, Any], Optional[WeightsFile]]:
    """(the options of a new run (`--init-weights` and the rest) with the architecture of the
    `init_weights` file where it says one, and its path made absolute (a resumed run may start from
    another folder); the file as read, or None without one). The file is read here, once.
    Architecture options that contradict it are a ConfigError."""
    options = dict(options)
    if options.get("init_weights") is None:
        return options, None
    path = weights_path(Path(options["init_weights"]).absolute())  # a run directory: its weights.safetensors
    weights = read_weights_file(path)  # unreadable, diverged or unsupported weights fail here, before any data is read
    options["init_weights"] = str(path)
    if weights.config is not None:
        requested = {k: v for k, v in options.items() if k in _ARCHITECTURE_FIELDS}
        config = resolve_config(weights.config, requested, path, weights.config_origin)
        options.update(dataclasses.asdict(config))
    return options, weights


def start_from_weights(template, weights: WeightsFile, config: UNetConfig):
    """`template` (a fresh TrainState: step 0, new optimizer state) with the `weights` read from
    `--init-weights`; PortError, naming the options to pass, if they are not of `config`."""
    variables = variables_of(weights, config)

    def like(reference, tree):  # the template's dtypes: a float64 checkpoint trains in float32 like any other
        return jax.tree.map(lambda ref, value: jnp.asarray(value, dtype=ref.dtype), reference, tree)

    batch_stats = template.batch_stats
    if batch_stats is not None:
        batch_stats = like(batch_stats, variables["batch_stats"])
    return template.replace(params=like(template.params, variables["params"]), batch_stats=batch_stats)


def init_normalization(cfg: TrainConfig) -> Optional[Normalization]:
    """The normalisation of `cfg.init_weights`: a `normalization.json` beside the file (a run's
    weights), else none at all, images scaled to [0, 1] (what PyTorch U-Nets such as milesial's
    are trained on, and what `Predictor` feeds a weights file without one). None without init weights."""
    if cfg.init_weights is None:
        return None
    beside = normalization_beside(cfg.init_weights)
    if beside is not None:
        return beside
    channels = cfg.model.in_channels
    return Normalization(mean=(0.0,) * channels, std=(1.0,) * channels)
