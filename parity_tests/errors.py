"""The error metrics of the parity tests (numpy only).

The metric used everywhere is the relative error

    rel_error(a, ref) = max|a - ref| / max|ref|

(infinity norms, computed in float64): a tolerance then means "this fraction of the largest
value", which is stable across layers whose values differ by orders of magnitude, and is not
inflated by entries that happen to be near zero the way an element-wise relative error is.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

import numpy as np


def rel_error(a, ref) -> float:
    """max|a - ref| / max|ref|, in float64; 0 when both are all zero."""
    a = np.asarray(a, np.float64)
    ref = np.asarray(ref, np.float64)
    if a.shape != ref.shape:
        raise ValueError(f"shapes differ: {a.shape} vs reference {ref.shape}")
    scale = np.abs(ref).max(initial=0.0)
    diff = np.abs(a - ref).max(initial=0.0)
    if scale == 0.0:
        return 0.0 if diff == 0.0 else math.inf
    return float(diff / scale)


def max_rel_error(tensors: Mapping[str, Any], refs: Mapping[str, Any], global_scale_keys=()) -> tuple[float, str]:
    """(largest per-tensor rel_error, the tensor it came from); keys must match exactly.

    Tensors named in `global_scale_keys` are measured against the largest max|ref| of all
    tensors instead of their own, for tensors whose exact value is 0 (see `zero_to_rounding`).
    """
    if set(tensors) != set(refs):
        raise ValueError(f"tensor names differ: {sorted(set(tensors) ^ set(refs))}")
    overall = max(float(np.abs(np.asarray(r, np.float64)).max(initial=0.0)) for r in refs.values())
    errors = {}
    for key, ref in refs.items():
        if key in global_scale_keys:
            diff = np.abs(np.asarray(tensors[key], np.float64) - np.asarray(ref, np.float64)).max(initial=0.0)
            errors[key] = float(diff / overall)
        else:
            errors[key] = rel_error(tensors[key], ref)
    worst = max(errors, key=errors.get)
    return errors[worst], worst


def global_rel_error(tensors: Mapping[str, Any], refs: Mapping[str, Any]) -> float:
    """max over tensors of max|a - ref|, divided by the largest max|ref| of all tensors.

    One scale for the whole network: insensitive to tensors whose own values are small, which
    is what low-precision modes need (there, per-tensor errors of small tensors are all noise).
    """
    if set(tensors) != set(refs):
        raise ValueError(f"tensor names differ: {sorted(set(tensors) ^ set(refs))}")
    diff = max(float(np.abs(np.asarray(tensors[k], np.float64) - np.asarray(r, np.float64)).max()) for k, r in refs.items())
    return diff / max(float(np.abs(np.asarray(r, np.float64)).max()) for r in refs.values())


def zero_to_rounding(refs: Mapping[str, Any], below: float = 1e-12) -> frozenset[str]:
    """Tensors of a float64 reference that are 0 up to rounding: max|ref| <= below * largest.

    Their own scale is rounding noise, so a relative error against it means nothing. Example:
    the gradients of the up-conv biases of a BatchNorm, valid-padding network are exactly 0,
    because BatchNorm removes the per-channel constant such a bias adds before the next conv.
    """
    scales = {k: float(np.abs(np.asarray(v, np.float64)).max(initial=0.0)) for k, v in refs.items()}
    largest = max(scales.values())
    return frozenset(k for k, s in scales.items() if s <= below * largest)
