"""The error metrics of the parity tests (numpy only).

The metric used everywhere is the relative error

    rel_error(a, ref) = max|a - ref| / max|ref|

(infinity norms, computed in float64): a tolerance then means "this fraction of the largest
value", which is stable across layers whose values differ by orders of magnitude, and is not
inflated by entries that happen to be near zero the way an element-wise relative error is.
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Mapping
from typing import Any

import numpy as np


def rel_error(a, ref) -> float:
    """max|a - ref| / max|ref|, in float64; 0 when both are all zero."""
    a, ref = np.asarray(a), np.asarray(ref)
    if a.shape != ref.shape:
        raise ValueError(f"shapes differ: {a.shape} vs reference {ref.shape}")
    scale, diff = abs_max(ref), max_abs_diff(a, ref)
    if scale == 0.0:
        return 0.0 if diff == 0.0 else math.inf
    return diff / scale


# The reductions every metric is made of, written for the seed network's 31M-parameter states
# (its one-step checks compare ~10 of them per test): differences are taken in float64, a chunk
# at a time in one reused buffer. A whole-tensor temporary (75 MB for its largest) is fresh
# memory every time, and faulting it in cost as much as the arithmetic (timed on a 2-core CPU).
DIFF_CHUNK = 1 << 20  # entries: an 8 MB buffer


def float64_differences(a, ref) -> Iterator[np.ndarray]:
    """a - ref in float64, flattened, one chunk after another (each chunk is overwritten by the
    next: reduce it before asking for more). Shapes must match."""
    a, ref = _numeric(a), _numeric(ref)
    if a.shape != ref.shape:
        raise ValueError(f"shapes differ: {a.shape} vs reference {ref.shape}")
    a, ref = a.reshape(-1), ref.reshape(-1)
    buffer = np.empty(min(a.size, DIFF_CHUNK), np.float64)
    for start in range(0, a.size, DIFF_CHUNK):
        chunk = buffer[:min(DIFF_CHUNK, a.size - start)]
        np.subtract(a[start:start + DIFF_CHUNK], ref[start:start + DIFF_CHUNK], out=chunk)
        yield chunk


def _numeric(a) -> np.ndarray:
    """numpy floats as they are; anything else (bfloat16, integers, jax arrays) as float64."""
    a = np.asarray(a)
    return a if a.dtype.kind == "f" else a.astype(np.float64)


def abs_max(a) -> float:
    """max|a| (0 for an empty array), without a temporary |a|."""
    a = _numeric(a)
    return float(max(a.max(), -a.min())) if a.size else 0.0


def max_abs_diff(a, ref) -> float:
    """max|a - ref| in float64 (0 for empty arrays)."""
    return max((float(np.abs(d, out=d).max()) for d in float64_differences(a, ref)), default=0.0)


def max_rel_error(tensors: Mapping[str, Any], refs: Mapping[str, Any], global_scale_keys=()) -> tuple[float, str]:
    """(largest per-tensor rel_error, the tensor it came from); keys must match exactly.

    Tensors named in `global_scale_keys` are measured against the largest max|ref| of all
    tensors instead of their own, for tensors whose exact value is 0 (see `zero_to_rounding`).
    """
    if set(tensors) != set(refs):
        raise ValueError(f"tensor names differ: {sorted(set(tensors) ^ set(refs))}")
    overall = max(abs_max(r) for r in refs.values())
    errors = {}
    for key, ref in refs.items():
        if key in global_scale_keys:
            errors[key] = max_abs_diff(tensors[key], ref) / overall
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
    return max(max_abs_diff(tensors[k], r) for k, r in refs.items()) / max(abs_max(r) for r in refs.values())


def zero_to_rounding(refs: Mapping[str, Any], below: float = 1e-12) -> frozenset[str]:
    """Tensors of a float64 reference that are 0 up to rounding: max|ref| <= below * largest.

    Their own scale is rounding noise, so a relative error against it means nothing. Example:
    the gradients of the up-conv biases of a BatchNorm, valid-padding network are exactly 0,
    because BatchNorm removes the per-channel constant such a bias adds before the next conv.
    """
    scales = {k: float(np.abs(np.asarray(v, np.float64)).max(initial=0.0)) for k, v in refs.items()}
    largest = max(scales.values())
    return frozenset(k for k, s in scales.items() if s <= below * largest)
