"""Weight files on disk: Flax `.safetensors`, PyTorch `.pt`/`.pth` and PyTorch `.safetensors`.

Flax weights are a flat safetensors file keyed `params/down1/conv1/kernel`, with the
architecture in the metadata (`unet_config`), so a file says what network it holds.
PyTorch files are read with `torch.load(weights_only=True)`: a checkpoint can never run code.
torch is imported only here, and only when a `.pt`/`.pth` file is touched.
"""

from __future__ import annotations

import dataclasses
import json
import pickle
import warnings
import zipfile
from pathlib import Path
from typing import Any, Mapping, Optional, Union

import numpy as np

from unet_jax.config import ConfigError, MissingFileError, UNetConfig, UNetError
from unet_jax.files import write_atomically
from unet_jax.port import flatten_variables, flax_to_torch, torch_to_flax, unflatten_variables

# A full config, the fields a caller sets (e.g. the command line's flags), or nothing.
ArchitectureRequest = Union[UNetConfig, Mapping[str, Any], None]

TORCH_SUFFIXES = (".pt", ".pth")
SAFETENSORS_SUFFIX = ".safetensors"
FLAX_COLLECTIONS = ("params", "batch_stats")


class WeightsFileError(UNetError, ValueError):
    """A weights file that can't be read, or may not be written; the message names the file."""


def config_to_json(config: UNetConfig) -> str:
    return json.dumps(dataclasses.asdict(config), sort_keys=True)


def config_from_json(text: str, source: str) -> UNetConfig:
    try:
        return UNetConfig(**json.loads(text))
    except (TypeError, ValueError) as error:
        raise WeightsFileError(f"{source}: its stored unet_config is not valid ({error})") from None


# ----------------------------------------------------------------------- reading
def read_weights(path) -> tuple[str, dict[str, np.ndarray], Optional[UNetConfig]]:
    """('flax' | 'torch', flat tensors, config stored in the file or None).

    Weights holding NaN or infinite values are refused: they come from a diverged run.
    """
    path = _existing(path)
    if path.suffix in TORCH_SUFFIXES:
        kind, tensors, config = "torch", _read_torch_pickle(path), None
    elif path.suffix == SAFETENSORS_SUFFIX:
        tensors, metadata = _read_safetensors(path)
        stored = metadata.get("unet_config")
        config = config_from_json(stored, str(path)) if stored else None
        is_flax = metadata.get("format") == "flax" or any(k.split("/")[0] in FLAX_COLLECTIONS and "/" in k for k in tensors)
        kind = "flax" if is_flax else "torch"
    else:
        raise WeightsFileError(
            f"{path}: unknown weights format {path.suffix!r}; use .safetensors (Flax or PyTorch) or .pt/.pth (PyTorch)"
        )
    _check_finite(tensors, path)
    return kind, tensors, config


def load_variables(path, config: ArchitectureRequest = None) -> tuple[dict, UNetConfig]:
    """Any supported weights file -> (Flax variables, config).

    The config is the one stored in the file, or for a file with none (a plain PyTorch
    checkpoint) `config`, or the seed's default; see `resolve_config`. Weights that do not
    fit it raise `PortError`.
    """
    kind, tensors, stored = read_weights(path)
    config = resolve_config(stored, config, path)
    if kind == "torch":
        return torch_to_flax(tensors, config), config
    variables = unflatten_variables(tensors)
    flax_to_torch(variables, config)  # validates against the table: PortError lists every mismatch
    return variables, config


def resolve_config(stored: Optional[UNetConfig], requested: ArchitectureRequest, source) -> UNetConfig:
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
            f"{source} stores its architecture, with {kept}; the requested {given} contradicts it. "
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


def _read_safetensors(path: Path) -> tuple[dict[str, np.ndarray], dict[str, str]]:
    from safetensors import safe_open

    try:
        with safe_open(str(path), framework="numpy") as f:
            metadata = f.metadata() or {}
            return {k: f.get_tensor(k) for k in f.keys()}, metadata
    except Exception as error:  # safetensors raises its own (Rust-side) error types
        raise WeightsFileError(f"{path} is not a readable .safetensors file ({error})") from None


