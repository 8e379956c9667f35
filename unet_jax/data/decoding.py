"""Reading PNG and TIFF files: their pixels, their pages and slices, and their sizes from the headers
alone, with an error naming the file for every one that can't be read. The pixels become an
image or a mask by the rules of `unet_jax.data.pixel_rules`."""

from __future__ import annotations

from pathlib import Path
from typing import Optional, Sequence, Union

import numpy as np
import tifffile
from PIL import Image

from unet_jax.data.errors import DataError
from unet_jax.data.pixel_rules import to_image, to_mask

SUFFIXES = (".png", ".tif", ".tiff")


def stored_size(path: Path, is_image: bool) -> tuple[int, int]:
    """(H, W) of one image or mask file from its header, without decoding its pixels."""
    if path.suffix.lower() in (".tif", ".tiff"):
        series = _tiff_series(path)
        if is_image and image_pages(path) > 1:
            read_image(path, 1)  # refuses the stack, with what to do instead
        if "Y" in series.axes and "X" in series.axes:
            return int(series.shape[series.axes.index("Y")]), int(series.shape[series.axes.index("X")])
        return tuple(read(path, palette_to_rgb=False).shape[:2])  # axes not named: read it to know
    try:
        with Image.open(path) as im:
            return im.height, im.width
    except Exception as error:
        raise DataError(f"{path}: cannot be read ({type(error).__name__}: {error}). Fix: re-save the file or remove it") from error


def stack_shape(path: Path) -> tuple[int, ...]:
    """(slices, H, W) of a stack from its header: every axis but Y, X and S (colour) counts slices."""
    series = _tiff_series(path)
    if "Y" not in series.axes or "X" not in series.axes:
        shape = read(path, palette_to_rgb=False).shape  # axes not named: read it to know
        return (1, *shape[:2]) if len(shape) == 2 else tuple(shape[:3])
    height, width = series.shape[series.axes.index("Y")], series.shape[series.axes.index("X")]
    return image_pages(path), int(height), int(width)


def samples_per_pixel(path: Path) -> int:
    """The TIFF's samples per pixel (its S axis: colour channels, or slices wrongly saved as them), 1 without."""
    series = _tiff_series(path)
    return int(series.shape[series.axes.index("S")]) if "S" in series.axes else 1


def read_slices(path: Path, indices: Sequence[int], slices: int, palette_to_rgb: bool) -> list[np.ndarray]:
    """Slices `indices` of a stack: only their pages where each slice is one page, else the whole stack."""
    try:
        with tifffile.TiffFile(path) as tif:
            check_declared_size(path, tif)
            if len(tif.pages) == slices and slices > 1:
                return [np.asarray(tif.pages[k].asarray()) for k in indices]
    except DataError:
        raise
    except Exception as error:
        raise DataError(f"{path}: cannot be read ({type(error).__name__}: {error}). Fix: re-save the file or remove it") from error
    stack = read(path, palette_to_rgb=palette_to_rgb)
    stack = stack[None] if slices == 1 or stack.ndim == 2 else stack  # [N, H, W] or [N, H, W, C]
    return [stack[k] for k in indices]


def read_image(path: Union[str, Path], in_channels: int) -> np.ndarray:
    """One image file as float32 [H, W, in_channels] scaled to [0, 1], with exactly the checks and
    messages of training's reader. A multi-page TIFF stack is refused with what to do instead."""
    path = Path(path)
    pages = image_pages(path)
    if pages > 1:
        raise DataError(
            f"{path}: a stack of {pages} images (a multi-page TIFF), not one image. Fix: save one image per file, "
            "or for training and evaluation use the ISBI layout: NAME-volume.tif with its NAME-labels.tif beside it, "
            "given as --data NAME-volume.tif (`unet-jax predict` reads stacks page by page)"
        )
    return to_image(read(path, palette_to_rgb=True), path, in_channels)


