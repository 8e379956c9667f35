"""Reading a user's images and masks from disk, with an error that says what to fix for every bad file.

Layouts:
  DIR/images/*.{png,tif,tiff} and DIR/masks/*.{png,tif,tiff}, paired by file stem; a mask
  stem may carry a `_mask` suffix (`a.png` <-> `a.tif` or `a_mask.png`).
  DIR/train-volume.tif + DIR/train-labels.tif (ISBI 2012): one sample per slice; or point
  `path` at any `*-volume.tif` whose `*-labels.tif` sits beside it.

Images are scaled to [0, 1] by their dtype's maximum (255 for 8-bit, 65535 for 16-bit; float
TIFFs as stored); standardise them afterwards with `Normalization` (fitted on the training part).

Mask rule (`_to_mask`), in order, for the values v of one mask file:
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
from typing import Optional, Sequence, Union

import numpy as np
import tifffile
from PIL import Image

from unet_jax.config import UNetError
from unet_jax.data.samples import Samples
from unet_jax.data.source import Source

SUFFIXES = (".png", ".tif", ".tiff")
MASK_SUFFIX = "_mask"


class DataError(UNetError, ValueError):
    """A data set on disk that can't be used as it is; the message names the file and the fix."""


def load_folder(path: Union[str, Path], in_channels: int, num_classes: int) -> Samples:
    """All samples under `path` (see the module docstring for layouts and rules), sorted by name.

    Images are float32 [H, W, in_channels] in [0, 1] and masks int32 [H, W]; sizes may differ
    between samples, so the fields are lists.
    """
    return index_folder(path, in_channels, num_classes).read()


def index_folder(path: Union[str, Path], in_channels: int, num_classes: int, as_stored: bool = False) -> Source:
    """The samples under `path`, listed, paired and sized from the files' headers; `.read(indices)`
    reads the pixels (of those samples only), with every check of `load_folder`.

    With `as_stored`, `.load(indices)` gives each (image, mask, None) as the files store them,
    neither converted nor checked (what `unet-jax inspect` looks at); `in_channels` and
    `num_classes` are then unused."""
    path = Path(path)
    if path.is_file():
        if "-volume" not in path.stem:
            raise DataError(
                f"{path}: not an ISBI-style '*-volume.tif' stack. Fix: point at such a stack (with its "
                "'*-labels.tif' beside it), or at a folder holding images/ and masks/"
            )
        return _index_stack(path, path.with_name(path.name.replace("-volume", "-labels")), in_channels, num_classes, as_stored)
    if not path.is_dir():
        raise DataError(f"{path}: no such folder. Fix: point at a folder holding images/ and masks/ subfolders")
    images_dir, masks_dir = path / "images", path / "masks"
    if images_dir.is_dir() or masks_dir.is_dir() or not (path / "train-volume.tif").is_file():
        for sub in (images_dir, masks_dir):
            if not sub.is_dir():
                raise DataError(
                    f"{sub}: missing. Fix: put the images in {images_dir} and their masks, with the same "
                    f"file names, in {masks_dir} (or use an ISBI pair train-volume.tif + train-labels.tif)"
                )
        return _index_pairs(images_dir, masks_dir, in_channels, num_classes, as_stored)
    return _index_stack(path / "train-volume.tif", path / "train-labels.tif", in_channels, num_classes, as_stored)


def data_sources(path: Union[str, Path]) -> list[Path]:
    """The files and folders that `load_folder(path)` reads, so that outputs can stay off them."""
    path = Path(path)
    if path.is_file():
        return [path, path.with_name(path.name.replace("-volume", "-labels"))]
    return [path / "images", path / "masks", path / "train-volume.tif", path / "train-labels.tif"]


def _list(folder: Path) -> dict[str, Path]:
    """Supported files in `folder` by stem; hidden files are skipped, anything else is an error."""
    files = sorted(p for p in folder.iterdir() if p.is_file() and not p.name.startswith("."))
    unsupported = [p.name for p in files if p.suffix.lower() not in SUFFIXES]
    if unsupported:
        raise DataError(f"{folder}: unsupported file types {unsupported}. Fix: use PNG or TIFF, or move these files out")
    by_stem: dict[str, Path] = {}
    for p in files:
        if p.stem in by_stem:
            raise DataError(f"{folder}: {by_stem[p.stem].name} and {p.name} share a name. Fix: keep one of them")
        by_stem[p.stem] = p
    return by_stem


