"""The built-in touching cells saved as a user's data folder, for tests of what a run makes of its masks."""

import numpy as np
from PIL import Image

from unet_jax.data import make_cells


def write_cells_folder(root, instance_masks: bool, count: int = 3, size: int = 64, seed: int = 2):
    """`root`/images and `root`/masks: 8-bit images, and 16-bit instance ids or 8-bit 0/255 class masks."""
    (root / "images").mkdir(parents=True)
    (root / "masks").mkdir()
    cells = make_cells(count, size=size, seed=seed, layout="touching")
    for i, (image, ids) in enumerate(zip(cells.images, cells.instances)):
        Image.fromarray((image[..., 0] * 255).astype(np.uint8)).save(root / "images" / f"c{i}.png")
        mask = ids.astype(np.uint16) if instance_masks else ((ids > 0) * 255).astype(np.uint8)  # 16-bit: instance ids
        Image.fromarray(mask).save(root / "masks" / f"c{i}.png")
    return root
