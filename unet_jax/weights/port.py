"""Weights between PyTorch state_dicts and Flax variables, through one declarative table.

`layer_table(config)` lists every layer once: its path (shared by both frameworks: the torch
key is the path joined with dots, the Flax location is the path under a collection), its
kind, and its channels. `PARAMS[kind]` says, for each tensor of a layer of that kind, its
torch name, its Flax collection and leaf, its torch shape and the layout change each way.
`torch_to_flax` and `flax_to_torch` both walk this same table. Other PyTorch U-Nets (the
seed's, milesial/Pytorch-UNet's) name the same layers differently: `unet_jax.weights.namings` maps each
layer's path to their names, so every naming goes through this one table.

Layouts: Conv2d OIHW <-> Flax HWIO. ConvTranspose2d stores (in, out, kH, kW) and, being the
gradient of a convolution, applies the kernel spatially flipped relative to Flax's
`ConvTranspose` (which does not flip), so the kernel is flipped in H and W on the way.

Numpy arrays in and out; no torch import here (file reading lives in `unet_jax.weights.io`).
"""

from __future__ import annotations

import dataclasses
from typing import Callable, Mapping

import numpy as np
from flax.traverse_util import flatten_dict, unflatten_dict

from unet_jax.config import UNetConfig, UNetError
from unet_jax.weights.namings import check_supported, detect_naming, layer_names
from unet_jax.weights.shapes import flags_hint, torch_shapes_of_flax
from unet_jax.weights.torch_checkpoint import strip_prefixes


@dataclasses.dataclass(frozen=True)
class Layer:
    path: tuple[str, ...]  # ("down1", "conv1"): torch "down1.conv1.*", Flax [collection]["down1"]["conv1"]
    kind: str  # a key of PARAMS
    in_channels: int
    out_channels: int
    kernel_size: int = 1


@dataclasses.dataclass(frozen=True)
class Param:
    torch_name: str  # suffix of the state_dict key
    collection: str  # Flax variable collection
    leaf: str  # Flax leaf name
    torch_shape: Callable[[Layer], tuple[int, ...]]
    to_flax: Callable[[np.ndarray], np.ndarray] = lambda a: a
    to_torch: Callable[[np.ndarray], np.ndarray] = lambda a: a


def _conv_shape(layer):
    return (layer.out_channels, layer.in_channels, layer.kernel_size, layer.kernel_size)


def _conv_transpose_shape(layer):
    return (layer.in_channels, layer.out_channels, layer.kernel_size, layer.kernel_size)


def _vector(layer):
    return (layer.out_channels,)


_WEIGHT = Param("weight", "params", "kernel", _conv_shape, lambda w: w.transpose(2, 3, 1, 0), lambda k: k.transpose(3, 2, 0, 1))
_BIAS = Param("bias", "params", "bias", _vector)
_TRANSPOSED_WEIGHT = Param(
    "weight",
    "params",
    "kernel",
    _conv_transpose_shape,
    lambda w: np.flip(w.transpose(2, 3, 0, 1), (0, 1)),  # (in, out, kH, kW) -> flipped (kH, kW, in, out)
    lambda k: np.flip(k, (0, 1)).transpose(2, 3, 0, 1),
)

PARAMS: dict[str, tuple[Param, ...]] = {
    "conv": (_WEIGHT, _BIAS),
    "conv_no_bias": (_WEIGHT,),
    "conv_transpose": (_TRANSPOSED_WEIGHT, _BIAS),
    "batch_norm": (
        Param("weight", "params", "scale", _vector),
        Param("bias", "params", "bias", _vector),
        Param("running_mean", "batch_stats", "mean", _vector),
        Param("running_var", "batch_stats", "var", _vector),
        # torch counts in int64; JAX (without x64) in int32.
        Param("num_batches_tracked", "batch_stats", "num_batches_tracked", lambda layer: (),
              lambda n: n.astype(np.int32), lambda n: n.astype(np.int64)),
    ),
}


def layer_table(config: UNetConfig) -> list[Layer]:
    """Every layer of the network, in forward order."""
    cfg = config
    conv = "conv_no_bias" if cfg.norm == "batch" else "conv"
    layers: list[Layer] = []

    def block(name, in_channels, out_channels):
        for i, cin in ((1, in_channels), (2, out_channels)):
            layers.append(Layer((name, f"conv{i}"), conv, cin, out_channels, 3))
            if cfg.norm == "batch":
                layers.append(Layer((name, f"norm{i}"), "batch_norm", out_channels, out_channels))

    for level in range(1, cfg.depth + 1):
        block(f"down{level}", cfg.in_channels if level == 1 else cfg.channels(level - 2), cfg.channels(level - 1))
    block("bottom", cfg.channels(cfg.depth - 1), cfg.channels(cfg.depth))
    for step in range(1, cfg.depth + 1):
        wide, narrow = cfg.channels(cfg.depth - step + 1), cfg.channels(cfg.depth - step)
        if cfg.upsample == "transpose":
            layers.append(Layer((f"upconv{step}",), "conv_transpose", wide, narrow, 2))
        else:
            layers.append(Layer((f"upconv{step}",), "conv", wide, narrow, 1))
        block(f"up{step}", 2 * narrow, narrow)
    layers.append(Layer(("head",), "conv", cfg.features, cfg.num_classes, 1))
    return layers


