"""The architecture a PyTorch state_dict's shapes reveal, for error messages and milesial files.

Widths and input channels come from the first conv, the depth from the number of up-convs,
the classes from the head, BatchNorm from its running statistics and the upsampling from the
up-conv's kernel. Padding leaves no trace in the weights (valid and same convs have the same
kernels), except where a naming fixes it (milesial's network is always padded).
"""

from __future__ import annotations

from typing import Any, Mapping, Optional, Sequence

from unet_jax.config import UNetConfig
from unet_jax.weights.namings import MILESIAL_ARCHITECTURE, layer_names

MAX_DEPTH = 16  # far deeper than any U-Net; bounds the search for up-convs

# The fields a naming fixes whatever the shapes (its network has no other variant).
_FIXED_BY_NAMING = {"seed": {"norm": None, "upsample": "transpose"}, "milesial": MILESIAL_ARCHITECTURE}


def infer_architecture(shapes: Mapping[str, Sequence[int]], naming: str) -> dict[str, Any]:
    """The UNetConfig fields that `shapes` ({torch key: shape}, keys in `naming`) reveal.

    Fields it can't tell are left out (always `padding`, except for milesial names); an
    empty dict when the keys don't look like a U-Net of that naming at all.
    """
    fixed = _FIXED_BY_NAMING.get(naming, {})

    def key(layer: str, tensor: str, depth: int) -> str:
        names = layer_names(UNetConfig(depth=depth, **fixed), naming)
        return f"{names.get(layer, layer)}.{tensor}"

    first = shapes.get(key("down1.conv1", "weight", 1))
    depth = 0
    while depth < MAX_DEPTH and key(f"upconv{depth + 1}", "weight", depth + 1) in shapes:
        depth += 1
    if first is None or len(first) != 4 or depth == 0:
        return {}
    fields: dict[str, Any] = {"in_channels": int(first[1]), "features": int(first[0]), "depth": depth, **fixed}
    head = shapes.get(key("head", "weight", depth))
    if head is not None and len(head) == 4:
        fields["num_classes"] = int(head[0])
    if naming == "unet_torch":
        fields["norm"] = "batch" if key("down1.norm1", "running_mean", depth) in shapes else None
        upconv = shapes[key("upconv1", "weight", depth)]
        fields["upsample"] = "transpose" if len(upconv) == 4 and upconv[-1] == 2 else "bilinear"
    return fields


def config_from_shapes(shapes: Mapping[str, Sequence[int]], naming: str) -> Optional[UNetConfig]:
    """The whole config, where the shapes and the naming reveal every field (milesial files); else None."""
    fields = infer_architecture(shapes, naming)
    names = {"in_channels", "num_classes", "features", "depth", "padding", "upsample", "norm"}
    return UNetConfig(**fields) if names <= set(fields) else None


# Flax leaf names -> unet_torch's tensor names (`port.PARAMS`), for reading a Flax file's shapes as a state_dict's.
_TORCH_NAMES = {"kernel": "weight", "scale": "weight", "bias": "bias", "mean": "running_mean", "var": "running_var",
                "num_batches_tracked": "num_batches_tracked"}


def torch_shapes_of_flax(shapes: Mapping[str, Sequence[int]]) -> dict[str, tuple[int, ...]]:
    """Flax variables' shapes ({"params/down1/conv1/kernel": (kH, kW, in, out)}) as unet_torch's
    state_dict would have them ({"down1.conv1.weight": (out, in, kH, kW)}), for `infer_architecture`
    and `flags_hint`. (A transposed conv's torch shape starts (in, out); only its kernel size is read.)"""
    torch = {}
    for key, shape in shapes.items():
        _, *path, leaf = key.split("/")
        if leaf in _TORCH_NAMES and path:
            shape = tuple(int(n) for n in shape)
            torch[".".join([*path, _TORCH_NAMES[leaf]])] = (shape[3], shape[2], *shape[:2]) if len(shape) == 4 else shape
    return torch


def flags_hint(shapes: Mapping[str, Sequence[int]], naming: str, config: UNetConfig) -> Optional[str]:
    """"The weights' shapes say features=8, depth=3 (not 16, 2): pass --features 8 --depth 3", or None."""
    fields = infer_architecture(shapes, naming)
    differ = {k: v for k, v in fields.items() if getattr(config, k) != v}
    if not differ:
        return None
    said = ", ".join(f"{k}={v!r}" for k, v in differ.items())
    had = ", ".join(repr(getattr(config, k)) for k in differ)
    flags = " ".join(f"--{k.replace('_', '-')} {'none' if v is None else v}" for k, v in differ.items())
    hint = f"The weights' shapes say {said} (the config has {had}). Fix: pass {flags}"
    if "padding" not in fields:
        hint += " (and --padding valid or same as trained: padding leaves no trace in the weights)"
    return hint
