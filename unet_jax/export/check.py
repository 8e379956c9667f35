"""Checking an exported file against the Flax network it came from, on a random batch."""

from __future__ import annotations

from typing import Callable

import numpy as np

from unet_jax.export.source import ExportSource

CHECK_BATCH = 2  # more than one image, so the dynamic batch axis is exercised


def flax_logits(source: ExportSource, images: np.ndarray) -> np.ndarray:
    """The Flax network's logits [N, T', T', K] for standardised images [N, T, T, C] (one group:
    the function every exported file holds)."""
    import jax

    from unet_jax.model.unet import UNet

    return np.asarray(jax.jit(UNet(source.config).apply, static_argnames="train")(source.variables, images, train=False))


def random_images(source: ExportSource, batch: int = CHECK_BATCH, seed: int = 0) -> np.ndarray:
    """Standardised-looking images [batch, T, T, C]: what the exported file is fed after normalisation."""
    shape = (batch, source.tile_size, source.tile_size, source.config.in_channels)
    return np.random.default_rng(seed).normal(size=shape).astype(np.float32)


def relative_difference(source: ExportSource, run_exported: Callable[[np.ndarray], np.ndarray]) -> float:
    """max |exported - Flax| / max |Flax| over the logits of a random batch; `run_exported` takes
    and returns NHWC arrays."""
    images = random_images(source)
    expected = flax_logits(source, images)
    return float(np.abs(run_exported(images) - expected).max() / np.abs(expected).max())