def _read_torch_pickle(path: Path) -> dict[str, np.ndarray]:
    import torch

    try:
        with warnings.catch_warnings():
            # A pickle of another protocol than torch.save's draws a warning before the error we report.
            warnings.filterwarnings("ignore", message="Detected pickle protocol")
            loaded = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as error:
        # torch prefixes every weights-only failure alike, advising weights_only=False, which
        # would run whatever code the file holds: that advice is never passed on.
        if "unsupported global" in str(error).lower():
            raise WeightsFileError(
                f"{path} holds pickled objects other than tensors (which could run code), so it was refused. "
                "If you trust it, re-save just its weights: torch.save(model.state_dict(), 'clean.pt')."
            ) from None
        if not zipfile.is_zipfile(path) and path.read_bytes()[:1] == pickle.PROTO:
            raise WeightsFileError(
                f"{path} is a plain Python pickle, not a file saved with torch.save, so it can't be read without "
                "running code. Fix: where it was made, save just the weights: torch.save(model.state_dict(), 'weights.pt')"
            ) from None
        raise WeightsFileError(f"{path} is not a readable PyTorch checkpoint ({_unpickler_reason(error)})") from None
    except Exception as error:  # torch raises RuntimeError, EOFError, zipfile errors, ...
        raise WeightsFileError(f"{path} is not a readable PyTorch checkpoint ({type(error).__name__}: {error})") from None
    state_dict = _unwrap_state_dict(loaded, path)
    return {k: _tensor_to_numpy(v) for k, v in state_dict.items()}


def _unpickler_reason(error: pickle.UnpicklingError) -> str:
    """The specific reason in torch's weights-only message, without its boilerplate."""
    text = str(error)
    if "WeightsUnpickler error:" in text:
        text = text.split("WeightsUnpickler error:", 1)[1].split("Check the documentation", 1)[0]
    return " ".join(text.split()) or "unreadable pickle"


def _unwrap_state_dict(loaded, path: Path) -> Mapping:
    # Training scripts often save {"state_dict": ..., "epoch": ...} or {"model_state_dict": ...}.
    if isinstance(loaded, Mapping):
        for key in ("state_dict", "model_state_dict", "model"):
            if isinstance(loaded.get(key), Mapping):
                loaded = loaded[key]
                break
    if not isinstance(loaded, Mapping) or not all(hasattr(v, "detach") for v in loaded.values()):
        raise WeightsFileError(
            f"{path} does not hold a state_dict (a mapping of names to tensors); "
            "save one with torch.save(model.state_dict(), path)"
        )
    return loaded


def _tensor_to_numpy(tensor) -> np.ndarray:
    import torch

    tensor = tensor.detach().cpu()
    if tensor.dtype == torch.bfloat16:  # numpy has no bfloat16
        tensor = tensor.float()
    return tensor.numpy()


# ----------------------------------------------------------------------- writing
def save_flax_weights(variables: Mapping, config: UNetConfig, path, overwrite: bool = False) -> Path:
    """Flax variables -> `.safetensors` (params and batch_stats), config in the metadata."""
    from safetensors.numpy import save

    flat = {k: np.asarray(v) for k, v in flatten_variables(variables).items() if k.split("/")[0] in FLAX_COLLECTIONS}
    metadata = {"format": "flax", "unet_config": config_to_json(config)}
    return _write_atomically(path, save(flat, metadata=metadata), (SAFETENSORS_SUFFIX,), overwrite)


def save_torch_state_dict(state_dict: Mapping[str, np.ndarray], config: UNetConfig, path, overwrite: bool = False) -> Path:
    """A numpy state_dict -> `.pt`/`.pth` (torch.save) or PyTorch-style `.safetensors`."""
    path = Path(path)
    if path.suffix == SAFETENSORS_SUFFIX:
        from safetensors.numpy import save

        metadata = {"format": "pt", "unet_config": config_to_json(config)}
        return _write_atomically(path, save(dict(state_dict), metadata=metadata), (SAFETENSORS_SUFFIX,), overwrite)
    import io

    import torch

    buffer = io.BytesIO()
    torch.save({k: torch.from_numpy(np.array(v)) for k, v in state_dict.items()}, buffer)
    return _write_atomically(path, buffer.getvalue(), TORCH_SUFFIXES, overwrite)


def _write_atomically(path, data: bytes, suffixes: tuple[str, ...], overwrite: bool) -> Path:
    path = Path(path)
    if path.suffix not in suffixes:
        raise WeightsFileError(f"{path}: expected a file name ending in {' or '.join(suffixes)}")
    return write_atomically(path, data, overwrite)
