"""Training tiles cut from images of any size, with the paper's mirrored context.

An unpadded ("valid") U-Net predicts an output tile smaller than its input: the input tile
carries `(input_size - output_size) // 2` pixels of context on each side. The paper fills the
context that falls outside the image by mirroring the image at its border, so that every image
pixel can be predicted with full context. Sampling works the same way: an output window is
drawn inside the labelled image and its context is read from the mirrored image.
"""

from __future__ import annotations

import dataclasses
import functools
from concurrent.futures import ThreadPoolExecutor
from typing import Optional, Sequence

import numpy as np

from unet_jax.data.samples import NotRead


def _reflect(indices: np.ndarray, n: int) -> np.ndarray:
    """Map any integer positions onto 0..n-1 by reflecting at the ends without repeating the edge.

    This is `np.pad(mode="reflect")` applied as often as needed: period 2(n-1).
    """
    if n == 1:
        return np.zeros_like(indices)
    period = 2 * (n - 1)
    folded = np.mod(indices, period)
    return np.where(folded < n, folded, period - folded)


def mirror_crop(array: np.ndarray, top: int, left: int, height: int, width: int) -> np.ndarray:
    """The window [top, top+height) x [left, left+width) of `array` [H, W, ...], mirrored where it runs outside.

    Reads only the window, so cutting a tile from a large image costs the tile, not the image.
    """
    rows = _reflect(np.arange(top, top + height), array.shape[0])  # [height]
    cols = _reflect(np.arange(left, left + width), array.shape[1])  # [width]
    # The image part the window reads (a view, at most the window's size), then one gather per
    # axis: 1.4-2x faster than one 2-D fancy index, which computes an offset per pixel.
    r0, c0 = rows.min(), cols.min()
    seen = array[r0 : rows.max() + 1, c0 : cols.max() + 1]
    return seen.take(rows - r0, axis=0).take(cols - c0, axis=1)  # [height, width, ...]


def mirror_pad(array: np.ndarray, top: int, bottom: int, left: int, right: int) -> np.ndarray:
    """`array` [H, W, ...] grown by mirroring, equal to `np.pad(..., mode="reflect")` on the first two axes.

    Pads larger than the image repeat the reflection, as np.pad does.
    """
    if min(top, bottom, left, right) < 0:
        raise ValueError(f"pads must be non-negative, got {(top, bottom, left, right)}")
    h, w = array.shape[:2]
    return mirror_crop(array, -top, -left, h + top + bottom, w + left + right)


# Threads pay off from tiles of about this many input values (2-core AMD EPYC, batches of 8-16:
# 124-px demo tiles took 0.9 ms on one thread and 1.8-2.1 ms handed to a pool of 4; 572-px seed
# tiles 18.7-20.0 ms and 12.0 ms on 2 threads).
_THREADED_TILE_PIXELS = 256 * 256


@functools.cache
def _pool(threads: int) -> ThreadPoolExecutor:
    """One pool per thread count, kept for the process: starting threads for every batch cost
    more than cutting a batch of small tiles (demo tiles: 0.75 ms on one thread, 3.7 ms with a
    new 4-thread pool per batch)."""
    return ThreadPoolExecutor(threads, thread_name_prefix="unet-jax-tiles")


@dataclasses.dataclass(frozen=True)
class TileRequest:
    """What batch `sample_tiles` cuts: `batch_size` tiles of `input_size`, labelled over the
    network's `output_size` (or a concentric `label_size` window); `rows`, `threads` and `shards`
    as `sample_tiles` says. Checked when made: the sizes must fit a U-Net."""

    batch_size: int
    input_size: int
    output_size: int
    label_size: Optional[int] = None  # default: output_size
    rows: Optional[range] = None  # default: every row of the batch
    threads: int = 1
    shards: int = 1

    def __post_init__(self):
        context = self.input_size - self.output_size
        if self.output_size < 1 or context < 0 or context % 2:
            raise ValueError(
                f"input size {self.input_size} and output size {self.output_size} don't fit a U-Net: "
                "the input must exceed the output by an even number of pixels"
            )
        if self.label_size is None:
            object.__setattr__(self, "label_size", self.output_size)
        if (self.label_size - self.output_size) % 2 or self.label_size < self.output_size:
            raise ValueError(f"label size {self.label_size} must exceed the output size {self.output_size} by an even number "
                             "of pixels")
        if self.rows is None:
            object.__setattr__(self, "rows", range(self.batch_size))


