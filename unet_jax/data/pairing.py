"""Reading a user's images and masks from disk, with an error that says what to fix for every bad file.

Layouts:
  DIR/images/*.{png,tif,tiff} and DIR/masks/*.{png,tif,tiff}, paired by file stem; a mask
  stem may carry a `_mask` suffix (`a.png` <-> `a.tif` or `a_mask.png`).
  DIR/train-volume.tif + DIR/train-labels.tif (ISBI 2012): one sample per slice; or point
  `path` at any `*-volume.tif` whose `*-labels.tif` sits beside it.

Every file is read by `unet_jax.data.decoding`, its pixels turned into an image or a mask by the rules of
`unet_jax.data.pixel_rules`.
"""

from __future__ import annotations

from pathlib import Path
from typing import Sequence, Union

from unet_jax.data.decoding import SUFFIXES, read, read_image, read_mask, read_slices, samples_per_pixel, stack_shape, stored_size
from unet_jax.data.errors import DataError
from unet_jax.data.pixel_rules import to_image, to_mask
from unet_jax.data.samples import Samples
from unet_jax.data.source import Source

MASK_SUFFIX = "_mask"


def load_folder(path: Union[str, Path], in_channels: int, num_classes: int) -> Samples:
    """All samples under `path` (see the module docstring for layouts, and `pixel_rules` for the rules), sorted by name.

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
    """Supported files in `folder` by stem; hidden files and sub-folders are skipped, anything else is
    an error: links to nothing and folders named as images too (they were dropped without a word)."""
    entries = sorted(p for p in folder.iterdir() if not p.name.startswith("."))
    broken = [p.name for p in entries if p.is_symlink() and not p.exists()]  # exists() follows the link: False at a loop
    if broken:
        raise DataError(f"{folder}: {broken} link to nothing (a missing file, or a loop of links). Fix: point each at "
                        "its file, or remove it")
    folders = [p.name for p in entries if p.is_dir() and p.suffix.lower() in SUFFIXES]
    if folders:
        raise DataError(f"{folder}: {folders} are folders, not image files. Fix: put the image files there in their place")
    files = [p for p in entries if p.is_file()]
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
        image_size, mask_size = stored_size(images[stem], is_image=True), stored_size(masks[stem], is_image=False)
        _check_sizes(images[stem], image_size, masks[stem], mask_size)
        sizes.append(image_size)

    def load(indices: Sequence[int]) -> list:
        loaded = []
        for stem in (stems[i] for i in indices):
            if as_stored:
                loaded.append((read(images[stem], palette_to_rgb=True), read(masks[stem], palette_to_rgb=False), None))
                continue
            image = read_image(images[stem], in_channels)
            mask, ids = read_mask(masks[stem], num_classes)
            _check_sizes(images[stem], image.shape[:2], masks[stem], mask.shape)  # the pixels, as the headers said
            loaded.append((image, mask, ids))
        return loaded

    def probe(indices: Sequence[int]) -> list[bool]:
        return [read_mask(masks[stems[i]], num_classes)[1] is not None for i in indices]

    return Source(tuple(str(images[s]) for s in stems), tuple(sizes), in_channels, load, probe)


def _check_sizes(image_path: Path, image_size: tuple, mask_path: Path, mask_size: tuple) -> None:
    if tuple(image_size) != tuple(mask_size):
        raise DataError(
            f"{image_path} is {image_size[0]}x{image_size[1]} but its mask {mask_path} is "
            f"{mask_size[0]}x{mask_size[1]}. Fix: save the mask at the image's size"
        )


def _samples_note(path: Path) -> str:
    """Where a stack's slices were saved as the samples of one page (read as colour channels), say so."""
    samples = samples_per_pixel(path) if path.suffix.lower() in (".tif", ".tiff") else 1
    return f", with {samples} samples per pixel in each page (read as colour channels, not as slices)" if samples > 1 else ""


def _index_stack(volume_path: Path, labels_path: Path, in_channels: int, num_classes: int, as_stored: bool = False) -> Source:
    """ISBI-2012 style: a multi-page image TIFF and a label TIFF with one page per slice."""
    for p in (volume_path, labels_path):
        if not p.is_file():
            raise DataError(
                f"{p}: missing. Fix: an ISBI volume needs its label stack beside it ({volume_path.name} + {labels_path.name})"
            )
    volume_shape, labels_shape = stack_shape(volume_path), stack_shape(labels_path)
    if volume_shape[0] != labels_shape[0] or volume_shape[1:3] != labels_shape[1:3]:
        raise DataError(
            f"{volume_path} holds {volume_shape[:3]} (slices, H, W) but {labels_path} holds {labels_shape[:3]}"
            f"{_samples_note(labels_path)}. Fix: use matching stacks, one label page per image page"
        )
    slices = volume_shape[0]

    def load(indices: Sequence[int]) -> list:
        volume = read_slices(volume_path, indices, slices, palette_to_rgb=True)
        labels = read_slices(labels_path, indices, slices, palette_to_rgb=False)
        if as_stored:
            return [(image, label, None) for image, label in zip(volume, labels)]
        loaded = []
        for k, image, label in zip(indices, volume, labels):
            mask, ids = to_mask(label, f"{labels_path}[slice {k}]", num_classes)
            loaded.append((to_image(image, f"{volume_path}[slice {k}]", in_channels), mask, ids))
        return loaded

    def probe(indices: Sequence[int]) -> list[bool]:
        labels = read_slices(labels_path, indices, slices, palette_to_rgb=False)
        return [to_mask(label, f"{labels_path}[slice {k}]", num_classes)[1] is not None for k, label in zip(indices, labels)]

    names = tuple(f"{volume_path}[slice {k}]" for k in range(slices))
    return Source(names, ((volume_shape[1], volume_shape[2]),) * slices, in_channels, load, probe)


