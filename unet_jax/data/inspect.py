"""`unet-jax inspect --data DIR`: what a data folder holds, and what in it leads to a network that
predicts background everywhere, before any training time is spent.

The folder is listed and paired by the training reader (`pairing.index_folder`), so inspect sees
exactly the samples training would; each file is then looked at as stored (its dtype, its
values) rather than as training converts it, since what goes wrong is in how it was saved.

Warnings (each names the files and the fix):
  - foreground (any non-zero mask value) below 1% of the mask pixels;
  - binary masks saved two ways in one set (0/1 and 0/255): one of them is not what was meant,
    and a 0/1 mask shows black in a viewer; 0/255 masks among class-index masks;
  - class indices scaled for viewing (0/127/254, 0/85/170/255), object ids in 8-bit files, and
    masks with many grey levels (resized or lossy-compressed), which the reader refuses or reads
    as many classes;
  - images far darker or brighter than the rest; images of very different sizes.
`training_warnings` gives the checks that need only what training has read, for the start of
`unet-jax train`.
"""

from __future__ import annotations

import collections
from pathlib import Path
from typing import Optional, Sequence, Union

import numpy as np
from scipy import ndimage

from unet_jax.config import UNetError
from unet_jax.data.pairing import index_folder
from unet_jax.data.pixel_rules import to_image, to_mask
from unet_jax.data.samples import NotRead, Samples

FOREGROUND_FLOOR = 0.01  # below this fraction of foreground pixels, all-background predictions are the usual outcome
# An image is "far" darker or brighter than the rest when its mean pixel (scaled to [0, 1]) lies this many robust
# standard deviations (1.4826 MAD) from the median image's, and at least BRIGHTNESS_FLOOR away.
BRIGHTNESS_SPREAD = 4.0
BRIGHTNESS_FLOOR = 0.1
SIZE_RATIO = 16  # largest / smallest image in pixels above which the small images dominate training
GREY_LEVELS = 16  # an 8-bit mask with more distinct values than this is not a class mask
NAMES_SHOWN = 3
ANY_VALUE = 2**31 - 1  # a num_classes that makes the reader keep every mask value as it is


def inspect_folder(path: Union[str, Path]) -> dict:
    """The report on the data at `path` (any layout `index_folder` reads): images, masks, warnings,
    and the files that could not be read (`errors`). A folder that can't be listed or paired
    raises the reader's DataError."""
    source = index_folder(path, 1, 2, as_stored=True)
    images, masks, errors = [], [], []
    for i, name in enumerate(source.names):
        try:
            image, mask, _ = source.load([i])[0]
            images.append(_image_record(name, image))
            masks.append(_mask_record(name, mask))
        except UNetError as error:  # the reader's own message for a file it would refuse
            errors.append(str(error))
            images = images[: len(masks)]
    warnings = _mask_warnings(masks) + _image_warnings(images)
    return {"data": str(path), "samples": len(source), "images": _image_summary(images), "masks": _mask_summary(masks),
            "warnings": warnings, "errors": errors}


def training_warnings(samples: Samples) -> list[str]:
    """The warnings that need only read, converted samples (the samples this process holds)."""
    held = [i for i in samples.held if not isinstance(samples.masks[i], NotRead)]
    names = [samples.names[i] for i in held]
    foreground = [(int(np.count_nonzero(samples.masks[i])), int(np.size(samples.masks[i]))) for i in held]
    brightness = [float(np.mean(samples.images[i])) for i in held]
    sizes = [tuple(samples.images[i].shape[:2]) for i in held]
    return _foreground_warnings(names, foreground) + _brightness_warnings(names, brightness) + _size_warnings(names, sizes)


# ------------------------------------------------------------------ one sample
def _image_record(name: str, raw: np.ndarray) -> dict:
    channels = 1 if raw.ndim == 2 else raw.shape[0] if raw.ndim == 3 and raw.shape[-1] > 4 and raw.shape[0] <= 4 else raw.shape[-1]
    image = to_image(raw, name, int(channels))  # scaled to [0, 1] as training scales it, with its checks
    return {"name": name, "size": list(image.shape[:2]), "channels": int(image.shape[-1]), "dtype": str(raw.dtype),
            "brightness": float(image.mean())}


