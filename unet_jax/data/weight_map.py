"""The U-Net paper's separation weight map, and the one-pixel gap it asks for between touching cells.

Ronneberger et al. (2015), eq. 2:

    w(x) = w_c(x) + w0 * exp(-(d1(x) + d2(x))^2 / (2 sigma^2))

w_c balances the class frequencies; d1 and d2 are the distances to the border of the nearest
and the second-nearest cell. The second term is large only in the narrow background between
two close cells, which is what the network must learn to leave unlabelled to keep them apart.

Choices where the paper is silent (each stated in the README):
  - w_c(x) = N / (K * n_c) for the class c of pixel x (N pixels, K classes present, n_c pixels
    of class c in this image): every class carries the same total weight, and w_c averages 1.
  - The separation term is applied to background pixels only: inside a cell "the nearest cell"
    is the cell itself, and the paper's figure 3d shows the weight on the gaps, not inside cells.
  - d is the Euclidean distance from the pixel's centre to the nearest pixel centre of the cell
    (scipy's exact distance transform), so background touching a cell has d = 1.
  - With fewer than two cells in the image there is no second cell: the separation term is 0.
  - Terms below 1e-6 * w0 (background farther than ~27 px from the second-nearest cell at
    sigma 5) are 0, which lets each cell's distance transform run on its neighbourhood only.

All of it is computed once per training image (`separation_targets`) and kept with the run,
never per step: at 256x256 with ~50 cells it takes tens of milliseconds (README).
"""

from __future__ import annotations

import numpy as np
from scipy import ndimage

W0 = 10.0  # the paper's w0
SIGMA = 5.0  # the paper's sigma, in pixels
GAP_WIDTH = 1  # the paper's gap between touching cells in the target, in pixels
TOLERANCE = 1e-6  # separation terms below TOLERANCE * w0 are left out (far from any pair of objects)


def separate_touching(instances: np.ndarray, width: int = GAP_WIDTH) -> np.ndarray:
    """Instance labels [H, W] with a background gap `width` pixels wide wherever two objects touched.

    A pixel of object l becomes background when a pixel within `width` rows and columns of it
    (for width 1: one of its 8 neighbours) belongs to an object with a smaller id. Only one side
    of each border gives up pixels, so the gap is `width` pixels wide (the paper's: 1), and no
    two pixels of different objects remain within `width` of each other: the objects are apart
    under either connectivity. Objects closer than `width` without touching get the same gap.
    """
    instances = np.asarray(instances)
    if instances.ndim != 2:
        raise ValueError(f"instance labels must be [H, W], got shape {instances.shape}")
    if isinstance(width, bool) or not isinstance(width, (int, np.integer)) or width < 1:
        raise ValueError(f"the gap width must be a positive whole number of pixels, got {width!r}")
    if instances.size == 0 or instances.max() <= 0:
        return instances.copy()
    # Background counts as "no smaller neighbour": give it an id above every object.
    above_all = np.where(instances > 0, instances, instances.max() + 1)
    around = np.ones((2 * width + 1, 2 * width + 1), bool)  # width 1: the 8 neighbours and the pixel itself
    smallest_neighbour = ndimage.grey_erosion(above_all, footprint=around, mode="nearest")  # [H, W]
    return np.where((instances > 0) & (smallest_neighbour < instances), 0, instances).astype(instances.dtype)


def class_balance_weights(classes: np.ndarray) -> np.ndarray:
    """w_c [H, W] float32: N / (K * n_c) for each pixel's class c (K classes present)."""
    ids, inverse, counts = np.unique(np.ravel(classes), return_inverse=True, return_counts=True)
    per_class = classes.size / (len(ids) * counts.astype(np.float64))  # [K]
    return per_class[inverse].reshape(np.shape(classes)).astype(np.float32)


def separation_weights(instances: np.ndarray, w0: float = W0, sigma: float = SIGMA) -> np.ndarray:
    """w(x) of the paper [H, W] float32 for instance labels [H, W] (0 background, 1..K objects)."""
    instances = np.asarray(instances)
    classes = (instances > 0).astype(np.int32)
    weights = class_balance_weights(classes).astype(np.float64)
    ids = np.unique(instances[instances > 0])
    if len(ids) < 2:
        return weights.astype(np.float32)
    background = instances == 0
    # Beyond `reach` pixels from an object it can't be one of the two nearest with a term above
    # TOLERANCE * w0 (d1 + d2 >= d2 > reach), so each object's exact distance transform (scipy)
    # is taken only on its bounding box grown by `reach`; elsewhere its distance counts as infinite.
    reach = int(np.ceil(sigma * np.sqrt(2.0 * np.log(1.0 / TOLERANCE))))
    nearest = np.full(instances.shape, np.inf)  # d1 [H, W], updated as a running pair with d2
    second = np.full(instances.shape, np.inf)
    boxes = ndimage.find_objects(instances)  # boxes[i - 1]: the bounding slices of object i, None if absent
    for object_id in ids:
        rows, cols = boxes[object_id - 1]
        box = (slice(max(rows.start - reach, 0), rows.stop + reach), slice(max(cols.start - reach, 0), cols.stop + reach))
        distance = ndimage.distance_transform_edt(instances[box] != object_id)  # 0 on the object
        second[box] = np.minimum(second[box], np.maximum(nearest[box], distance))
        nearest[box] = np.minimum(nearest[box], distance)
    separation = w0 * np.exp(-np.square(nearest + second) / (2.0 * sigma**2))
    weights = weights + np.where(background, separation, 0.0)
    return weights.astype(np.float32)


def separation_targets(instances: np.ndarray, w0: float = W0, sigma: float = SIGMA,
                       gap_width: int = GAP_WIDTH) -> tuple[np.ndarray, np.ndarray]:
    """(class mask int32 [H, W] with the gap between touching objects, its weight map float32 [H, W]).

    The paper's recipe for one training image: separate touching objects by a gap (the paper's:
    one pixel), then weight the gaps (which are now background between two close objects) heavily.
    """
    separated = separate_touching(instances, gap_width)
    return (separated > 0).astype(np.int32), separation_weights(separated, w0, sigma)
