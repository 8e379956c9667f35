"""Label images from a predicted foreground: one id per object, objects grown back to their extent.

A network trained with the paper's weight map leaves a background gap between touching cells,
and draws it wider than the one-pixel gap of its targets: the gap keeps the cells apart, but
it also trims each cell's facing edges, which costs pixel IoU. So the objects are
  1. the connected components of the predicted foreground, 4-connected (scipy.ndimage.label's
     default, as `instance_metrics` counts them): a one-pixel line, even a diagonal one,
     separates two objects;
  2. optionally without those smaller than `min_size` pixels (specks of false foreground);
  3. each grown over the background pixels nearest to it, up to `growth_distance` pixels
     (Euclidean, from pixel centre to pixel centre): a background pixel takes the id of the
     object pixel nearest to it (scipy's exact distance transform gives that pixel), so a gap
     between two objects is shared between them along its middle and never joins them;
  4. where the foreground probability is known, growth claims only background pixels where it
     exceeds `extent_threshold`: the network's trimmed edges keep a small foreground
     probability (measured: about 0.05 to 0.5 there), true background a smaller one, so the
     objects regain their edges without spilling into the background around them.
Ids are dense, 1..N in the order scipy labels them (row-major first pixel); 0 is background.
Pure numpy/scipy: the labels of a tiled prediction are made after its class map is stitched,
so tile seams cannot split an object.
"""

from __future__ import annotations

import dataclasses
from typing import Optional

import numpy as np
from scipy import ndimage

from unet_jax.config import ConfigError
from unet_jax.inference.instance_defaults import DEFAULT_EXTENT_THRESHOLD, DEFAULT_GROWTH_DISTANCE, DEFAULT_MIN_SIZE

UINT16_MAX_OBJECTS = np.iinfo(np.uint16).max


def label_dtype(num_objects: int) -> np.dtype:
    """uint16 for up to 65,535 objects, uint32 beyond: the narrowest that holds every id."""
    return np.dtype(np.uint16 if num_objects <= UINT16_MAX_OBJECTS else np.uint32)


def foreground_objects(foreground: np.ndarray, min_size: int = DEFAULT_MIN_SIZE) -> tuple[np.ndarray, int]:
    """Connected components of a bool map [H, W] without those under `min_size` pixels:
    (labels int32 [H, W] with dense ids 1..N, N)."""
    foreground = np.asarray(foreground, bool)
    if foreground.ndim != 2:
        raise ValueError(f"a foreground map must be [H, W], got shape {foreground.shape}")
    if min_size < 0:
        raise ValueError(f"min_size must be >= 0 pixels, got {min_size}")
    components, count = ndimage.label(foreground)
    if min_size > 1 and count:
        sizes = np.bincount(components.ravel(), minlength=count + 1)
        kept = sizes >= min_size
        kept[0] = False
        new_ids = np.zeros(count + 1, np.int32)
        new_ids[kept] = np.arange(1, int(kept.sum()) + 1)  # dense again, in the same order
        components, count = new_ids[components], int(kept.sum())
    return components.astype(np.int32, copy=False), int(count)


def grow_labels(labels: np.ndarray, growth_distance: float, claimable: Optional[np.ndarray] = None) -> np.ndarray:
    """Each object of `labels` [H, W] (0 background) grown over the background within
    `growth_distance` pixels of it, every such pixel taking the id of its nearest object pixel;
    `claimable` (bool [H, W], default all): the only background pixels growth may take."""
    labels = np.asarray(labels)
    if growth_distance < 0:
        raise ValueError(f"growth_distance must be >= 0 pixels, got {growth_distance}")
    background = labels == 0
    if growth_distance == 0 or background.all() or not background.any():
        return labels.copy()
    distance, (rows, cols) = ndimage.distance_transform_edt(background, return_indices=True)
    grown = labels.copy()
    reached = background & (distance <= growth_distance)
    if claimable is not None:
        reached &= np.asarray(claimable, bool)
    grown[reached] = labels[rows[reached], cols[reached]]
    return grown


def instance_labels(foreground: np.ndarray, growth_distance: float = DEFAULT_GROWTH_DISTANCE,
                    min_size: int = DEFAULT_MIN_SIZE, claimable: Optional[np.ndarray] = None) -> np.ndarray:
    """Label image [H, W] of a predicted foreground (bool [H, W]): uint16, uint32 past 65,535
    objects; 0 background, ids 1..N dense. `claimable`: as for `grow_labels`."""
    objects, count = foreground_objects(foreground, min_size)
    return grow_labels(objects, growth_distance, claimable).astype(label_dtype(count))


@dataclasses.dataclass(frozen=True)
class InstanceRule:
    """How a prediction becomes objects: `--growth-distance`, `--min-object-size` and
    `--extent-threshold` of the command line."""

    growth_distance: float = DEFAULT_GROWTH_DISTANCE
    min_size: int = DEFAULT_MIN_SIZE
    extent_threshold: float = DEFAULT_EXTENT_THRESHOLD

    def __post_init__(self):
        if not self.growth_distance >= 0:  # also refuses NaN
            raise ConfigError(f"the growth distance must be >= 0 pixels (--growth-distance), got {self.growth_distance}")
        if self.min_size < 0:
            raise ConfigError(f"the minimum object size must be >= 0 pixels (--min-object-size), got {self.min_size}")
        if not 0 <= self.extent_threshold < 0.5:  # at 0.5 and above growth could claim nothing argmax left out
            raise ConfigError(f"the extent threshold must be in [0, 0.5) (--extent-threshold), got {self.extent_threshold}")

    def labels(self, foreground: np.ndarray, foreground_probability: Optional[np.ndarray] = None) -> np.ndarray:
        """`instance_labels` of one page: foreground bool [H, W] (the class map's class 1) and, where
        known, the foreground probability float [H, W], which limits growth to where it exceeds
        `extent_threshold` (unknown or threshold 0: growth is limited by the distance alone)."""
        claimable = None
        if foreground_probability is not None and self.extent_threshold > 0:
            claimable = np.asarray(foreground_probability) > self.extent_threshold
        return instance_labels(foreground, self.growth_distance, self.min_size, claimable)

    def label_pages(self, foreground_pages: np.ndarray, probability_pages: Optional[np.ndarray] = None) -> np.ndarray:
        """One label page per page of a stack [N, H, W] (pages are labelled apart, never joined
        through the stack), all pages in the dtype the page with the most objects needs."""
        probabilities = [None] * len(foreground_pages) if probability_pages is None else probability_pages
        pages = [self.labels(page, p) for page, p in zip(np.asarray(foreground_pages, bool), probabilities)]
        dtype = max((page.dtype for page in pages), key=lambda d: d.itemsize)
        return np.stack([page.astype(dtype) for page in pages])