def _index_pairs(images_dir: Path, masks_dir: Path, in_channels: int, num_classes: int, as_stored: bool = False) -> Source:
    images = _list(images_dir)
    masks: dict[str, Path] = {}
    for stem, p in _list(masks_dir).items():
        key = stem[: -len(MASK_SUFFIX)] if stem.endswith(MASK_SUFFIX) and stem[: -len(MASK_SUFFIX)] in images else stem
        if key in masks:
            raise DataError(f"{masks_dir}: {masks[key].name} and {p.name} both claim image '{key}'. Fix: keep one of them")
        masks[key] = p
    if not images:
        raise DataError(f"{images_dir}: no PNG or TIFF images. Fix: put the training images there")
    problems = [f"  {images[s]}: no mask (expected {masks_dir}/{s}.png, .tif or {s}{MASK_SUFFIX}.*)" for s in images if s not in masks]
    problems += [f"  {masks[s]}: no image (expected {images_dir}/{s}.png or .tif)" for s in masks if s not in images]
    if problems:
        raise DataError(
            f"{len(problems)} unpaired file(s); every image needs a mask with the same name and vice versa:\n" + "\n".join(problems)
        )
    stems = sorted(images)
    sizes = []
    for stem in stems:
        image_size, mask_size = _stored_size(images[stem], is_image=True), _stored_size(masks[stem], is_image=False)
        _check_sizes(images[stem], image_size, masks[stem], mask_size)
        sizes.append(image_size)

    def load(indices: Sequence[int]) -> list:
        loaded = []
        for stem in (stems[i] for i in indices):
            if as_stored:
                loaded.append((_read(images[stem], palette_to_rgb=True), _read(masks[stem], palette_to_rgb=False), None))
                continue
            image = read_image(images[stem], in_channels)
            mask, ids = _to_mask(_read(masks[stem], palette_to_rgb=False), masks[stem], num_classes)
            _check_sizes(images[stem], image.shape[:2], masks[stem], mask.shape)  # the pixels, as the headers said
            loaded.append((image, mask, ids))
        return loaded

    return Source(tuple(str(images[s]) for s in stems), tuple(sizes), in_channels, load)


def _check_sizes(image_path: Path, image_size: tuple, mask_path: Path, mask_size: tuple) -> None:
    if tuple(image_size) != tuple(mask_size):
        raise DataError(
            f"{image_path} is {image_size[0]}x{image_size[1]} but its mask {mask_path} is "
            f"{mask_size[0]}x{mask_size[1]}. Fix: save the mask at the image's size"
        )


def _stored_size(path: Path, is_image: bool) -> tuple[int, int]:
    """(H, W) of one image or mask file from its header, without decoding its pixels."""
    if path.suffix.lower() in (".tif", ".tiff"):
        series = _tiff_series(path)
        if is_image and image_pages(path) > 1:
            read_image(path, 1)  # refuses the stack, with what to do instead
        if "Y" in series.axes and "X" in series.axes:
            return int(series.shape[series.axes.index("Y")]), int(series.shape[series.axes.index("X")])
        return tuple(_read(path, palette_to_rgb=False).shape[:2])  # axes not named: read it to know
    try:
        with Image.open(path) as im:
            return im.height, im.width
    except Exception as error:
        raise DataError(f"{path}: cannot be read ({type(error).__name__}: {error}). Fix: re-save the file or remove it") from error


