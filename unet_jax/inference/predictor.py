"""Prediction on images of any size with the paper's overlap-tile strategy.

A U-Net sees a fixed tile. To predict a whole image, the image is cut into a grid of output
tiles that cover it; each input tile is its output tile grown by the context margin on every
side, read from the image mirrored at its borders (Ronneberger et al. 2015, Fig. 2); the
output tiles are pasted side by side, with no blending. `unet_jax.inference.tile_plan` sets the geometry:
tiles start on the 2x2-pool grid, and bilinear networks drop a few edge pixels per tile.

What is exact: for valid-padding networks, transposed or bilinear up-sampling, with or without
BatchNorm, the tiled prediction equals one forward pass over the whole image mirror-padded by
(context + margin) and cropped, up to float32 rounding: tiling changes speed and memory, never
the answer. What is not: same-padding networks zero-pad at every tile edge, so their tiles
differ from a whole-image pass near the edges; the default margin of 2**depth pixels keeps that
small, and `margin=0` gives plain, abutting tiles, each equal to a forward pass on that tile alone.
"""

from __future__ import annotations

import functools
from pathlib import Path
from typing import Callable, Optional, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from unet_jax.config import ConfigError, UNetConfig
from unet_jax.data import Normalization, mirror_crop, read_image_pages
from unet_jax.inference.formats import MASK_FORMATS
from unet_jax.inference.instances import InstanceRule
from unet_jax.inference.output_files import encode_mask, encode_npy, plan_outputs
from unet_jax.inference.tile_plan import DEFAULT_BATCH_SIZE, default_tile_size, tile_geometry, usable_tile_size
from unet_jax.model.unet import UNet, default_batch_groups
from unet_jax.runtime.mesh import DataParallel
from unet_jax.runtime.safe_files import check_folder_destination, make_directory, write_atomically
from unet_jax.weights.io import ArchitectureRequest, load_variables
from unet_jax.weights.run_outputs import normalization_beside, weights_path


# ------------------------------------------------------------------ the model
class Predictor:
    """A U-Net ready for inference: config, variables on the devices, and the intensity
    normalisation of its training run (None when unknown).

    Tile batches are split over this process's devices (`devices`: the first N, default all),
    the variables replicated on each; a single device is a mesh of one. Each tile's answer is
    the same whichever device computes it. On a single CPU device the batch runs in groups side
    by side (`model.default_batch_groups`), with the same answers.

    The forward pass (softmax included) is jit-compiled once per network and input shape, and
    the compiled code is shared by every Predictor of that network (evaluation after training,
    several weights files of one architecture); prediction keeps the shape fixed, so a run over
    many same-sized images compiles once.
    """

    def __init__(self, config: UNetConfig, variables, normalization: Optional[Normalization] = None, dtype=jnp.float32,
                 devices: Optional[int] = None):
        if normalization is not None and len(normalization.mean) != config.in_channels:
            raise ConfigError(
                f"the normalisation has {len(normalization.mean)} channel(s) but the model expects "
                f"in_channels={config.in_channels}"
            )
        self.config = config
        self.normalization = normalization
        self.parallel = DataParallel.create(devices, local=True)
        groups = default_batch_groups(self.parallel.device_count, config.norm, train=False)
        self.model = UNet(config, dtype=dtype, batch_groups=groups)  # the compute dtype; the variables keep theirs
        self.variables = jax.device_put(variables, self.parallel.replicated)  # numpy from a file -> device arrays, once

    @classmethod
    def from_weights(
        cls, path, config: ArchitectureRequest = None, normalization: Optional[Normalization] = None,
        devices: Optional[int] = None,
    ) -> "Predictor":
        """From a weights file (Flax `.safetensors`, PyTorch `.pt`/`.pth`/`.safetensors`) or a run directory.

        A directory must hold `weights.safetensors`. Its normalisation is read from
        `normalization.json` beside the weights (in the run directory, or next to a weights
        file given directly) unless `normalization` is passed. Without one, images are fed as
        the reader scales them, to [0, 1] by their dtype's maximum, which is right only for a
        model trained on images scaled the same way.
        `config` (a UNetConfig, or just the fields to set) describes a file that stores no config,
        and may not contradict one that does (`weights_io.resolve_config`).
        """
        weights = weights_path(path)
        variables, config = load_variables(weights, config)
        if normalization is None:
            normalization = normalization_beside(weights)
        return cls(config, variables, normalization, devices=devices)

    def normalize(self, image: np.ndarray) -> np.ndarray:
        """A reader-scaled image [H, W, C] in [0, 1] -> the model's input scale, float32."""
        image = np.asarray(image, np.float32)
        return image if self.normalization is None else self.normalization.apply(image)

    @property
    def device_count(self) -> int:
        return self.parallel.device_count

    def forward(self, tiles):
        """Class probabilities for input tiles [B, T, T, C] -> [B, T', T', num_classes] (async);
        B must be a multiple of `device_count`."""
        return _probabilities(self.model, self.variables, jax.device_put(tiles, self.parallel.batch_sharding))


