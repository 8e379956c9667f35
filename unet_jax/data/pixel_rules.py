"""How stored pixels become an image and a mask: the scaling of images and the mask rule.

Images are scaled to [0, 1] by their dtype's maximum (255 for 8-bit, 65535 for 16-bit; float
TIFFs as stored); standardise them afterwards with `Normalization` (fitted on the training part).

Mask rule (`to_mask`), in order, for the values v of one mask file:
  1. all v < num_classes: class indices, used as they are.
  2. v only 0 and 255 (or 0 and 65535 in a 16-bit file): a binary mask, 255 -> class 1. This is
     how ISBI labels mark the cell interior, and how most tools save binary masks.
  3. num_classes == 2 and the file holds more than 8 bits per pixel (16-bit PNG/TIFF, 32-bit or
     integer-valued float TIFF): an instance mask, 0 background and 1..N objects; the class is
     id > 0 and the ids are kept in `Samples.instances`.
  4. anything else is an error. An 8-bit mask such as {0, 1, 2} for a 2-class model is far more
     often a 3-class mask than a label image, so we ask instead of guessing.
Colour masks whose channels are all equal are read as grey; a constant, opaque alpha channel is
dropped from images and masks; an RGB image whose channels are equal is accepted as grey.
"""

from __future__ import annotations

from pathlib import Path
from typing import Optional, Union

import numpy as np

from unet_jax.data.errors import DataError


def to_image(raw: np.ndarray, path: Union[str, Path], in_channels: int) -> np.ndarray:
    """float32 [H, W, in_channels] in [0, 1] (floats as stored) from stored pixels."""
    if raw.dtype == np.uint8:
        image = raw.astype(np.float32) / 255
    elif raw.dtype == np.uint16:
        image = raw.astype(np.float32) / 65535
    elif raw.dtype == bool or np.issubdtype(raw.dtype, np.floating):
        image = raw.astype(np.float32)
    else:
        raise DataError(f"{path}: pixel type {raw.dtype} is not supported. Fix: save as 8- or 16-bit unsigned, or float")
    if image.ndim == 2:
        image = image[:, :, None]  # [H, W, 1]
    elif image.ndim == 3 and image.shape[-1] > 4 and image.shape[0] <= 4:
        image = np.moveaxis(image, 0, -1)  # planar TIFF [C, H, W] -> [H, W, C]
    if image.ndim != 3:
        raise DataError(f"{path}: shape {raw.shape} is not one image. Fix: save a single 2-D image (grey or RGB) per file")
    if not np.all(np.isfinite(image)):
        raise DataError(f"{path}: holds NaN or infinite values. Fix: replace them before training")
    channels = image.shape[-1]
    if channels != in_channels and channels in (2, 4):  # grey + alpha, RGB + alpha
        if not np.all(image[..., -1] == 1):
            raise DataError(f"{path}: has a transparency channel that is not fully opaque. Fix: flatten the image")
        image = image[..., :-1]
    if image.shape[-1] == 3 and in_channels == 1 and np.all(image == image[..., :1]):
        image = image[..., :1]  # grey saved as RGB
    if image.shape[-1] != in_channels:
        want = "grey" if in_channels == 1 else f"{in_channels}-channel"
        raise DataError(
            f"{path}: has {image.shape[-1]} channel(s) but the model expects in_channels={in_channels}. "
            f"Fix: convert the images to {want}, or use a model with in_channels={image.shape[-1]} "
            f"(train: --in-channels {image.shape[-1]})"
        )
    return np.ascontiguousarray(image, dtype=np.float32)


def to_mask(raw: np.ndarray, path: Union[str, Path], num_classes: int) -> tuple[np.ndarray, Optional[np.ndarray]]:
    """(class mask int32 [H, W], instance ids int32 [H, W] or None) by the rule in the module docstring."""
    if raw.ndim == 3 and raw.shape[-1] in (1, 2, 3, 4):
        colour = raw[..., :3] if raw.shape[-1] >= 3 else raw[..., :1]
        if not np.all(colour == colour[..., :1]):
            raise DataError(f"{path}: a colour mask. Fix: save masks as grey images of class indices (or instance ids)")
        raw = colour[..., 0]
    if raw.ndim != 2:
        raise DataError(f"{path}: mask shape {raw.shape} is not one 2-D mask. Fix: save one grey mask per image")
    wide = raw.dtype != bool and raw.dtype.itemsize > 1  # more than 8 bits per pixel
    if np.issubdtype(raw.dtype, np.floating) and not np.all(np.isfinite(raw) & (raw == np.round(raw))):
        raise DataError(f"{path}: mask holds non-integer values. Fix: save class indices or instance ids as integers")
    values = raw.astype(np.int64)
    if values.size == 0 or values.min() < 0:
        raise DataError(f"{path}: mask is empty or holds negative values. Fix: use 0 for background and 1.. for classes")
    top = int(values.max())
    if top < num_classes:
        return values.astype(np.int32), None
    if top in (255, 65535) and np.all((values == 0) | (values == top)):
        return (values > 0).astype(np.int32), None
    if num_classes == 2 and wide and top < 2**31:
        ids = values.astype(np.int32)
        return (ids > 0).astype(np.int32), ids
    preview = np.unique(values)[:8].tolist()
    raise DataError(
        f"{path}: mask values {preview}{'...' if len(np.unique(values)) > 8 else ''} reach {top}, but num_classes="
        f"{num_classes} allows 0..{num_classes - 1}. Fix: for a class mask use a model with num_classes={top + 1} "
        f"(train: --num-classes {top + 1}); for binary masks "
        "use 0/1 or 0/255; for an instance mask (0 background, 1..N objects, 2-class model) save it as 16-bit PNG or TIFF"
    )
