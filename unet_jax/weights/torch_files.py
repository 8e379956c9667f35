"""PyTorch `.pt`/`.pth` files: reading them safely, and writing them self-described.

Reading uses `torch.load(weights_only=True)`, so a checkpoint can never run code, then
`torch_checkpoint.clean_checkpoint` takes the state_dict out of whatever wraps it.

A `.pt` holds a plain state_dict, loadable with `model.load_state_dict(torch.load(path,
weights_only=True))`. What a state_dict can't hold (the architecture, the key naming, a source
checkpoint's non-tensor entries such as milesial's `mask_values`) goes to a sidecar beside it,
`model.pt.json`, with the .pt's SHA-256 so that a sidecar left beside a replaced .pt is noticed.
torch is imported only here, and only when such a file is touched.
"""

from __future__ import annotations

import hashlib
import io
import json
import pickle
import warnings
import zipfile
from pathlib import Path
from typing import Any, Mapping, Optional

import numpy as np

from unet_jax.runtime.safe_files import check_destination, write_atomically
from unet_jax.weights.torch_checkpoint import CleanCheckpoint, WeightsFileError, clean_checkpoint

SIDECAR_SUFFIX = ".json"  # appended: model.pt -> model.pt.json


def sidecar_path(path) -> Path:
    path = Path(path)
    return path.with_name(path.name + SIDECAR_SUFFIX)


# ----------------------------------------------------------------------- reading
def read_torch_file(path: Path) -> CleanCheckpoint:
    """The cleaned state_dict of a `.pt`/`.pth` file, tensors as numpy arrays."""
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
    checkpoint = clean_checkpoint(loaded, str(path))
    checkpoint.tensors = {k: _tensor_to_numpy(v) for k, v in checkpoint.tensors.items()}
    return checkpoint


def read_sidecar(path: Path) -> Optional[dict]:
    """The sidecar of the .pt `path` ({"unet_config": {...}, "naming": ..., "extras": {...}}), or None if it has none."""
    sidecar = sidecar_path(path)
    if not sidecar.is_file():
        return None
    try:
        described = json.loads(sidecar.read_text())
        described["unet_config"]  # noqa: B018 (the one entry a sidecar must have)
    except (OSError, ValueError, TypeError, KeyError) as error:
        raise WeightsFileError(
            f"{sidecar} (the description of {path.name}) is not readable ({type(error).__name__}: {error}). "
            f"Fix: delete it and pass the architecture options for {path.name}"
        ) from None
    if described.get("sha256") != _sha256(path.read_bytes()):
        raise WeightsFileError(
            f"{sidecar} describes another version of {path.name}: the file was replaced after the description was "
            f"written. Fix: delete {sidecar} and pass the architecture options for {path.name}"
        )
    return described


def _unpickler_reason(error: pickle.UnpicklingError) -> str:
    """The specific reason in torch's weights-only message, without its boilerplate."""
    text = str(error)
    if "WeightsUnpickler error:" in text:
        text = text.split("WeightsUnpickler error:", 1)[1].split("Check the documentation", 1)[0]
    return " ".join(text.split()) or "unreadable pickle"


def _tensor_to_numpy(tensor) -> np.ndarray:
    import torch

    tensor = tensor.detach().cpu()
    if tensor.dtype == torch.bfloat16:  # numpy has no bfloat16
        tensor = tensor.float()
    return tensor.numpy()


# ----------------------------------------------------------------------- writing
def save_torch_file(state_dict: Mapping[str, np.ndarray], description: Mapping[str, Any], path, overwrite: bool) -> Path:
    """A numpy state_dict -> `path` (torch.save of plain tensors) and `description` -> its sidecar.

    Both destinations are checked before either is written; each is written atomically.
    """
    import torch

    path, sidecar = Path(path), sidecar_path(path)
    check_destination(path, overwrite)
    check_destination(sidecar, overwrite)
    buffer = io.BytesIO()
    torch.save({k: torch.from_numpy(np.array(v)) for k, v in state_dict.items()}, buffer)
    data = buffer.getvalue()
    write_atomically(path, data, overwrite)
    text = json.dumps({**description, "sha256": _sha256(data)}, indent=1, sort_keys=True) + "\n"
    write_atomically(sidecar, text.encode(), overwrite)
    return path


def _sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()
