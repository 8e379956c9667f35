"""Prediction on images of any size with the paper's overlap-tile strategy.

A U-Net sees a fixed tile. To predict a whole image, the image is cut into a grid of output
tiles that cover it; each input tile is its output tile grown by the context margin on every
side, read from the image mirrored at its borders (Ronneberger et al. 2015, Fig. 2); the
output tiles are pasted side by side, with no blending. `unet_jax.tiling` sets the geometry:
tiles start on the 2x2-pool grid, and bilinear networks drop a few edge pixels per tile.

What is exact: for valid-padding networks, transposed or bilinear up-sampling, with or without
BatchNorm, the tiled prediction equals one forward pass over the whole image mirror-padded by
(context + margin) and cropped, up to float32 rounding: tiling changes speed and memory, never
the answer. What is not: same-padding networks zero-pad at every tile edge, so their tiles
differ from a whole-image pass near the edges; the default margin of 2**depth pixels keeps that
small, and `margin=0` gives plain, abutting tiles, each equal to a forward pass on that tile alone.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Optional, Sequence

import jax
import numpy as np
import tifffile
from PIL import Image

from unet_jax.config import UNetConfig
from unet_jax.data import Normalization
from unet_jax.data.folder import read_image
from unet_jax.data.tiles import mirror_crop
from unet_jax.model import UNet
from unet_jax.tiling import DEFAULT_BATCH_SIZE, default_tile_size, tile_geometry, usable_tile_size
from unet_jax.weights_io import load_variables

RUN_WEIGHTS = "weights.safetensors"  # the two files a training run directory holds for prediction
RUN_NORMALIZATION = "normalization.json"
MASK_FORMATS = {"png": ".png", "tiff": ".tif"}


# ------------------------------------------------------------------ the model
class Predictor:
    """A U-Net ready for inference: config, variables on the device, and the intensity
    normalisation of its training run (None when unknown).

    The forward pass (softmax included) is jit-compiled once per input shape; prediction
    keeps that shape fixed, so a run over many same-sized images compiles once.
    """

    def __init__(self, config: UNetConfig, variables, normalization: Optional[Normalization] = None):
        if normalization is not None and len(normalization.mean) != config.in_channels:
            raise ValueError(
                f"the normalisation has {len(normalization.mean)} channel(s) but the model expects "
                f"in_channels={config.in_channels}"
            )
        self.config = config
        self.normalization = normalization
        self.model = UNet(config)
        self.variables = jax.device_put(variables)  # numpy from a file -> device arrays, once
        self._forward = jax.jit(self._probabilities)

    @classmethod
    def from_weights(
        cls, path, config: Optional[UNetConfig] = None, normalization: Optional[Normalization] = None
    ) -> "Predictor":
        """From a weights file (Flax `.safetensors`, PyTorch `.pt`/`.pth`/`.safetensors`) or a run directory.

        A directory must hold `weights.safetensors`. Its normalisation is read from
        `normalization.json` beside the weights (in the run directory, or next to a weights
        file given directly) unless `normalization` is passed. Without one, images are fed as
        the reader scales them, to [0, 1] by their dtype's maximum, which is right only for a
        model trained on images scaled the same way.
        The config stored in a Flax file wins over `config` (see `load_variables`).
        """
        path = Path(path)
        if path.is_dir():
            weights = path / RUN_WEIGHTS
            if not weights.is_file():
                raise FileNotFoundError(f"{path} is a directory without {RUN_WEIGHTS}: not a finished training run")
        else:
            weights = path
        variables, config = load_variables(weights, config)
        if normalization is None and (weights.parent / RUN_NORMALIZATION).is_file():
            normalization = read_normalization(weights.parent / RUN_NORMALIZATION)
        return cls(config, variables, normalization)

    def normalize(self, image: np.ndarray) -> np.ndarray:
        """A reader-scaled image [H, W, C] in [0, 1] -> the model's input scale, float32."""
        image = np.asarray(image, np.float32)
        return image if self.normalization is None else self.normalization.apply(image)

    def forward(self, tiles):
        """Class probabilities for input tiles [B, T, T, C] -> [B, T', T', num_classes] (async)."""
        return self._forward(self.variables, tiles)

    def _probabilities(self, variables, tiles):
        logits = self.model.apply(variables, tiles, train=False)  # [B, T', T', K]
        return jax.nn.softmax(logits, axis=-1)


