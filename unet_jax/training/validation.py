"""Validation during and after training: a fixed set of held-out tiles, scored batch by batch."""

from __future__ import annotations

import math

import numpy as np

from unet_jax.config import TrainConfig
from unet_jax.data import Samples, sample_tiles
from unet_jax.data.tiles import TileRequest
from unet_jax.inference.metrics import add_counts, scores_from_counts
from unet_jax.training.sampling import VAL_SEED_OFFSET


def validation_tiles(samples: Samples, cfg: TrainConfig, weights=None) -> tuple[np.ndarray, ...]:
    """A fixed set of held-out tiles, a whole number of batches so one compiled shape serves."""
    count = math.ceil(len(samples) * cfg.val_tiles_per_image / cfg.batch_size) * cfg.batch_size
    rng = np.random.default_rng([cfg.seed, VAL_SEED_OFFSET])
    request = TileRequest(count, cfg.tile_size, cfg.label_size, threads=cfg.sampling_threads)
    return sample_tiles(samples.images, samples.masks, rng, request, weights)


def validate(eval_step, state, images: np.ndarray, masks: np.ndarray, batch_size: int, weights=None, place=lambda a: a):
    """(loss and scores over all tiles, predictions of the first batch), `batch_size` tiles per call,
    each batch laid out on the devices by `place`."""
    counts, losses, first_predictions = None, [], None
    for start in range(0, len(images), batch_size):
        batch = slice(start, start + batch_size)
        metrics = eval_step(state, place(images[batch]), place(masks[batch]), None if weights is None else place(weights[batch]))
        counts = add_counts(counts, {k: metrics[k] for k in ("true_positive", "predicted", "actual")})
        losses.append(float(metrics["loss"]))
        if first_predictions is None:
            first_predictions = np.asarray(metrics["predictions"])
    return {"loss": float(np.mean(losses)), **scores_from_counts(counts)}, first_predictions
