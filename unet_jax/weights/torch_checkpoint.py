"""What real PyTorch checkpoints wrap their state_dict in, and how to get the weights out.

Training scripts save more than `model.state_dict()`: `{"model": ..., "optimizer": ...,
"epoch": ...}` wrappers, key prefixes from `torch.compile` (`_orig_mod.`) and
DataParallel/DistributedDataParallel (`module.`), and non-tensor entries inside the state_dict
(milesial/Pytorch-UNet adds `mask_values`, the pixel value of each class in its masks).
`clean_checkpoint` keeps the tensors, keeps the non-tensor entries as `extras` (carried in the
files this project writes, and reported), and reports what it skipped.

Duck-typed (a tensor is anything with a shape and a dtype): no torch import here.
"""

from __future__ import annotations

import dataclasses
import json
from typing import Any, Mapping

from unet_jax.config import UNetError

WRAPPER_KEYS = ("state_dict", "model_state_dict", "model")  # where training scripts put the weights
PREFIXES = ("module.", "_orig_mod.")  # DataParallel/DDP, torch.compile; either may wrap the other


class WeightsFileError(UNetError, ValueError):
    """A weights file that can't be read, or may not be written; the message names the file.
    (Defined here, the lowest of the weight-file modules, so that all of them can raise it.)"""


@dataclasses.dataclass
class CleanCheckpoint:
    tensors: dict[str, Any]  # torch key -> tensor, prefixes removed
    extras: dict[str, Any]  # non-tensor entries of the state_dict (JSON values), e.g. {"mask_values": [0, 1]}
    notes: list[str]  # what was unwrapped, removed and skipped, for the user


def is_tensor(value) -> bool:
    return hasattr(value, "shape") and hasattr(value, "dtype")


def clean_checkpoint(loaded: Any, source: str) -> CleanCheckpoint:
    """The state_dict inside `loaded` (what torch.load returned), cleaned; see the module docstring."""
    notes = []
    if isinstance(loaded, Mapping):
        for wrapper in WRAPPER_KEYS:
            inner = loaded.get(wrapper)
            if isinstance(inner, Mapping) and any(is_tensor(v) for v in inner.values()):
                skipped = [str(k) for k in loaded if k != wrapper]
                notes.append(f"took the weights from its {wrapper!r} entry" + (f", skipped {', '.join(skipped)}" if skipped else ""))
                loaded = inner
                break
    if not isinstance(loaded, Mapping) or not any(is_tensor(v) for v in loaded.values()):
        held = f" (it holds {_describe(loaded)})"
        raise WeightsFileError(
            f"{source} does not hold a state_dict (a mapping of names to tensors){held}; "
            f"save one with torch.save(model.state_dict(), path), or wrap it as one of {', '.join(map(repr, WRAPPER_KEYS))}"
        )
    tensors, removed = strip_prefixes({k: v for k, v in loaded.items() if is_tensor(v)})
    if removed:
        notes.append(f"removed the key prefix {''.join(removed)!r}")
    extras = {}
    for key, value in loaded.items():
        if is_tensor(value):
            continue
        if _is_json(value):
            extras[str(key)] = value
            notes.append(f"kept its non-tensor entry {key}={json.dumps(value)}")
        else:
            notes.append(f"skipped its non-tensor entry {key} ({type(value).__name__})")
    return CleanCheckpoint(tensors, extras, notes)


def strip_prefixes(state_dict: Mapping[str, Any]) -> tuple[dict[str, Any], list[str]]:
    """Remove `module.` / `_orig_mod.` (in any nesting) where every key carries it; returns (state_dict, removed)."""
    state_dict, removed = dict(state_dict), []
    while state_dict:
        prefix = next((p for p in PREFIXES if all(k.startswith(p) for k in state_dict)), None)
        if prefix is None:
            break
        state_dict = {k[len(prefix) :]: v for k, v in state_dict.items()}
        removed.append(prefix)
    return state_dict, removed


def _is_json(value) -> bool:
    try:
        json.dumps(value)
    except (TypeError, ValueError):
        return False
    return True


def _describe(loaded) -> str:
    if isinstance(loaded, Mapping):
        keys = list(loaded)
        return "the entries " + ", ".join(map(str, keys[:8])) + (", ..." if len(keys) > 8 else "") if keys else "an empty mapping"
    return f"a {type(loaded).__name__}"