def _mask_record(name: str, raw: np.ndarray) -> dict:
    values, _ = to_mask(raw, name, ANY_VALUE)  # grey, integer, non-negative: the reader's checks
    levels, counts = np.unique(values, return_counts=True)
    wide = raw.dtype != bool and raw.dtype.itemsize > 1
    kind = _mask_kind(levels, wide, values)
    objects = len(levels) - (levels[0] == 0) if kind.startswith("instances") else int(ndimage.label(values > 0)[1])
    return {"name": name, "kind": kind, "dtype": str(raw.dtype), "values": [int(v) for v in levels],
            "pixels": {int(v): int(c) for v, c in zip(levels, counts)}, "objects": int(objects)}


def _mask_kind(levels: np.ndarray, wide: bool, values: np.ndarray) -> str:
    """binary (0 and one value), instances (ids in a >8-bit file), classes (small indices), scaled
    (class indices spread over the grey range for viewing), instances-8bit (many values, each one
    blob: object ids in a file training reads as classes), grey (many levels: not a label image)."""
    top = int(levels[-1])
    if len(levels) <= 2:
        return "instances" if wide and top not in (1, 255, 65535) else "binary"  # one object's id
    if wide:
        return "instances"
    steps = np.diff(levels)
    if len(levels) <= GREY_LEVELS and levels[0] == 0 and steps.min() >= GREY_LEVELS and steps.max() - steps.min() <= 1:
        return "scaled"
    if top < GREY_LEVELS and len(levels) <= GREY_LEVELS:
        return "classes"
    blobs = (ndimage.label(values == v)[1] for v in levels[levels > 0])
    return "instances-8bit" if all(n == 1 for n in blobs) else "grey"


# ------------------------------------------------------------------ summaries
def _image_summary(images: Sequence[dict]) -> dict:
    sizes = collections.Counter(f"{h}x{w}" for h, w in (r["size"] for r in images))
    brightness = [r["brightness"] for r in images]
    return {
        "count": len(images),
        "sizes": dict(sizes.most_common()),
        "channels": dict(collections.Counter(r["channels"] for r in images)),
        "dtypes": dict(collections.Counter(r["dtype"] for r in images)),
        "brightness": _spread(brightness),
    }


def _mask_summary(masks: Sequence[dict]) -> dict:
    kinds = collections.Counter(r["kind"] for r in masks)
    labelled = set(kinds) - {"binary"}  # a mask with one class (or one object) present is binary to look at
    kind = "mixed" if len(labelled) > 1 else next(iter(labelled), "binary")
    pixels = collections.Counter()
    for r in masks:
        pixels.update(r["pixels"])
    total = sum(pixels.values()) or 1
    return {
        "count": len(masks),
        "kind": kind,
        "kinds": dict(kinds.most_common()),
        "dtypes": dict(collections.Counter(r["dtype"] for r in masks)),
        "values": sorted(pixels)[:32],
        "distinct_values": len(pixels),
        # binary values and instance ids are not classes: their fractions are background and foreground
        "class_fractions": ({"background": pixels.get(0, 0) / total, "foreground": 1 - pixels.get(0, 0) / total}
                            if kind in ("binary", "instances") else {str(v): c / total for v, c in sorted(pixels.items())[:32]}),
        "foreground_fraction": 1 - pixels.get(0, 0) / total,
        "empty": sum(r["values"] == [0] for r in masks),
        "objects_per_image": _spread([r["objects"] for r in masks]),
    }


def _spread(values: Sequence[float]) -> Optional[dict]:
    if not values:
        return None
    return {"min": float(np.min(values)), "median": float(np.median(values)), "max": float(np.max(values))}


# ------------------------------------------------------------------ warnings
def _shown(names: Sequence[str]) -> str:
    more = f" and {len(names) - NAMES_SHOWN} more" if len(names) > NAMES_SHOWN else ""
    return ", ".join(Path(n).name if "[" not in n else n for n in names[:NAMES_SHOWN]) + more