def read_mask(path: Union[str, Path], num_classes: int) -> tuple[np.ndarray, Optional[np.ndarray]]:
    """(class mask int32 [H, W], instance ids int32 [H, W] or None) of one mask file, by `pixel_rules.to_mask`."""
    return to_mask(read(Path(path), palette_to_rgb=False), path, num_classes)


def read_image_pages(path: Union[str, Path], in_channels: int) -> list[np.ndarray]:
    """Every image of a file as float32 [H, W, in_channels] each: the pages of a multi-page TIFF
    stack, or the one image of any other file."""
    path = Path(path)
    pages = image_pages(path)
    if pages == 1:
        return [read_image(path, in_channels)]
    raw = read(path, palette_to_rgb=True)
    raw = raw.reshape(pages, *raw.shape[raw.ndim - _image_axes(path) :])  # [pages, H, W(, C)]
    return [to_image(page, f"{path}[page {k}]", in_channels) for k, page in enumerate(raw)]


def image_pages(path: Union[str, Path]) -> int:
    """How many images a file holds: the pages of a multi-page TIFF stack, 1 for anything else.

    TIFF axes Y, X and S (samples: colour channels, also when stored as planes) make one
    image; every other axis (pages, Z, time, ...) counts images.
    """
    path = Path(path)
    if path.suffix.lower() not in (".tif", ".tiff"):
        return 1
    series = _tiff_series(path)
    return int(np.prod([n for n, axis in zip(series.shape, series.axes) if axis not in "YXS"], dtype=np.int64))


def _image_axes(path: Path) -> int:
    return sum(axis in "YXS" for axis in _tiff_series(path).axes)


def _tiff_series(path: Path):
    try:
        with tifffile.TiffFile(path) as tif:
            return tif.series[0]
    except Exception as error:
        raise DataError(f"{path}: cannot be read ({type(error).__name__}: {error}). Fix: re-save the file or remove it") from error


def check_declared_size(path: Path, tif: tifffile.TiffFile) -> None:
    """DataError if a page of the TIFF declares more pixels than PIL decodes from a PNG (its
    decompression-bomb cap): a few compressed megabytes can declare an image of gigabytes, and
    tifffile would decode it whole. Only the headers are read."""
    if Image.MAX_IMAGE_PIXELS is None:  # the caller switched PIL's cap off: trusted files
        return
    cap = 2 * Image.MAX_IMAGE_PIXELS  # where PIL refuses; it warns from MAX_IMAGE_PIXELS on
    for number, page in enumerate(tif.pages):
        height, width = page.imagelength, page.imagewidth
        if height * width > cap:
            raise DataError(
                f"{path}: page {number} declares {height}x{width} = {height * width} pixels, more than the {cap} that "
                "PIL decodes from a PNG (a decompression bomb, or an image too large to read whole). Fix: cut it into "
                "smaller images, or if you trust the file raise PIL.Image.MAX_IMAGE_PIXELS in the program that reads it"
            )


def read(path: Path, palette_to_rgb: bool) -> np.ndarray:
    """The pixels as stored (uint8, uint16, float, bool, ...), [H, W], [H, W, C] or a TIFF stack."""
    try:
        if path.suffix.lower() in (".tif", ".tiff"):
            with tifffile.TiffFile(path) as tif:
                check_declared_size(path, tif)
                return np.asarray(tif.asarray())
        with Image.open(path) as im:
            im.load()  # decodes now, so a truncated file fails here
            if im.mode == "P" and palette_to_rgb:
                im = im.convert("RGBA" if "transparency" in im.info else "RGB")
            elif im.mode in ("CMYK", "YCbCr", "LAB", "HSV"):
                im = im.convert("RGB")
            return np.array(im)
    except DataError:
        raise
    except Exception as error:  # every reader failure means the same thing to the user
        raise DataError(f"{path}: cannot be read ({type(error).__name__}: {error}). Fix: re-save the file or remove it") from error
