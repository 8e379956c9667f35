"""What a run trains against: the class masks as they are, or the paper's separated targets.

With `--target-gap` or `--loss weighted-ce`, touching objects get a background gap in the target
(`--target-gap-width` pixels, the paper's 1), and `weighted-ce` weights every pixel by the
separation weight map (`--weight-w0`, `--weight-sigma`). Both come
from instance labels, computed once per image when the run starts and kept in memory for the
run (a pure function of the masks, so a resumed run recomputes the same values); never per step.
"""

from __future__ import annotations

import dataclasses
from typing import Optional

import numpy as np

from unet_jax.data.errors import DataError
from unet_jax.data.samples import NotRead, Samples
from unet_jax.data.weight_map import GAP_WIDTH, SIGMA, W0, separate_touching, separation_weights

INSTANCE_MASKS = (
    "instance masks (0 background and one id per object, 1..N, saved as 16-bit or wider PNG/TIFF, "
    "so that touching objects can be told apart)"
)


def require_instances(samples: Samples, why: str, where: Optional[str]) -> None:
    """DataError naming the first sample without instance labels, when `why` needs them."""
    missing = [name for name, instances in zip(samples.names, samples.instances) if instances is None]
    if missing:
        source = f" in {where}" if where else ""
        raise DataError(
            f"{why} needs {INSTANCE_MASKS}, but {len(missing)} of {len(samples.held)} masks{source} hold class indices "
            f"(first: the mask of {missing[0]}). Fix: give instance masks, or train with --loss ce and no --target-gap"
        )


def separated_targets(samples: Samples, weight_map: bool, w0: float = W0, sigma: float = SIGMA,
                      gap_width: int = GAP_WIDTH) -> tuple[Samples, Optional[list[np.ndarray]]]:
    """The samples with class masks gapped `gap_width` pixels between touching objects, and the weight
    map (w0, sigma) of each if `weight_map`, float32 [H, W].

    Needs `samples.instances` (see `require_instances`). Samples not read here stay `NotRead`.
    """
    gapped = [ids if isinstance(ids, NotRead) else separate_touching(ids, gap_width) for ids in samples.instances]
    masks = [labels if isinstance(labels, NotRead) else (labels > 0).astype(np.int32) for labels in gapped]
    if isinstance(samples.masks, np.ndarray):
        masks = np.stack(masks)
    weights = None
    if weight_map:
        weights = [labels if isinstance(labels, NotRead) else separation_weights(labels, w0, sigma) for labels in gapped]
    return dataclasses.replace(samples, masks=masks), weights