def _count(n: int, noun: str) -> str:
    """"1 image is", "3 images are"."""
    return f"{n} {noun} is" if n == 1 else f"{n} {noun}s are"


def _mask_warnings(masks: Sequence[dict]) -> list[str]:
    names = [r["name"] for r in masks]
    foreground = [(sum(c for v, c in r["pixels"].items() if v), sum(r["pixels"].values())) for r in masks]
    warnings = _foreground_warnings(names, foreground)
    binary = collections.defaultdict(list)  # the foreground value of each binary mask -> its files
    for r in masks:
        if r["kind"] == "binary" and len(r["values"]) == 2:
            binary[r["values"][1]].append(r["name"])
    classes = [r["name"] for r in masks if r["kind"] == "classes"]
    if 1 in binary and len(binary) > 1 and not classes:  # among class masks 0/1 is two classes: the next check's case
        other = max((v for v in binary if v != 1), key=lambda v: len(binary[v]))
        warnings.append(
            f"binary masks saved two ways: {len(binary[1])} mark foreground with 1 ({_shown(binary[1])}), {len(binary[other])} "
            f"with {other} ({_shown(binary[other])}); one of them is not what was meant (0/1 masks look black in a viewer, "
            f"and other tools read them as background). Fix: save every mask the same way, 0/{other} or 0/1"
        )
    wide_binary = [n for v, files in binary.items() if v in (255, 65535) for n in files]
    if classes and wide_binary:
        warnings.append(
            f"{_count(len(wide_binary), 'mask')} 0/255 binary ({_shown(wide_binary)}) among {len(classes)} masks of class indices "
            f"({_shown(classes)}); training reads 255 as class 1. Fix: save those as class indices too"
        )
    odd = [r["name"] for r in masks if r["kind"] == "binary" and len(r["values"]) == 2 and r["values"][1] not in (1, 255, 65535)]
    if odd:
        value = next(r["values"][1] for r in masks if r["name"] == odd[0])
        warnings.append(f"{_count(len(odd), 'binary mask')} marked with neither 1 nor 255 ({_shown(odd)}: 0/{value}); "
                        "training refuses them. Fix: save binary masks as 0/1 or 0/255")
    for kind, what, fix in (
        ("scaled", "class indices spread over the grey range for viewing", "save the class indices 0, 1, 2, ... themselves"),
        ("instances-8bit", "object ids in 8-bit files, which training reads as class indices",
         "save instance masks as 16-bit PNG or TIFF (0 background, 1..N objects)"),
        ("grey", "grey images of many levels, as resized or lossy-compressed (JPEG) masks are",
         "save masks losslessly (PNG, TIFF) at the image's size, resized if at all with nearest-neighbour"),
    ):
        files = [r for r in masks if r["kind"] == kind]
        if files:
            example = files[0]["values"]
            shown = example if len(example) <= 8 else [*example[:4], "...", *example[-2:]]
            warnings.append(f"{_count(len(files), 'mask')} {what} ({_shown([r['name'] for r in files])}: values {shown}); training "
                            f"refuses them or reads each value as a class. Fix: {fix}")
    return warnings


def _foreground_warnings(names: Sequence[str], foreground: Sequence[tuple[int, int]]) -> list[str]:
    """`foreground`: (non-zero pixels, pixels) of each mask."""
    total = sum(n for _, n in foreground)
    if not total:
        return []
    fraction = sum(f for f, _ in foreground) / total
    if fraction >= FOREGROUND_FLOOR:
        return []
    empty = [name for name, (f, _) in zip(names, foreground) if f == 0]
    where = f"; {len(empty)} of {len(names)} masks hold none ({_shown(empty)})" if empty else ""
    return [f"foreground is {100 * fraction:.2f}% of the mask pixels{where}: predicting background everywhere scores "
            f"{100 * (1 - fraction):.1f}% pixel accuracy, and networks often learn just that. Fix: --loss ce+dice (or dice); "
            "check that the masks mark the objects (a mask that looks black may hold 0/1)"]