class PortError(UNetError, ValueError):
    """Weights that do not fit the config; the message lists every mismatch at once."""


def _torch_entries(config: UNetConfig, naming: str):
    """(torch key, layer, param) for every tensor, in the requested naming."""
    rename = layer_names(config, naming)
    for layer in layer_table(config):
        name = ".".join(layer.path)
        for param in PARAMS[layer.kind]:
            yield f"{rename.get(name, name)}.{param.torch_name}", layer, param


def _flax_location(layer: Layer, param: Param) -> str:
    """Where a tensor lives among flattened Flax variables: "params/down1/conv1/kernel"."""
    return "/".join((param.collection, *layer.path, param.leaf))


def _raise_mismatches(what: str, config: UNetConfig, missing, unexpected, misshaped, hint=None):
    if not (missing or unexpected or misshaped):
        return
    # The fix first: a mismatch of widths lists every layer below it.
    lines = [f"{what} does not match {config}.", hint or "Check that the config (features, depth, in_channels, "
             "num_classes, norm, upsample) is the one the weights were trained with.", "Mismatches:"]
    lines += [f"  missing: {k} (expected shape {s})" for k, s in missing]
    lines += [f"  unexpected: {k} (shape {s})" for k, s in unexpected]
    lines += [f"  wrong shape: {k} is {got}, expected {want}" for k, got, want in misshaped]
    raise PortError("\n".join(lines))


def torch_to_flax(state_dict: Mapping[str, np.ndarray], config: UNetConfig) -> dict:
    """A PyTorch state_dict (any of `NAMINGS`, detected) -> Flax variables (numpy leaves).

    Strict: raises PortError listing every missing, unexpected and mis-shaped key, and the
    architecture flags the shapes imply. `module.`/`_orig_mod.` prefixes are removed; a file's
    wrappers and non-tensor entries are `torch_checkpoint.clean_checkpoint`'s job.
    """
    state_dict = {k: np.asarray(v) for k, v in strip_prefixes(state_dict)[0].items()}
    naming = detect_naming(state_dict)
    check_supported(state_dict, "this state_dict")
    flat: dict[str, np.ndarray] = {}
    missing, misshaped, seen = [], [], set()
    for key, layer, param in _torch_entries(config, naming):
        want = param.torch_shape(layer)
        if key not in state_dict:
            missing.append((key, want))
            continue
        seen.add(key)
        value = state_dict[key]
        if value.shape != want:
            misshaped.append((key, value.shape, want))
            continue
        flat[_flax_location(layer, param)] = np.array(param.to_flax(value), order="C")  # a copy; keeps 0-d scalars 0-d
    unexpected = [(k, v.shape) for k, v in state_dict.items() if k not in seen]
    if missing or unexpected or misshaped:
        hint = flags_hint({k: v.shape for k, v in state_dict.items()}, naming, config)
        _raise_mismatches(f"PyTorch state_dict ({naming} naming)", config, missing, unexpected, misshaped, hint)
    return unflatten_variables(flat)


def flax_to_torch(variables: Mapping, config: UNetConfig, naming: str = "unet_torch") -> dict[str, np.ndarray]:
    """Flax variables -> a PyTorch state_dict as numpy arrays (`torch.from_numpy` each to load).

    Strict in the same way as `torch_to_flax`; `naming` picks the key names written (`NAMINGS`;
    "seed" and "milesial" exist only for the configs those networks have).
    """
    flat = flatten_variables(variables)
    state_dict: dict[str, np.ndarray] = {}
    missing, misshaped, seen = [], [], set()
    for key, layer, param in _torch_entries(config, naming):
        location = _flax_location(layer, param)
        want = param.to_flax(np.empty(param.torch_shape(layer))).shape  # reported in Flax layout
        if location not in flat:
            missing.append((location, want))
            continue
        seen.add(location)
        value = np.asarray(flat[location])
        if value.shape != want:
            misshaped.append((location, value.shape, want))
            continue
        state_dict[key] = np.array(param.to_torch(value), order="C")
    unexpected = [(k, np.shape(v)) for k, v in flat.items() if k not in seen]
    if missing or unexpected or misshaped:
        hint = flags_hint(torch_shapes_of_flax({k: np.shape(v) for k, v in flat.items()}), "unet_torch", config)
        _raise_mismatches("Flax variables", config, missing, unexpected, misshaped, hint)
    return state_dict


def flatten_variables(variables: Mapping) -> dict[str, np.ndarray]:
    """{"params": {"head": {"bias": x}}} -> {"params/head/bias": x}, the keys of Flax weight files."""
    return flatten_dict(variables, sep="/")


def unflatten_variables(flat: Mapping[str, np.ndarray]) -> dict:
    """Inverse of `flatten_variables`."""
    return unflatten_dict(flat, sep="/")
