"""A folder of real-size training images with instance masks, written for the training-loop benchmark.

`unet-jax train --data DIR` reads DIR/images/ and DIR/masks/ (unet_jax.data.folder). The
images are the built-in synthetic cells at the asked size, written half as PNG (8-bit image,
16-bit instance mask) and half as TIFF (16-bit image, 16-bit instance mask), so both readers
and both bit depths are in the loop, and the masks carry object ids, which --loss weighted-ce needs.

Drawing one 1024-px cells image takes about a second on a CPU core, so a few are drawn (in
parallel processes) and each is written in its 8 flips and rotations: distinct files of the same
statistics, at an eighth of the cost. What the loop costs does not depend on the pixels.
"""

from __future__ import annotations

import multiprocessing
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import numpy as np
import tifffile
from PIL import Image

from unet_jax.data.cells import cells_source

SYMMETRIES = 8  # the dihedral group of the square: 4 rotations, each also mirrored


def _draw(index_size_seed: tuple[int, int, int]) -> tuple[np.ndarray, np.ndarray]:
    index, size, seed = index_size_seed
    (image, _, ids), = cells_source(index + 1, size, seed=seed).load([index])
    return image[..., 0], ids  # float32 [H, W] in [0, 1], int32 [H, W]


def _variant(array: np.ndarray, k: int) -> np.ndarray:
    """The k-th of the 8 symmetries of a square array."""
    turned = np.rot90(array, k % 4)
    return np.ascontiguousarray(turned[:, ::-1] if k >= 4 else turned)


def write_cells_folder(folder: Path, images: int, size: int, seed: int = 0) -> dict:
    """`images` cells images of `size`x`size` under `folder`/images and `folder`/masks; what was written."""
    (folder / "images").mkdir(parents=True, exist_ok=True)
    (folder / "masks").mkdir(parents=True, exist_ok=True)
    drawn = -(-images // SYMMETRIES)
    # Spawned, not forked: a fork of a process that runs JAX's threads can deadlock.
    with ProcessPoolExecutor(min(drawn, 16), mp_context=multiprocessing.get_context("spawn")) as pool:
        bases = list(pool.map(_draw, [(i, size, seed) for i in range(drawn)]))
    for i in range(images):
        grey, ids = (_variant(a, i % SYMMETRIES) for a in bases[i // SYMMETRIES])
        if ids.max() > np.iinfo(np.uint16).max:
            raise ValueError(f"image {i}: {ids.max()} objects do not fit a 16-bit instance mask")
        labels, name = ids.astype(np.uint16), f"cells{i:03d}"
        if i % 2 == 0:
            Image.fromarray(np.round(grey * 255).astype(np.uint8)).save(folder / "images" / f"{name}.png")
            Image.fromarray(labels).save(folder / "masks" / f"{name}.png")  # 16-bit grey PNG
        else:
            tifffile.imwrite(folder / "images" / f"{name}.tif", np.round(grey * 65535).astype(np.uint16))
            tifffile.imwrite(folder / "masks" / f"{name}.tif", labels)
    return {"images": images, "size": size, "drawn": drawn, "seed": seed,
            "formats": "PNG (8-bit image, 16-bit ids) and TIFF (16-bit image, 16-bit ids), alternating; "
                       f"{drawn} synthetic cells images, each in its 8 flips/rotations",
            "bytes": sum(p.stat().st_size for p in folder.rglob("*") if p.is_file())}