def _image_warnings(images: Sequence[dict]) -> list[str]:
    names = [r["name"] for r in images]
    return (_brightness_warnings(names, [r["brightness"] for r in images])
            + _size_warnings(names, [tuple(r["size"]) for r in images]))


def _brightness_warnings(names: Sequence[str], brightness: Sequence[float]) -> list[str]:
    if len(brightness) < 3:  # no "rest" to compare with
        return []
    values = np.asarray(brightness)
    median = float(np.median(values))
    limit = max(BRIGHTNESS_SPREAD * 1.4826 * float(np.median(np.abs(values - median))), BRIGHTNESS_FLOOR)
    warnings = []
    for side, far in (("darker", values < median - limit), ("brighter", values > median + limit)):
        files = [f"{Path(n).name if '[' not in n else n} ({v:.2f})" for n, v, f in zip(names, values, far) if f]
        if files:
            shown = ", ".join(files[:NAMES_SHOWN]) + (f" and {len(files) - NAMES_SHOWN} more" if len(files) > NAMES_SHOWN else "")
            warnings.append(f"{_count(len(files), 'image')} far {side} than the rest (mean pixel {shown}; the median image "
                            f"{median:.2f}, on a 0-1 scale): one normalisation fits them all, so they reach the network "
                            "out of range. Fix: check their exposure or bit depth (12-bit data in 16-bit files looks dark), "
                            "or leave them out")
    return warnings


def _size_warnings(names: Sequence[str], sizes: Sequence[tuple[int, int]]) -> list[str]:
    if not sizes:
        return []
    pixels = [h * w for h, w in sizes]
    small, large = int(np.argmin(pixels)), int(np.argmax(pixels))
    ratio = pixels[large] / pixels[small]
    if ratio <= SIZE_RATIO:
        return []
    return [f"image sizes differ {ratio:.0f}x in pixels, from {sizes[small][0]}x{sizes[small][1]} ({_shown([names[small]])}) "
            f"to {sizes[large][0]}x{sizes[large][1]} ({_shown([names[large]])}): training picks images uniformly, so each "
            f"pixel of the small ones is seen about {ratio:.0f}x as often, while the large ones dominate the normalisation. "
            "Fix: cut the large images into pieces of about the small ones' size"]


# ------------------------------------------------------------------ text
def describe_report(report: dict) -> str:
    """The report as lines of text: one for the images, one for the masks, one per warning and error."""
    images, masks = report["images"], report["masks"]

    def counts(mapping: dict) -> str:
        return ", ".join(f"{k} ({v})" for k, v in mapping.items())

    lines = [f"{report['data']}: {report['samples']} samples"]
    if images["count"]:
        b = images["brightness"]
        lines.append(f"images: {images['count']}; sizes {counts(images['sizes'])}; channels {counts(images['channels'])}; "
                     f"dtypes {counts(images['dtypes'])}; mean pixel {b['min']:.2f} .. {b['max']:.2f} (median {b['median']:.2f})")
    if masks["count"]:
        o = masks["objects_per_image"]
        values = masks["values"] + (["..."] if masks["distinct_values"] > len(masks["values"]) else [])
        fractions = ", ".join(f"{k}: {100 * v:.1f}%" for k, v in list(masks["class_fractions"].items())[:8])
        kinds = f" ({counts(masks['kinds'])})" if len(masks["kinds"]) > 1 else ""
        lines.append(f"masks: {masks['kind']}{kinds}; dtypes {counts(masks['dtypes'])}; values {values}; "
                     f"pixels {fractions}; objects per image {o['min']:.0f} .. {o['max']:.0f} (median {o['median']:.0f}); "
                     f"{masks['empty']} without foreground")
    lines += [f"warning: {w}" for w in report["warnings"]]
    lines += [f"error: {e}" for e in report["errors"]]
    if not report["warnings"] and not report["errors"]:
        lines.append("no warnings")
    return "\n".join(lines)
