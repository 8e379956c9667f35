"""What each process of a training run reads: its own share of the training images, and the validation images.

Also the batch of each step (`batch_at`), a pure function of the seed and the step.

The training images are dealt into `TrainConfig.data_shards` shards and the rows of every batch
into as many blocks (`unet_jax.data.tiles.sample_tiles`): a row draws its tile from its block's
shard only, so a process reads the shards of its own rows and no others. Every process lists
all the files (names, pairing, sizes from the headers: the tile positions of every row are
drawn in every process), reads the pixels of its share, and fits nothing alone: the
normalisation statistics are added up over the shards, and an error met by any process (a bad
file in its share) stops every process with that message. The validation images, a small held-out
set, are read by every process.
"""

from __future__ import annotations

import dataclasses
import json
from typing import Optional

import jax
import numpy as np

from unet_jax.config import ConfigError, TrainConfig, UNetError
from unet_jax.data import DataError, Samples, split_validation
from unet_jax.data.cells import cells_source
from unet_jax.data.pairing import index_folder
from unet_jax.data.samples import PixelMoments
from unet_jax.data.source import Source
from unet_jax.data.targets import require_instances
from unet_jax.data.tiles import TileRequest, check_shards, rows_shards, sample_tiles, shard_images
from unet_jax.runtime.mesh import DataParallel
from unet_jax.runtime.processes import EveryProcessError, gather_text
from unet_jax.training.losses import needs_weights

VAL_SEED_OFFSET = 1_000_003  # the held-out cells come from a different stream than the training ones


class ShareError(DataError, EveryProcessError):
    """What one process met reading its share (a bad file), raised in every process at once."""


@dataclasses.dataclass(frozen=True)
class TrainingData:
    train: Samples  # every training sample; those outside this process's share are `NotRead`
    val: Samples
    moments: tuple[PixelMoments, ...]  # the training images' pixel moments, one per shard, in shard order
    read_per_process: tuple[int, ...]  # how many training images each process read


def load_data(cfg: TrainConfig, parallel: DataParallel, sources: tuple[Source, Source]) -> TrainingData:
    """This process's data of `sources` (`sources_of(cfg)`; `cfg.data_shards` settled). DataError (in every
    process) if any process meets a bad file in its share, or if the loss needs instance masks that the data lacks."""
    train, val, report = read_share(cfg, parallel, sources)
    reports = [json.loads(text) for text in gather_text(json.dumps(report))]
    return combine(train, val, reports, cfg.data_shards)


def read_share(cfg: TrainConfig, parallel: DataParallel, sources: tuple[Source, Source]) -> tuple[Samples, Samples, dict]:
    """(this process's training share, the validation samples, the report it gives the other
    processes: its shards' pixel moments and how many images it read, or the error it met reading them)."""
    train_source, val_source = sources
    shards = rows_shards(parallel.rows(cfg.batch_size), cfg.batch_size, cfg.data_shards)
    train = val = None
    try:
        train, val = train_source.read(shard_images(shards, len(train_source), cfg.data_shards)), val_source.read()
        if cfg.separates_touching:
            why = "--loss weighted-ce" if needs_weights(cfg.loss) else "--target-gap"
            require_instances(train, why, cfg.data)
            require_instances(val, why, cfg.val_data or cfg.data)
        moments = {s: PixelMoments.of([train.images[i] for i in shard_images([s], len(train), cfg.data_shards)]).to_dict()
                   for s in shards}
        report = {"moments": moments, "read": len(train.held)}
    except (UNetError, ValueError) as error:  # this process's share alone may hold the bad file: tell every process
        report = {"error": str(error)}
    return train, val, report


def combine(train: Samples, val: Samples, reports: list[dict], shards: int) -> TrainingData:
    """This process's data with what every process reported (`reports`, in process order); the
    first error any process met, raised here in each."""
    failed = [(process, r["error"]) for process, r in enumerate(reports) if "error" in r]
    if failed:
        process, message = failed[0]
        raise ShareError(message if len(reports) == 1 else f"process {process} of {len(reports)}: {message}")
    by_shard = {}
    for r in reports:  # a shard read by several processes has the same moments in each
        by_shard.update({int(s): m for s, m in r["moments"].items() if int(s) not in by_shard})
    if sorted(by_shard) != list(range(shards)):  # the processes' rows cover the batch, so a bug if reached
        raise RuntimeError(f"the processes reported shards {sorted(by_shard)} of {shards}")
    moments = tuple(PixelMoments.from_dict(by_shard[s]) for s in range(shards))
    return TrainingData(train, val, moments, tuple(r["read"] for r in reports))


def settle_shards(cfg: TrainConfig, images: int) -> int:
    """The shard count the run keeps: as configured, or (0) one per process, at most one per image."""
    shards = cfg.data_shards or min(jax.process_count(), images)
    try:
        check_shards(shards, cfg.batch_size, images)
    except ValueError:
        raise ConfigError(
            f"--data-shards {shards}: every shard needs at least one of the {images} training images and one of the "
            f"{cfg.batch_size} rows of the batch. Fix: --data-shards between 1 and {min(images, cfg.batch_size)} "
            "(or 0: one per process)"
        ) from None
    return shards


def sources_of(cfg: TrainConfig) -> tuple[Source, Source]:
    """(train, validation): listed, paired and sized, before any pixel is read."""
    if cfg.data is None:
        if cfg.model.in_channels != 1 or cfg.model.num_classes != 2:
            raise ConfigError("the built-in cells are 1-channel, 2-class: pass --data for other in_channels/num_classes")
        size = cfg.cells_image_size
        return (
            cells_source(cfg.cells_train_images, size, seed=cfg.seed, layout=cfg.cells_layout),
            cells_source(cfg.cells_val_images, size, seed=cfg.seed + VAL_SEED_OFFSET, layout=cfg.cells_layout),
        )
    train = index_folder(cfg.data, cfg.model.in_channels, cfg.model.num_classes)
    if cfg.val_data is not None:
        return train, index_folder(cfg.val_data, cfg.model.in_channels, cfg.model.num_classes)
    try:
        return split_validation(train, cfg.val_fraction, seed=cfg.seed)
    except ValueError as error:
        raise ConfigError(f"--data {cfg.data}: {error}") from None


def batch_at(samples: Samples, cfg: TrainConfig, step: int, weights=None, rows: Optional[range] = None) -> tuple[np.ndarray, ...]:
    """The training batch of `step` (its `rows` only, if given): a pure function of (seed, step),
    so resume needs no RNG state and every process agrees on the global batch.

    (images, masks), or (images, masks, weights) with per-image `weights`. Elastic deformation
    moves labels into the output window from around it, so it gets input-sized label tiles.
    """
    rng = np.random.default_rng([cfg.seed, step])
    label_size = cfg.tile_size if cfg.elastic else cfg.label_size
    request = TileRequest(cfg.batch_size, cfg.tile_size, cfg.label_size, label_size=label_size, rows=rows,
                          threads=cfg.sampling_threads, shards=cfg.data_shards)
    return sample_tiles(samples.images, samples.masks, rng, request, weights)
