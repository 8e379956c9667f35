"""`unet-jax predict`'s files: every image predicted overlap-tile (`predictor.predict_probabilities`)
and written as a class-index mask, and optionally its probabilities, each file whole or not at all."""

from __future__ import annotations

import io
from pathlib import Path
from typing import Callable, Optional, Sequence

import numpy as np
import tifffile
from PIL import Image

from unet_jax.config import ConfigError, MissingFileError
from unet_jax.data import image_pages, read_image_pages
from unet_jax.inference.predictor import Predictor, predict_probabilities
from unet_jax.inference.tile_plan import DEFAULT_BATCH_SIZE, tile_geometry
from unet_jax.runtime.safe_files import OutputError, check_destination, check_folder_destination, make_directory, write_atomically

MASK_FORMATS = {"png": ".png", "tiff": ".tif"}


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
) -> list[dict]:
    """Predict each image and write `OUTPUT/<stem>_mask.png` (or `.tif`), plus `<stem>_probs.npy`
    (float32 [H, W, num_classes]) when `save_probabilities`. Returns, per image, a record
    {"image", "mask", ["probabilities"], "pages", "height", "width"}, also passed to
    `on_written` as soon as the image is done.

    Masks hold class indices (0 .. num_classes-1; uint8, uint16 past 256 classes), the format
    the training reader takes back, so predictions can be corrected and trained on. A binary
    mask therefore looks black in an image viewer; scale it for viewing, not for storage.
    A multi-page TIFF is predicted page by page into a multi-page `<stem>_mask.tif` (whatever
    `mask_format`) and `<stem>_probs.npy` of shape [pages, H, W, num_classes].

    Everything is checked before the first image is predicted: every input exists, no two
    inputs share an output, no output lands on an input, and no output exists unless
    `overwrite`. Each file is written whole or not at all.
    """
    if mask_format not in MASK_FORMATS:
        raise ConfigError(f"mask_format must be one of {sorted(MASK_FORMATS)}, got {mask_format!r}")
    image_paths = [Path(p) for p in image_paths]
    output_dir = check_folder_destination(output_dir)
    planned = _plan_outputs(image_paths, output_dir, MASK_FORMATS[mask_format], save_probabilities, overwrite)
    if tile_size is not None:
        tile_geometry(predictor.config, tile_size)  # a bad tile size fails before the first image is read
    make_directory(output_dir)
    written = []
    for image_path, outputs in zip(image_paths, planned):
        pages = read_image_pages(image_path, predictor.config.in_channels)  # [H, W, C] each
        probs = np.stack([_predict_page(predictor, page, tile_size, batch_size, image_path) for page in pages])
        labels = probs.argmax(axis=-1).astype(np.uint8 if predictor.config.num_classes <= 256 else np.uint16)
        stack = len(pages) > 1
        write_atomically(outputs["mask"], _encode_mask(labels if stack else labels[0], outputs["mask"].suffix), overwrite)
        if save_probabilities:
            write_atomically(outputs["probabilities"], _encode_npy(probs if stack else probs[0]), overwrite)
        record = {"image": image_path, **outputs, "pages": len(pages), "height": labels.shape[1], "width": labels.shape[2]}
        written.append(record)
        if on_written is not None:
            on_written(record)
    return written


def _predict_page(predictor: Predictor, image: np.ndarray, tile_size, batch_size, path: Path) -> np.ndarray:
    try:
        return predict_probabilities(predictor, predictor.normalize(image), tile_size, batch_size)  # [H, W, K]
    except ConfigError as error:
        raise ConfigError(f"{path}: {error}") from error


def _plan_outputs(
    image_paths: list[Path], output_dir: Path, mask_suffix: str, save_probabilities: bool, overwrite: bool
) -> list[dict]:
    """Output paths per input, after checking every input at once: all exist, no two share an
    output, no output would land on an input, and none exists unless `overwrite`."""
    missing = [str(p) for p in image_paths if not p.is_file()]
    if missing:
        raise MissingFileError(f"{len(missing)} image(s) not found: {', '.join(missing)}")
    inputs = {p.resolve(): p for p in image_paths}
    planned, owner, existing = [], {}, []
    for path in image_paths:
        suffix = ".tif" if image_pages(path) > 1 else mask_suffix  # PNG holds one image; TIFF holds stacks
        outputs = {"mask": output_dir / f"{path.stem}_mask{suffix}"}
        if save_probabilities:
            outputs["probabilities"] = output_dir / f"{path.stem}_probs.npy"
        for out in outputs.values():
            check_destination(out, overwrite=True)  # not a folder, and its folder can be made
            key = out.resolve()
            if key in inputs:
                raise OutputError(f"{out} is the input {inputs[key]}; it is never replaced. Fix: choose another output folder")
            if key in owner:
                raise ConfigError(f"{owner[key]} and {path} would both write {out}: their names share the stem '{path.stem}'")
            owner[key] = path
            if out.exists():
                existing.append(str(out))
        planned.append(outputs)
    if existing and not overwrite:
        shown = ", ".join(existing[:5]) + (f" and {len(existing) - 5} more" if len(existing) > 5 else "")
        raise OutputError(
            f"predicting would replace {len(existing)} existing file(s): {shown}. "
            "Fix: choose another output folder, or pass --overwrite (overwrite=True) to replace them"
        )
    return planned


def _encode_mask(labels: np.ndarray, suffix: str) -> bytes:
    """A class map [H, W] (or a stack [N, H, W], TIFF only) as the bytes of a PNG or TIFF file."""
    buffer = io.BytesIO()
    if suffix == ".png":
        Image.fromarray(labels).save(buffer, format="PNG")
    else:
        tifffile.imwrite(buffer, labels, photometric="minisblack")  # never read 3 pages as RGB
    return buffer.getvalue()


def _encode_npy(array: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    np.save(buffer, array)
    return buffer.getvalue()
