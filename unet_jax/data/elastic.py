"""The paper's elastic deformation of training tiles, on the device inside the jitted step.

Ronneberger et al. (2015), section 3.1: "smooth deformations using random displacement vectors
on a coarse 3 by 3 grid. The displacements are sampled from a Gaussian distribution with 10
pixels standard deviation. Per-pixel displacements are then computed using bicubic
interpolation." Here the 3x3 grid spans the input tile, the bicubic up-sampling is
`jax.image.resize(method="cubic")`, and each output pixel p reads the tile at p + u(p):
the image and the weight map bilinearly, the mask at the nearest pixel, so that labels are
never blended into ids that were not there. Positions outside the tile are mirrored, as the
tiles' context is.

One field moves image, mask and weights alike, so the mask must cover the same pixels as the
image: the trainer cuts mask (and weight) tiles at the input size when elastic deformation is
on, and the loss crops their centre after the deformation.
"""

from __future__ import annotations

from typing import Optional

import jax
import jax.numpy as jnp
from jax.scipy.ndimage import map_coordinates

GRID = 3  # the paper's coarse grid, per side
SIGMA_PX = 10.0  # the paper's standard deviation of the displacements, in pixels


def displacement_field(key: jax.Array, batch: int, size: int, sigma: float = SIGMA_PX) -> jax.Array:
    """Smooth random displacements [B, size, size, 2] (rows, columns), in pixels."""
    coarse = sigma * jax.random.normal(key, (batch, GRID, GRID, 2), jnp.float32)  # [B, 3, 3, 2]
    return jax.image.resize(coarse, (batch, size, size, 2), method="cubic")


def warp(field: jax.Array, x: jax.Array, y: jax.Array, w: Optional[jax.Array] = None):
    """Tiles moved by `field` [B, S, S, 2]: x [B, S, S, C] and w [B, S, S] bilinearly, y [B, S, S] nearest.

    Returns (x, y) or, with w, (x, y, w); dtypes are kept.
    """
    batch, size = x.shape[0], x.shape[1]
    if x.shape[1:3] != (size, size) or y.shape != (batch, size, size) or field.shape != (batch, size, size, 2):
        raise ValueError(
            f"elastic deformation needs square images, masks of the images' size and one field per image, got "
            f"x {x.shape}, y {y.shape}, field {field.shape}"
        )
    grid = jnp.arange(size, dtype=jnp.float32)
    rows = grid[None, :, None] + field[..., 0]  # [B, S, S]: where each output pixel reads
    cols = grid[None, None, :] + field[..., 1]

    def sample(plane, r, c, order):  # plane, r, c: [S, S]
        return map_coordinates(plane, [r, c], order=order, mode="mirror")

    bilinear = jax.vmap(lambda plane, r, c: sample(plane, r, c, 1))
    nearest = jax.vmap(lambda plane, r, c: sample(plane, r, c, 0))
    # Channels first, so each [S, S] plane is one map_coordinates call under vmap.
    channels = jnp.moveaxis(x, -1, 1)  # [B, C, S, S]
    moved = jax.vmap(bilinear, in_axes=(1, None, None), out_axes=1)(channels, rows, cols)
    x_out = jnp.moveaxis(moved, 1, -1).astype(x.dtype)
    # Labels go through float32 (exact for ids below 2^24) so the nearest-pixel read is a pure copy.
    y_out = jnp.round(nearest(y.astype(jnp.float32), rows, cols)).astype(y.dtype)
    if w is None:
        return x_out, y_out
    if w.shape != y.shape:
        raise ValueError(f"weights {w.shape} must have the mask's shape {y.shape}")
    return x_out, y_out, bilinear(w.astype(jnp.float32), rows, cols).astype(w.dtype)


def elastic_deform(key: jax.Array, x: jax.Array, y: jax.Array, w: Optional[jax.Array] = None, sigma: float = SIGMA_PX):
    """One random field per sample applied to x [B, S, S, C], y [B, S, S] (and w [B, S, S]).

    Has the signature of `unet_jax.data.augment`, so the train step runs either or both.
    """
    return warp(displacement_field(key, x.shape[0], x.shape[1], sigma), x, y, w)
