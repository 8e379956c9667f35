"""The files `unet-jax predict` writes: where each goes (checked for every input before any is
predicted), and a class-index mask or probabilities as the bytes of a PNG, TIFF or .npy file.
No JAX: the command line takes its --format choices from here."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import tifffile
from PIL import Image

from unet_jax.config import ConfigError, MissingFileError
from unet_jax.data.decoding import image_pages
from unet_jax.runtime.safe_files import OutputError, check_destination


def plan_outputs(
    image_paths: list[Path], output_dir: Path, mask_suffix: str, save_probabilities: bool, overwrite: bool,
    save_instances: bool = False,
) -> list[dict]:
    """Output paths per input, after checking every input at once: all exist, no two share an
    output, no output would land on an input, and none exists unless `overwrite`."""
    folders = [str(p) for p in image_paths if p.is_dir()]
    if folders:
        raise MissingFileError(f"{', '.join(folders)}: a folder, not an image. Fix: give its image files (e.g. {folders[0]}/*.png)")
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
        if save_instances:  # TIFF whatever --format: PNG readers mishandle 32-bit labels
            outputs["instances"] = output_dir / f"{path.stem}_instances.tif"
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


def encode_mask(labels: np.ndarray, suffix: str) -> bytes:
    """A class map or label image [H, W] (or a stack [N, H, W], TIFF only) as the bytes of a PNG or TIFF file."""
    buffer = io.BytesIO()
    if suffix == ".png":
        Image.fromarray(labels).save(buffer, format="PNG")
    else:
        tifffile.imwrite(buffer, labels, photometric="minisblack")  # never read 3 pages as RGB
    return buffer.getvalue()


def encode_npy(array: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    np.save(buffer, array)
    return buffer.getvalue()
