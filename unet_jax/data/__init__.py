"""Data for training a U-Net: synthetic cells, a user's folder, tiling, and on-device augmentation.

Everything here is plain numpy on the host, so that what reads files (the run directory, the
command line's checks) does not start JAX; the on-device augmentation is JAX, for the jitted
train step: `from unet_jax.data.augment import augment`.
"""

from unet_jax.data.cells import make_cells
from unet_jax.data.decoding import image_pages, read_image, read_image_pages
from unet_jax.data.errors import DataError
from unet_jax.data.pairing import data_sources, index_folder, load_folder
from unet_jax.data.samples import Normalization, NotRead, PixelMoments, Samples, split_validation
from unet_jax.data.source import Source
from unet_jax.data.tiles import TileRequest, mirror_crop, mirror_pad, sample_tiles

__all__ = [
    "DataError",
    "Normalization",
    "NotRead",
    "PixelMoments",
    "Samples",
    "Source",
    "TileRequest",
    "data_sources",
    "image_pages",
    "index_folder",
    "load_folder",
    "read_image",
    "read_image_pages",
    "make_cells",
    "mirror_crop",
    "mirror_pad",
    "sample_tiles",
    "split_validation",
]

