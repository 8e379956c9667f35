"""Tile geometry of the overlap-tile strategy, and the choice of a tile size.

An input tile starting at image position p (rows and columns alike) yields output pixels from
image position p + context on; `crop` output pixels are dropped first and `stride` are used.
Three things decide the numbers:

- Valid convs shrink a tile: `context = (T - output) / 2` input pixels of each side only feed
  the output's receptive fields (the paper's context margin).
- Tiles start at multiples of 2**depth (`stride` is rounded down to one), so that every
  tile's 2x2 pools group the same pixel pairs as a pass over the whole image does.
- A `margin` of output pixels on each side is predicted and thrown away where the edge of
  a tile would otherwise differ from the whole-image pass:
  * valid convs, transposed up-convs: 0. Nothing in the network sees past the tile.
  * valid convs, bilinear up-sampling: 2**depth - 1. Half-pixel bilinear x2 reads the
    neighbour one pixel outside the map for its outermost output pixel, and clamps at a
    tile's edge instead. If the outermost c pixels of a map differ from the whole-image pass
    before an up-sampling, the outermost 2c + 1 differ after it (output pixel i reads inputs
    floor((i - 1) / 2) and floor((i + 1) / 2)); a valid 3x3 conv keeps that count (its output
    j reads inputs j .. j + 2, counted from each map's own edge), the encoder and the skips
    never clamp. From c = 0 at the bottleneck, depth up-samplings leave 2**depth - 1.
  * same padding: 2**depth by default. Every conv zero-pads at the tile's edge, so pixels
    near it differ from the whole-image pass however wide the margin; the default keeps one
    bottleneck pixel of overlap, and 0 gives plain abutting tiles.
  With these margins the tiled prediction of a valid-padding network equals one forward pass
  over the image mirror-padded by (context + margin), cropped by the margin.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Iterator, Optional

from unet_jax.config import ConfigError, UNetConfig
from unet_jax.runtime.memory import budget_override, device_memory_stats

DEFAULT_BATCH_SIZE = 4
MEMORY_FRACTION = 0.5  # of the accelerator's free memory that the activation estimate may use
CPU_MEMORY_BUDGET = 2 * 2**30  # bytes, where the device reports no memory statistics (CPU)


@dataclasses.dataclass(frozen=True)
class TileGeometry:
    """Where one square input tile's used output lies (see the module docstring)."""

    tile_size: int  # input side T
    context: int  # input pixels before the first used output pixel
    crop: int  # output pixels dropped before it (the margin)
    stride: int  # used output pixels per tile, a multiple of 2**depth

    def tiles_along(self, length: int) -> int:
        return math.ceil(length / self.stride)


def default_margin(config: UNetConfig) -> int:
    """The margin of output pixels thrown away on each side of a tile (module docstring)."""
    if config.padding == "same":
        return 2**config.depth
    return 2**config.depth - 1 if config.upsample == "bilinear" else 0


def tile_geometry(config: UNetConfig, tile_size: int, margin: Optional[int] = None) -> TileGeometry:
    """The geometry for input tiles of side `tile_size`; ConfigError naming usable sizes if there is none."""
    config.check_input_size(tile_size, tile_size)
    context, crop, usable = _tile_output(config, tile_size, margin)
    step = 2**config.depth
    stride = max(usable, 0) // step * step
    if stride == 0:
        smallest = next(tile_sizes(config, margin))
        raise ConfigError(
            f"tile size {tile_size} leaves {usable} output pixel(s) per tile, fewer than 2**depth = {step} "
            f"(tiles must start on the 2x2-pool grid). Use a tile size of at least {smallest}."
        )
    return TileGeometry(tile_size, context, crop, stride)


def _tile_output(config: UNetConfig, tile_size: int, margin: Optional[int]) -> tuple[int, int, int]:
    """(context, crop, usable output pixels) of a valid input tile size."""
    margin = default_margin(config) if margin is None else margin
    if not isinstance(margin, int) or isinstance(margin, bool) or margin < 0:
        raise ConfigError(f"the tile margin must be a non-negative integer, got {margin!r}")
    output = config.output_size(tile_size)
    return (tile_size - output) // 2 + margin, margin, output - 2 * margin


def tile_sizes(config: UNetConfig, margin: Optional[int] = None) -> Iterator[int]:
    """Every valid input size that leaves a non-zero stride, ascending, without end: the valid sizes
    are `config.smallest_input_size` + k * 2**depth (stepping one size at a time took seconds for a deep network)."""
    size = config.smallest_input_size
    while True:
        if _tile_output(config, size, margin)[2] >= 2**config.depth:
            yield size
        size += 2**config.depth