@functools.partial(jax.jit, static_argnums=0)  # Flax modules hash by their fields: one compile per network
def _probabilities(model: UNet, variables, tiles):
    logits = model.apply(variables, tiles, train=False)  # [B, T', T', K]
    return jax.nn.softmax(logits, axis=-1)


# ------------------------------------------------------------------ prediction
def predict_probabilities(
    predictor: Predictor,
    image: np.ndarray,
    tile_size: Optional[int] = None,
    batch_size: int = DEFAULT_BATCH_SIZE,
    margin: Optional[int] = None,
) -> np.ndarray:
    """Class probabilities float32 [H, W, num_classes] for a normalised image [H, W, C] of any size.

    `tile_size` is the input tile side: default `default_tile_size`; a larger one than a single
    tile covering the image needs is capped to that, and one whose batch exceeds the memory
    budget is refused (`usable_tile_size`). `margin`: output pixels dropped on each tile side
    (default `tiling.default_margin`). Tiles go through the network `batch_size` at a time
    (fewer if the image has fewer tiles), rounded up to a multiple of the predictor's devices,
    the last batch zero-filled, so each image size compiles exactly one shape.
    """
    config = predictor.config
    image = np.asarray(image, np.float32)
    if image.ndim != 3 or image.shape[-1] != config.in_channels:
        raise ValueError(
            f"expected an image [H, W, {config.in_channels}] (in_channels={config.in_channels}), got shape {image.shape}"
        )
    if not isinstance(batch_size, int) or batch_size < 1:
        raise ConfigError(f"batch_size must be a positive integer (--batch-size), got {batch_size!r}")
    height, width = image.shape[:2]
    if tile_size is None:
        tile_size = default_tile_size(config, height, width, batch_size, margin=margin)
    else:
        tile_size = usable_tile_size(config, tile_size, height, width, batch_size, margin=margin)
    geometry = tile_geometry(config, tile_size, margin)
    s, t = geometry.stride, geometry.tile_size
    rows, cols = geometry.tiles_along(height), geometry.tiles_along(width)
    origins = [(r * s, c * s) for r in range(rows) for c in range(cols)]  # image position of each used output tile
    batch = -(-min(batch_size, len(origins)) // predictor.device_count) * predictor.device_count  # whole tiles per device
    canvas = np.empty((rows * s, cols * s, config.num_classes), np.float32)  # [rows*s, cols*s, K]

    def paste(result, first):
        used = np.asarray(result)[:, geometry.crop : geometry.crop + s, geometry.crop : geometry.crop + s]  # [B, s, s, K]
        for tile, (top, left) in zip(used, origins[first : first + batch]):
            canvas[top : top + s, left : left + s] = tile

    pending = None
    for first in range(0, len(origins), batch):
        tiles = np.zeros((batch, t, t, config.in_channels), np.float32)  # [B, T, T, C], unused slots stay zero
        for i, (top, left) in enumerate(origins[first : first + batch]):
            tiles[i] = mirror_crop(image, top - geometry.context, left - geometry.context, t, t)
        result = predictor.forward(tiles)  # dispatched asynchronously: the next batch is cut meanwhile
        if pending is not None:
            paste(*pending)
        pending = (result, first)
    paste(*pending)
    return canvas[:height, :width]


# ------------------------------------------------------------------ files
def predict_files(
    predictor: Predictor,
    image_paths: Sequence,
    output_dir,
    save_probabilities: bool = False,
    tile_size: Optional[int] = None,
    batch_size: int = DEFAULT_BATCH_SIZE,
    mask_format: str = "png",
    overwrite: bool = False,
    on_written: Optional[Callable[[dict], None]] = None,
    instances: Optional[InstanceRule] = None,
) -> list[dict]:
    """Predict each image and write `OUTPUT/<stem>_mask.png` (or `.tif`), plus `<stem>_probs.npy`
    (float32 [H, W, num_classes]) when `save_probabilities`, and `<stem>_instances.tif` (a label
    image, `unet_jax.inference.instances`) when `instances` gives the rule. Returns, per image, a
    record {"image", "mask", ["probabilities"], ["instances", "objects"], "pages", "height", "width"},
    also passed to `on_written` as soon as the image is done.

    Masks hold class indices (0 .. num_classes-1; uint8, uint16 past 256 classes), the format
    the training reader takes back, so predictions can be corrected and trained on. A binary
    mask therefore looks black in an image viewer; scale it for viewing, not for storage.
    A multi-page TIFF is predicted page by page into a multi-page `<stem>_mask.tif` (whatever
    `mask_format`) and `<stem>_probs.npy` of shape [pages, H, W, num_classes]; its label image
    has one page per page, each labelled on its own.

    Instances are labelled from the stitched class map of the whole image, so a tiled prediction
    gives the labels a whole-image pass gives; they need a 2-class model (background and one
    foreground class): with more, objects of different classes would run together, so it is refused.

    Everything is checked before the first image is predicted: every input exists, no two
    inputs share an output, no output lands on an input, and no output exists unless
    `overwrite`. Each file is written whole or not at all.
    """
    if mask_format not in MASK_FORMATS:
        raise ConfigError(f"mask_format must be one of {sorted(MASK_FORMATS)}, got {mask_format!r}")
    image_paths = [Path(p) for p in image_paths]
    output_dir = check_folder_destination(output_dir)
    if instances is not None and predictor.config.num_classes != 2:
        raise ConfigError(
            f"--instances labels the objects of a 2-class (background, foreground) model, but this one has "
            f"num_classes={predictor.config.num_classes}. Fix: predict without --instances and label the classes of "
            "<stem>_mask yourself, or train a 2-class model on instance masks"
        )
    planned = plan_outputs(image_paths, output_dir, MASK_FORMATS[mask_format], save_probabilities, overwrite,
                           save_instances=instances is not None)
    if tile_size is not None:
        tile_geometry(predictor.config, tile_size)  # a bad tile size fails before the first image is read
    make_directory(output_dir)
    written = []
    for image_path, outputs in zip(image_paths, planned):
        pages = read_image_pages(image_path, predictor.config.in_channels)  # [H, W, C] each
        probs = np.stack([_predict_page(predictor, page, tile_size, batch_size, image_path) for page in pages])
        labels = probs.argmax(axis=-1).astype(np.uint8 if predictor.config.num_classes <= 256 else np.uint16)
        stack = len(pages) > 1
        write_atomically(outputs["mask"], encode_mask(labels if stack else labels[0], outputs["mask"].suffix), overwrite)
        if save_probabilities:
            write_atomically(outputs["probabilities"], encode_npy(probs if stack else probs[0]), overwrite)
        record = {"image": image_path, **outputs, "pages": len(pages), "height": labels.shape[1], "width": labels.shape[2]}
        if instances is not None:
            objects = instances.label_pages(labels > 0, probs[..., 1])  # [N, H, W], after stitching: seams cannot split objects
            write_atomically(outputs["instances"], encode_mask(objects if stack else objects[0], ".tif"), overwrite)
            record["objects"] = [int(page.max()) for page in objects] if stack else int(objects.max())
        written.append(record)
        if on_written is not None:
            on_written(record)
    return written


def _predict_page(predictor: Predictor, image: np.ndarray, tile_size, batch_size, path: Path) -> np.ndarray:
    try:
        return predict_probabilities(predictor, predictor.normalize(image), tile_size, batch_size)  # [H, W, K]
    except ConfigError as error:
        raise ConfigError(f"{path}: {error}") from error