def sample_tiles(
    images: Sequence[np.ndarray],
    masks: Sequence[np.ndarray],
    rng: np.random.Generator,
    request: TileRequest,
    weights: Optional[Sequence[np.ndarray]] = None,
):
    """A random batch of (input tile, label tile) pairs.

    images: [H, W, C] each (a list, or a stack [N, H, W, C]); masks: [H, W] each; weights
    (optional): per-pixel loss weights [H, W] each, cut like the masks.
    Returns x float32 [B, input_size, input_size, C] and y int32 [B, L, L], L = `request.label_size`
    (default `output_size`), and with `weights` also w float32 [B, L, L]: (x, y) or (x, y, w).
    The sizes and the options below are the `request`'s.

    A `label_size` above `output_size` cuts the labels concentric with the output window
    (mirrored where they leave the image), e.g. input-sized for elastic deformation, which moves
    labels from outside the window into it. The draws depend only on `rng` and the sizes, not on
    `weights` or `label_size`: the same seed gives the same windows.

    `rows`: cut only these tiles of the batch (one process's share of a global batch; B is then
    `len(rows)`). Every tile's position is still drawn, in order, so each row is the one the
    whole batch holds.

    `shards`: the images are dealt into this many shards (image i into shard i % shards) and the
    rows into as many blocks (row b into block b * shards // batch_size); each row draws from its
    block's shard only. A process whose rows lie in one block then needs that shard's pixels
    alone (`unet_jax.training.sampling`); images of other shards may be `NotRead` (their sizes suffice
    for the draws). With 1 shard every row draws from all images.

    `threads`: cut the tiles on this many threads (numpy's gathers release the GIL), for tiles
    large enough to gain from it (_THREADED_TILE_PIXELS). The draws stay sequential, so the
    batch is the same for any number of threads.

    Each tile: an image is picked uniformly; an output window is picked uniformly among the
    positions that lie inside the image; the input tile is the window grown by the context
    margin on every side, mirrored where it leaves the image; the label is the mask under the
    output window, so no label is invented. The one exception: a side shorter than
    `output_size` cannot hold the window, so the window is placed uniformly among positions
    that cover the whole side and the mask is mirrored too (labels of mirrored pixels are
    the labels of the pixels they mirror). Deterministic given the state of `rng`.
    """
    if len(images) != len(masks) or len(images) == 0:
        raise ValueError(f"need the same, non-zero number of images and masks, got {len(images)} and {len(masks)}")
    batch_size, input_size, output_size, label_size = request.batch_size, request.input_size, request.output_size, request.label_size
    rows, threads, shards = request.rows, request.threads, request.shards
    margin = (input_size - output_size) // 2
    label_margin = (label_size - output_size) // 2
    channels = images[0].shape[-1]
    check_shards(shards, batch_size, len(images))
    x = np.empty((len(rows), input_size, input_size, channels), np.float32)  # [B, Hin, Win, C]
    y = np.empty((len(rows), label_size, label_size), np.int32)  # [B, L, L]
    pixel_weights = None if weights is None else np.empty((len(rows), label_size, label_size), np.float32)
    cuts = []  # (row, image index, output window's top, left)
    for b in range(batch_size):
        shard = b * shards // batch_size
        members = range(shard, len(images), shards)  # with one shard: all images
        i = members[int(rng.integers(len(members)))]
        image, mask = images[i], masks[i]
        if image.shape[:2] != mask.shape or image.shape[-1] != channels:
            raise ValueError(f"sample {i}: image {image.shape} and mask {mask.shape} don't match (or channels differ)")
        h, w = mask.shape
        top = int(rng.integers(min(0, h - output_size), max(0, h - output_size) + 1))
        left = int(rng.integers(min(0, w - output_size), max(0, w - output_size) + 1))
        if b in rows:  # the draws are cheap; cutting is what a process skips for other processes' rows
            if isinstance(image, NotRead) or isinstance(mask, NotRead):
                raise ValueError(f"tile {b} is drawn from sample {i} (shard {shard} of {shards}), which was not read here")
            cuts.append((b - rows.start, i, top, left))

    def cut(row: int, i: int, top: int, left: int) -> None:
        x[row] = mirror_crop(images[i], top - margin, left - margin, input_size, input_size)
        y[row] = mirror_crop(masks[i], top - label_margin, left - label_margin, label_size, label_size)
        if weights is not None:
            pixel_weights[row] = mirror_crop(weights[i], top - label_margin, left - label_margin, label_size, label_size)

    if threads > 1 and len(cuts) > 1 and input_size * input_size * channels >= _THREADED_TILE_PIXELS:
        list(_pool(threads).map(lambda args: cut(*args), cuts))  # list(): re-raises a failed cut here
    else:
        for args in cuts:
            cut(*args)
    return (x, y) if weights is None else (x, y, pixel_weights)


def check_shards(shards: int, batch_size: int, images: int) -> None:
    """Every shard needs an image to draw from and a row of the batch to draw for."""
    if not 1 <= shards <= min(batch_size, images):
        raise ValueError(f"{shards} data shards need between 1 and min(batch size {batch_size}, images {images}) shards")


def rows_shards(rows: range, batch_size: int, shards: int) -> list[int]:
    """The shards that the rows `rows` of a batch draw from (see `sample_tiles`)."""
    return sorted({b * shards // batch_size for b in rows})


def shard_images(shard_ids: Sequence[int], images: int, shards: int) -> list[int]:
    """The images dealt into the shards `shard_ids`, in order."""
    return sorted(i for s in shard_ids for i in range(s, images, shards))
