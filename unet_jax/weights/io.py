"""Weight files on disk: Flax `.safetensors`, PyTorch `.pt`/`.pth` and PyTorch `.safetensors`.

Flax weights are a flat safetensors file keyed `params/down1/conv1/kernel`, with the
architecture in the metadata (`unet_config`), so a file says what network it holds.
PyTorch `.safetensors` keep it in their metadata too, and `.pt`/`.pth` in a sidecar
(`unet_jax.weights.torch_files`); a milesial/Pytorch-UNet state_dict says it through its shapes.
Non-tensor entries of a source checkpoint (milesial's `mask_values`) travel along as `extras`.
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Any, Mapping, Optional, Union

import numpy as np

from unet_jax.config import ConfigError, MissingFileError, UNetConfig
from unet_jax.runtime.safe_files import write_atomically
from unet_jax.weights.namings import check_supported, detect_naming
from unet_jax.weights.port import PortError, flatten_variables, flax_to_torch, torch_to_flax, unflatten_variables
from unet_jax.weights.shapes import config_from_shapes
from unet_jax.weights.torch_checkpoint import WeightsFileError
from unet_jax.weights.torch_files import read_sidecar, read_torch_file, save_torch_file, sidecar_path

# A full config, the fields a caller sets (e.g. the command line's flags), or nothing.
ArchitectureRequest = Union[UNetConfig, Mapping[str, Any], None]

TORCH_SUFFIXES = (".pt", ".pth")
SAFETENSORS_SUFFIX = ".safetensors"
FLAX_COLLECTIONS = ("params", "batch_stats")


@dataclasses.dataclass
class WeightsFile:
    """What a weights file holds."""

    kind: str  # "flax" or "torch"
    tensors: dict[str, np.ndarray]  # flat: "params/down1/conv1/kernel" (flax) or torch keys
    config: Optional[UNetConfig]  # stored in the file (or its sidecar), or fixed by milesial's shapes; else None
    config_origin: str = "stores its architecture"  # how `config` is known, for messages
    extras: dict[str, Any] = dataclasses.field(default_factory=dict)  # non-tensor entries of the source checkpoint
    notes: list[str] = dataclasses.field(default_factory=list)  # what reading it did (unwrapped, kept, skipped)


def config_to_json(config: UNetConfig) -> str:
    return json.dumps(dataclasses.asdict(config), sort_keys=True)


def config_from_json(text: str, source: str) -> UNetConfig:
    try:
        return UNetConfig(**json.loads(text))
    except (TypeError, ValueError) as error:
        raise WeightsFileError(f"{source}: its stored unet_config is not valid ({error})") from None


# ----------------------------------------------------------------------- reading
def read_weights(path) -> tuple[str, dict[str, np.ndarray], Optional[UNetConfig]]:
    """('flax' | 'torch', flat tensors, config stored in the file or None); see `read_weights_file`."""
    weights = read_weights_file(path)
    return weights.kind, weights.tensors, weights.config


def read_weights_file(path) -> WeightsFile:
    """Any supported weights file, with its architecture where the file says it.

    Weights holding NaN or infinite values are refused: they come from a diverged run.
    A milesial `bilinear=True` checkpoint is refused with the reason.
    """
    path = _existing(path)
    if path.suffix in TORCH_SUFFIXES:
        checkpoint = read_torch_file(path)
        described = read_sidecar(path) or {}
        stored = described.get("unet_config")
        config = config_from_json(json.dumps(stored), str(path)) if stored else None
        stored_extras = described.get("extras")
        extras = {**(stored_extras if isinstance(stored_extras, dict) else {}), **checkpoint.extras}
        origin = f"is described by {sidecar_path(path).name}"
        weights = WeightsFile("torch", checkpoint.tensors, config, origin, extras, checkpoint.notes)
    elif path.suffix == SAFETENSORS_SUFFIX:
        tensors, metadata = _read_safetensors(path)
        stored = metadata.get("unet_config")
        config = config_from_json(stored, str(path)) if stored else None
        is_flax = metadata.get("format") == "flax" or any(k.split("/")[0] in FLAX_COLLECTIONS and "/" in k for k in tensors)
        extras = _json_entry(metadata, "extras", path)
        weights = WeightsFile("flax" if is_flax else "torch", tensors, config, extras=extras)
    else:
        raise WeightsFileError(
            f"{path}: unknown weights format {path.suffix!r}; use .safetensors (Flax or PyTorch) or .pt/.pth (PyTorch)"
        )
    _check_finite(weights.tensors, path)
    if weights.kind == "flax":
        _check_floating(weights, path)
    if weights.kind == "torch":
        check_supported(weights.tensors, str(path))
        naming = detect_naming(weights.tensors)
        if weights.config is None and naming == "milesial":  # its network has one form: the shapes say it all
            weights.config = config_from_shapes({k: v.shape for k, v in weights.tensors.items()}, naming)
            weights.config_origin = "is a milesial/Pytorch-UNet state_dict, whose shapes give its architecture"
        if naming != "unet_torch":
            weights.notes.append(f"key naming: {naming}")
    return weights


def load_variables(path, config: ArchitectureRequest = None) -> tuple[dict, UNetConfig]:
    """Any supported weights file -> (Flax variables, config).

    The config is the one stored in the file, or for a file with none (a plain PyTorch
    checkpoint) `config`, or the seed's default; see `resolve_config`. Weights that do not
    fit it raise `PortError`.
    """
    weights = read_weights_file(path)
    config = resolve_config(weights.config, config, path, weights.config_origin)
    return variables_of(weights, config), config


def variables_of(weights: WeightsFile, config: UNetConfig) -> dict:
    """The Flax variables of a weights file already read, for `config`; PortError if they do not fit it."""
    if weights.kind == "torch":
        return torch_to_flax(weights.tensors, config)
    variables = unflatten_variables(weights.tensors)
    try:
        flax_to_torch(variables, config)  # validates against the table: PortError lists every mismatch
    except PortError as error:
        if weights.config is None or weights.config != config:
            raise
        # The architecture came from the file's own metadata, which the options may not contradict: it lies.
        raise PortError(f"{error}\nThat architecture is the one the file's metadata states, and its tensors say otherwise: "
                        "the metadata is wrong. Fix: save the weights again with the architecture they were trained with "
                        "(`save_flax_weights(variables, config, path)`)") from None
    return variables


def resolve_config(stored: Optional[UNetConfig], requested: ArchitectureRequest, source,
                   origin: str = "stores its architecture") -> UNetConfig:
    """The architecture of the weights in `source`.

    `requested` is a full UNetConfig, or a mapping of just the fields a caller sets (the
    command line's architecture flags), or None. A file that stores its config is described by
    it: a requested value that contradicts it is an error, never silently ignored. A file
    without one takes the requested fields on top of the seed's defaults.
    """
    fields = dataclasses.asdict(requested) if isinstance(requested, UNetConfig) else dict(requested or {})
    if stored is None:
        return UNetConfig(**fields)
    conflicts = {k: v for k, v in fields.items() if getattr(stored, k) != v}
    if conflicts:
        given = ", ".join(f"{k}={v!r}" for k, v in conflicts.items())
        kept = ", ".join(f"{k}={getattr(stored, k)!r}" for k in conflicts)
        raise ConfigError(
            f"{source} {origin}, with {kept}; the requested {given} contradicts it. "
            "Fix: leave out the architecture options for this file (it carries its own)"
        )
    return stored


def _existing(path) -> Path:
    path = Path(path)
    if not path.is_file():
        raise MissingFileError(f"weights file {path} does not exist (or is not a file)")
    return path


def _check_finite(tensors: Mapping[str, np.ndarray], path: Path) -> None:
    bad = [k for k, v in tensors.items() if np.issubdtype(v.dtype, np.floating) and not np.all(np.isfinite(v))]
    if bad:
        raise WeightsFileError(
            f"{path}: {len(bad)} tensor(s) hold NaN or infinite values ({', '.join(bad[:3])}{', ...' if len(bad) > 3 else ''}): "
            "these weights come from a diverged run and would predict nothing. Fix: use weights saved before it diverged"
        )


def _check_floating(weights: WeightsFile, path: Path) -> None:
    """A Flax file's tensors are floating point (this project writes float32; BatchNorm's step counter
    aside): integer ones (int8: quantised weights, or another model's) are refused, float64 ones
    noted, since they are read as float32."""
    integer = [f"{k} ({v.dtype})" for k, v in weights.tensors.items()
               if not np.issubdtype(v.dtype, np.floating) and not k.endswith("num_batches_tracked")]
    if integer:
        listed = ", ".join(integer[:3]) + (", ..." if len(integer) > 3 else "")
        raise WeightsFileError(
            f"{path}: {len(integer)} tensor(s) are not floating point ({listed}), where a U-Net's weights are "
            "(quantised weights, or another model's?). Fix: save the weights as float32"
        )
    wide = [k for k, v in weights.tensors.items() if v.dtype == np.float64]
    if wide:
        weights.notes.append(f"{len(wide)} float64 tensor(s) ({wide[0]}, ...), read as float32")


def _read_safetensors(path: Path) -> tuple[dict[str, np.ndarray], dict[str, str]]:
    from safetensors import safe_open

    try:
        with safe_open(str(path), framework="numpy") as f:
            metadata = f.metadata() or {}
            return {k: f.get_tensor(k) for k in f.keys()}, metadata
    except Exception as error:  # safetensors raises its own (Rust-side) error types
        raise WeightsFileError(f"{path} is not a readable .safetensors file ({error})") from None


def _json_entry(metadata: Mapping[str, str], name: str, path: Path) -> dict:
    try:
        return json.loads(metadata.get(name, "{}"))
    except ValueError:
        raise WeightsFileError(f"{path}: its metadata entry {name!r} is not valid JSON") from None


# ----------------------------------------------------------------------- writing
def save_flax_weights(variables: Mapping, config: UNetConfig, path, overwrite: bool = False,
                      extras: Optional[Mapping[str, Any]] = None) -> Path:
    """Flax variables -> `.safetensors` (params and batch_stats), config (and any `extras`) in the metadata."""
    from safetensors.numpy import save

    flat = {k: np.asarray(v) for k, v in flatten_variables(variables).items() if k.split("/")[0] in FLAX_COLLECTIONS}
    metadata = {"format": "flax", "unet_config": config_to_json(config), **_extras_metadata(extras)}
    return _write_atomically(path, save(flat, metadata=metadata), (SAFETENSORS_SUFFIX,), overwrite)


def save_torch_state_dict(state_dict: Mapping[str, np.ndarray], config: UNetConfig, path, overwrite: bool = False,
                          naming: str = "unet_torch", extras: Optional[Mapping[str, Any]] = None) -> Path:
    """A numpy state_dict -> `.pt`/`.pth` (torch.save, described by a sidecar) or PyTorch-style `.safetensors`
    (described in its metadata): the config, the key `naming` and any `extras` travel with it."""
    path = Path(path)
    if path.suffix == SAFETENSORS_SUFFIX:
        from safetensors.numpy import save

        metadata = {"format": "pt", "unet_config": config_to_json(config), "naming": naming, **_extras_metadata(extras)}
        return _write_atomically(path, save(dict(state_dict), metadata=metadata), (SAFETENSORS_SUFFIX,), overwrite)
    if path.suffix not in TORCH_SUFFIXES:
        raise WeightsFileError(f"{path}: expected a file name ending in {' or '.join((*TORCH_SUFFIXES, SAFETENSORS_SUFFIX))}")
    description = {"unet_config": dataclasses.asdict(config), "naming": naming, "extras": dict(extras or {})}
    return save_torch_file(state_dict, description, path, overwrite)


def _extras_metadata(extras: Optional[Mapping[str, Any]]) -> dict[str, str]:
    return {"extras": json.dumps(dict(extras), sort_keys=True)} if extras else {}


def _write_atomically(path, data: bytes, suffixes: tuple[str, ...], overwrite: bool) -> Path:
    path = Path(path)
    if path.suffix not in suffixes:
        raise WeightsFileError(f"{path}: expected a file name ending in {' or '.join(suffixes)}")
    return write_atomically(path, data, overwrite)