def activation_bytes(config: UNetConfig, tile_size: int, bytes_per_value: int = 4) -> int:
    """Bytes of every feature map of one tile's forward pass, summed.

    An upper bound on what inference keeps alive (XLA frees maps it no longer needs, but the
    skips live until the decoder), and simple enough to check by hand.
    """
    shrink, per_conv = config.conv_shrink, (2 if config.norm else 1)  # BatchNorm adds a map per conv

    def convs(size, channels):  # two 3x3 convs: their output maps, and the size after them
        return per_conv * channels * ((size - shrink) ** 2 + (size - 2 * shrink) ** 2), size - 2 * shrink

    size = tile_size
    values = size * size * config.in_channels  # the input tile
    for level in range(config.depth):
        maps, size = convs(size, config.channels(level))
        size //= 2
        values += maps + config.channels(level) * size * size  # + the pooled map
    maps, size = convs(size, config.channels(config.depth))
    values += maps
    for step in range(1, config.depth + 1):
        channels, size = config.channels(config.depth - step), 2 * size
        maps, after = convs(size, channels)
        values += 3 * channels * size * size + maps  # up-conv output, the concat (twice as wide), convs
        size = after
    values += 2 * config.num_classes * size * size  # logits and probabilities
    return values * bytes_per_value


def memory_budget_bytes(device=None) -> int:
    """`MEMORY_FRACTION` of the device's free memory, or of `UNET_JAX_MEMORY_BUDGET` where it is set
    (the same figure training's memory check takes: one setting for both), or `CPU_MEMORY_BUDGET`
    where the device reports no memory."""
    override = budget_override()
    if override is not None:
        return int(MEMORY_FRACTION * override)
    import jax  # here, not at the top: the command line reads DEFAULT_BATCH_SIZE without starting JAX

    stats = device_memory_stats(device or jax.devices()[0])
    if stats is None:
        return CPU_MEMORY_BUDGET
    return int(MEMORY_FRACTION * max(stats["bytes_limit"] - stats.get("bytes_in_use", 0), 0))


def _useful_sizes(config: UNetConfig, height: int, width: int, margin: Optional[int]) -> Iterator[TileGeometry]:
    """Geometries of the usable tile sizes, ascending, up to the first whose one tile covers the
    image: larger tiles only add mirrored padding, never information."""
    for size in tile_sizes(config, margin):
        geometry = tile_geometry(config, size, margin)
        yield geometry
        if geometry.stride >= max(height, width):
            return


def _batch_bytes(config: UNetConfig, geometry: TileGeometry, height: int, width: int, batch_size: int) -> tuple[int, int]:
    """(tiles in the batch, activation bytes of that batch): fewer tiles than batch_size shrink it."""
    batch = min(batch_size, geometry.tiles_along(height) * geometry.tiles_along(width))
    return batch, batch * activation_bytes(config, geometry.tile_size)


def default_tile_size(
    config: UNetConfig,
    height: int,
    width: int,
    batch_size: int = DEFAULT_BATCH_SIZE,
    budget_bytes: Optional[int] = None,
    margin: Optional[int] = None,
) -> int:
    """The useful tile size that fits the memory budget and computes the fewest pixels.

    Candidates run from the smallest usable size up to the first whose single tile covers the
    whole image, keeping those whose batch (`batch_size` tiles, or fewer when the image has
    fewer) has `activation_bytes` within `budget_bytes` (default: `memory_budget_bytes()`).
    Among them wins the one that pushes the fewest pixels through the network, zero-padded
    batch slots included; ties go to the larger tile. If not even the smallest tile fits the
    budget it is used anyway: the estimate is an upper bound.
    """
    budget = memory_budget_bytes() if budget_bytes is None else budget_bytes
    smallest = best = best_cost = None
    for geometry in _useful_sizes(config, height, width, margin):
        size = geometry.tile_size
        batch, needed = _batch_bytes(config, geometry, height, width, batch_size)
        smallest = smallest or size
        cost = math.ceil(geometry.tiles_along(height) * geometry.tiles_along(width) / batch) * batch * size * size
        if needed <= budget and (best_cost is None or cost <= best_cost):
            best, best_cost = size, cost
    return best or smallest


def usable_tile_size(
    config: UNetConfig,
    tile_size: int,
    height: int,
    width: int,
    batch_size: int = DEFAULT_BATCH_SIZE,
    budget_bytes: Optional[int] = None,
    margin: Optional[int] = None,
) -> int:
    """A requested tile size, capped at the largest useful one for this image.

    ConfigError when it is not a usable size, or when its batch's activations exceed the memory
    budget (default `memory_budget_bytes()`): the message gives both numbers and the largest
    tile size that fits.
    """
    tile_geometry(config, tile_size, margin)  # names the nearest valid sizes if it is not one
    *_, largest = _useful_sizes(config, height, width, margin)
    if tile_size >= largest.tile_size:
        tile_size = largest.tile_size
    budget = memory_budget_bytes() if budget_bytes is None else budget_bytes
    batch, needed = _batch_bytes(config, tile_geometry(config, tile_size, margin), height, width, batch_size)
    if needed <= budget:
        return tile_size
    fitting = [
        g.tile_size for g in _useful_sizes(config, height, width, margin)
        if g.tile_size < tile_size and _batch_bytes(config, g, height, width, batch_size)[1] <= budget
    ]
    advice = f"use a tile size of at most {fitting[-1]}" if fitting else "no tile size fits: use a smaller batch size"
    raise ConfigError(
        f"tile size {tile_size} needs about {needed / 2**30:.2f} GiB of activations for a batch of {batch} tile(s), "
        f"over the memory budget of {budget / 2**30:.2f} GiB: {advice} (--tile-size), or a smaller batch (--batch-size)"
    )
