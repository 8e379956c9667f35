"""Weight files on disk: Flax `.safetensors`, PyTorch `.pt`/`.pth` and PyTorch `.safetensors`.

Flax weights are a flat safetensors file keyed `params/down1/conv1/kernel`, with the
architecture in the metadata (`unet_config`), so a file says what network it holds.
PyTorch files are read with `torch.load(weights_only=True)`: a checkpoint can never run code.
torch is imported only here, and only when a `.pt`/`.pth` file is touched.
"""

from __future__ import annotations

import dataclasses
import json
import os
import pickle
import tempfile
from pathlib import Path
from typing import Mapping, Optional

import numpy as np

from unet_jax.config import UNetConfig
from unet_jax.port import flatten_variables, flax_to_torch, torch_to_flax, unflatten_variables

TORCH_SUFFIXES = (".pt", ".pth")
SAFETENSORS_SUFFIX = ".safetensors"
FLAX_COLLECTIONS = ("params", "batch_stats")


class WeightsFileError(ValueError):
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
    """('flax' | 'torch', flat tensors, config stored in the file or None)."""
    path = _existing(path)
    if path.suffix in TORCH_SUFFIXES:
        return "torch", _read_torch_pickle(path), None
    if path.suffix == SAFETENSORS_SUFFIX:
        tensors, metadata = _read_safetensors(path)
        stored = metadata.get("unet_config")
        config = config_from_json(stored, str(path)) if stored else None
        is_flax = metadata.get("format") == "flax" or any(k.split("/")[0] in FLAX_COLLECTIONS and "/" in k for k in tensors)
        return ("flax" if is_flax else "torch"), tensors, config
    raise WeightsFileError(
        f"{path}: unknown weights format {path.suffix!r}; use .safetensors (Flax or PyTorch) or .pt/.pth (PyTorch)"
    )


def load_variables(path, config: Optional[UNetConfig] = None) -> tuple[dict, UNetConfig]:
    """Any supported weights file -> (Flax variables, config).

    The config stored in the file wins over `config`; a file with none (a plain PyTorch
    checkpoint) uses `config`, or the seed's default. Mismatches raise `PortError`.
    """
    kind, tensors, stored = read_weights(path)
    config = stored or config or UNetConfig()
    if kind == "torch":
        return torch_to_flax(tensors, config), config
    variables = unflatten_variables(tensors)
    flax_to_torch(variables, config)  # validates against the table: PortError lists every mismatch
    return variables, config


def _existing(path) -> Path:
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"weights file {path} does not exist (or is not a file)")
    return path


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
        loaded = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as error:
        # torch prefixes every weights-only failure alike; only a disallowed global means "code".
        if "unsupported global" in str(error).lower():
            raise WeightsFileError(
                f"{path} holds pickled objects other than tensors (which could run code), so it was refused. "
                "If you trust it, re-save just its weights: torch.save(model.state_dict(), 'clean.pt')."
            ) from None
        raise WeightsFileError(f"{path} is not a readable PyTorch checkpoint ({error})") from None
    except Exception as error:  # torch raises RuntimeError, EOFError, zipfile errors, ...
        raise WeightsFileError(f"{path} is not a readable PyTorch checkpoint ({type(error).__name__}: {error})") from None
    state_dict = _unwrap_state_dict(loaded, path)
    return {k: _tensor_to_numpy(v) for k, v in state_dict.items()}


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
    # Write to a temporary file beside the target, then rename: a crash never leaves half a file,
    # and an existing file is only replaced when asked.
    path = Path(path)
    if path.suffix not in suffixes:
        raise WeightsFileError(f"{path}: expected a file name ending in {' or '.join(suffixes)}")
    if path.exists() and not overwrite:
        raise WeightsFileError(f"{path} already exists; pass overwrite=True (CLI: --overwrite) to replace it")
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path