def _index_stack(volume_path: Path, labels_path: Path, in_channels: int, num_classes: int, as_stored: bool = False) -> Source:
    """ISBI-2012 style: a multi-page image TIFF and a label TIFF with one page per slice."""
    for p in (volume_path, labels_path):
        if not p.is_file():
            raise DataError(
                f"{p}: missing. Fix: an ISBI volume needs its label stack beside it ({volume_path.name} + {labels_path.name})"
            )
    volume_shape, labels_shape = _stack_shape(volume_path), _stack_shape(labels_path)
    if volume_shape[0] != labels_shape[0] or volume_shape[1:3] != labels_shape[1:3]:
        raise DataError(
            f"{volume_path} holds {volume_shape[:3]} (slices, H, W) but {labels_path} holds {labels_shape[:3]}. "
            "Fix: use matching stacks, one label page per image page"
        )
    slices = volume_shape[0]

    def load(indices: Sequence[int]) -> list:
        volume = _read_slices(volume_path, indices, slices, palette_to_rgb=True)
        labels = _read_slices(labels_path, indices, slices, palette_to_rgb=False)
        loaded = []
        if as_stored:
            return [(image, label, None) for image, label in zip(volume, labels)]
        for k, image, label in zip(indices, volume, labels):
            mask, ids = _to_mask(label, f"{labels_path}[slice {k}]", num_classes)
            loaded.append((_to_image(image, f"{volume_path}[slice {k}]", in_channels), mask, ids))
        return loaded

    names = tuple(f"{volume_path}[slice {k}]" for k in range(slices))
    return Source(names, ((volume_shape[1], volume_shape[2]),) * slices, in_channels, load)


def _stack_shape(path: Path) -> tuple[int, ...]:
    """(slices, H, W) of a stack from its header: every axis but Y, X and S (colour) counts slices."""
    series = _tiff_series(path)
    if "Y" not in series.axes or "X" not in series.axes:
        shape = _read(path, palette_to_rgb=False).shape  # axes not named: read it to know
        return (1, *shape[:2]) if len(shape) == 2 else tuple(shape[:3])
    height, width = series.shape[series.axes.index("Y")], series.shape[series.axes.index("X")]
    return image_pages(path), int(height), int(width)


def _read_slices(path: Path, indices: Sequence[int], slices: int, palette_to_rgb: bool) -> list[np.ndarray]:
    """Slices `indices` of a stack: only their pages where each slice is one page, else the whole stack."""
    try:
        with tifffile.TiffFile(path) as tif:
            if len(tif.pages) == slices and slices > 1:
                return [np.asarray(tif.pages[k].asarray()) for k in indices]
    except Exception as error:
        raise DataError(f"{path}: cannot be read ({type(error).__name__}: {error}). Fix: re-save the file or remove it") from error
    stack = _read(path, palette_to_rgb=palette_to_rgb)
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
    return _to_image(_read(path, palette_to_rgb=True), path, in_channels)


def read_image_pages(path: Union[str, Path], in_channels: int) -> list[np.ndarray]:
    """Every image of a file as float32 [H, W, in_channels] each: the pages of a multi-page TIFF
    stack, or the one image of any other file."""
    path = Path(path)
    pages = image_pages(path)
    if pages == 1:
        return [read_image(path, in_channels)]
    raw = _read(path, palette_to_rgb=True)
    raw = raw.reshape(pages, *raw.shape[raw.ndim - _image_axes(path) :])  # [pages, H, W(, C)]
    return [_to_image(page, f"{path}[page {k}]", in_channels) for k, page in enumerate(raw)]


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


def _read(path: Path, palette_to_rgb: bool) -> np.ndarray:
    """The pixels as stored (uint8, uint16, float, bool, ...), [H, W], [H, W, C] or a TIFF stack."""
    try:
        if path.suffix.lower() in (".tif", ".tiff"):
            return np.asarray(tifffile.imread(path))
        with Image.open(path) as im:
            im.load()  # decodes now, so a truncated file fails here
            if im.mode == "P" and palette_to_rgb:
                im = im.convert("RGBA" if "transparency" in im.info else "RGB")
            elif im.mode in ("CMYK", "YCbCr", "LAB", "HSV"):
                im = im.convert("RGB")
            return np.array(im)
    except Exception as error:  # every reader failure means the same thing to the user
        raise DataError(f"{path}: cannot be read ({type(error).__name__}: {error}). Fix: re-save the file or remove it") from error


def _to_image(raw: np.ndarray, path: Union[str, Path], in_channels: int) -> np.ndarray:
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


def _to_mask(raw: np.ndarray, path: Union[str, Path], num_classes: int) -> tuple[np.ndarray, Optional[np.ndarray]]:
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