def read_normalization(path) -> Normalization:
    try:
        return Normalization.from_dict(json.loads(Path(path).read_text()))
    except (OSError, ValueError) as error:  # json.JSONDecodeError is a ValueError
        raise ValueError(f"{path}: not a readable normalisation ({error})") from None


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
    (fewer if the image has fewer tiles), the last batch zero-filled, so each image size
    compiles exactly one shape.
    """
    config = predictor.config
    image = np.asarray(image, np.float32)
    if image.ndim != 3 or image.shape[-1] != config.in_channels:
        raise ValueError(
            f"expected an image [H, W, {config.in_channels}] (in_channels={config.in_channels}), got shape {image.shape}"
        )
    if not isinstance(batch_size, int) or batch_size < 1:
        raise ValueError(f"batch_size must be a positive integer, got {batch_size!r}")
    height, width = image.shape[:2]
    if tile_size is None:
        tile_size = default_tile_size(config, height, width, batch_size, margin=margin)
    else:
        tile_size = usable_tile_size(config, tile_size, height, width, batch_size, margin=margin)
    geometry = tile_geometry(config, tile_size, margin)
    s, t = geometry.stride, geometry.tile_size
    rows, cols = geometry.tiles_along(height), geometry.tiles_along(width)
    origins = [(r * s, c * s) for r in range(rows) for c in range(cols)]  # image position of each used output tile
    batch = min(batch_size, len(origins))
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
) -> list[dict[str, Path]]:
    """Predict each image and write `OUTPUT/<stem>_mask.png` (or `.tif`), plus `<stem>_probs.npy`
    (float32 [H, W, num_classes]) when `save_probabilities`. Returns the written paths per image.

    Masks hold class indices (0 .. num_classes-1; uint8, uint16 past 256 classes), the format
    the training reader takes back, so predictions can be corrected and trained on. A binary
    mask therefore looks black in an image viewer; scale it for viewing, not for storage.
    Existing outputs are replaced; an input file never is (that is refused before any work).
    """
    if mask_format not in MASK_FORMATS:
        raise ValueError(f"mask_format must be one of {sorted(MASK_FORMATS)}, got {mask_format!r}")
    image_paths = [Path(p) for p in image_paths]
    output_dir = Path(output_dir)
    planned = _plan_outputs(image_paths, output_dir, MASK_FORMATS[mask_format], save_probabilities)
    if tile_size is not None:
        tile_geometry(predictor.config, tile_size)  # a bad tile size fails before the first image is read
    output_dir.mkdir(parents=True, exist_ok=True)
    written = []
    for image_path, outputs in zip(image_paths, planned):
        image = predictor.normalize(read_image(image_path, predictor.config.in_channels))  # [H, W, C]
        try:
            probs = predict_probabilities(predictor, image, tile_size, batch_size)  # [H, W, K]
        except ValueError as error:
            raise ValueError(f"{image_path}: {error}") from error
        labels = probs.argmax(axis=-1).astype(np.uint8 if predictor.config.num_classes <= 256 else np.uint16)
        _write_mask(outputs["mask"], labels)
        if save_probabilities:
            np.save(outputs["probabilities"], probs)
        written.append({"image": image_path, **outputs})
    return written


def _plan_outputs(image_paths: list[Path], output_dir: Path, mask_suffix: str, save_probabilities: bool) -> list[dict]:
    """Output paths per input, after checking every input at once: all exist, no two share an
    output, and no output would land on an input."""
    missing = [str(p) for p in image_paths if not p.is_file()]
    if missing:
        raise FileNotFoundError(f"{len(missing)} image(s) not found: {', '.join(missing)}")
    planned, owner = [], {}
    inputs = {p.resolve() for p in image_paths}
    for path in image_paths:
        outputs = {"mask": output_dir / f"{path.stem}_mask{mask_suffix}"}
        if save_probabilities:
            outputs["probabilities"] = output_dir / f"{path.stem}_probs.npy"
        for out in outputs.values():
            key = out.resolve()
            if key in inputs:
                raise ValueError(f"{path}: its output {out} is one of the input images; choose another output directory")
            if key in owner:
                raise ValueError(f"{owner[key]} and {path} would both write {out}: their names share the stem '{path.stem}'")
            owner[key] = path
        planned.append(outputs)
    return planned


def _write_mask(path: Path, labels: np.ndarray) -> None:
    if path.suffix == ".png":
        Image.fromarray(labels).save(path)
    else:
        tifffile.imwrite(path, labels)
