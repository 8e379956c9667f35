"""The training run: data, the jitted step, validation, logging, checkpoints and resume.

A run directory holds everything needed to continue or use the run:

    config.json          the resolved TrainConfig (what --resume rebuilds from)
    normalization.json   the intensity normalisation fitted on the training images
    metrics.jsonl        one JSON record per logged train window and per validation
    checkpoints/         Orbax checkpoints of the full train state (last K kept)
    weights.safetensors  the final Flax weights (`unet-jax convert` turns them into torch)
    summary.json         final validation metrics
    loss.png, predictions.png
"""

from __future__ import annotations

import contextlib
import json
import math
import time
from pathlib import Path
from typing import Optional

import jax
import jax.numpy as jnp
import numpy as np
from tqdm import tqdm

from unet_jax.checkpoints import Checkpointer
from unet_jax.config import TrainConfig
from unet_jax.data import Normalization, Samples, augment, load_folder, make_cells, sample_tiles, split_validation
from unet_jax.evaluate import evaluate_samples
from unet_jax.losses import make_loss
from unet_jax.metrics import add_counts, scores_from_counts
from unet_jax.model import UNet
from unet_jax.plots import plot_losses, plot_predictions
from unet_jax.predict import Predictor
from unet_jax.train_step import (
    TrainState,
    create_train_state,
    make_eval_step,
    make_optax_optimizer,
    make_train_step,
)
from unet_jax.weights_io import save_flax_weights

VAL_SEED_OFFSET = 1_000_003  # the held-out cells come from a different stream than the training ones


class NonFiniteLossError(RuntimeError):
    """Training diverged; the last good checkpoint is left as it was."""


def load_data(cfg: TrainConfig) -> tuple[Samples, Samples]:
    """(train, validation) samples, not yet normalised."""
    if cfg.data is None:
        if cfg.model.in_channels != 1 or cfg.model.num_classes != 2:
            raise ValueError("the built-in cells are 1-channel, 2-class: pass --data for other in_channels/num_classes")
        size = cfg.cells_image_size
        return (
            make_cells(cfg.cells_train_images, size, seed=cfg.seed),
            make_cells(cfg.cells_val_images, size, seed=cfg.seed + VAL_SEED_OFFSET),
        )
    train = load_folder(cfg.data, cfg.model.in_channels, cfg.model.num_classes)
    if cfg.val_data is not None:
        return train, load_folder(cfg.val_data, cfg.model.in_channels, cfg.model.num_classes)
    return split_validation(train, cfg.val_fraction, seed=cfg.seed)


def batch_at(samples: Samples, cfg: TrainConfig, step: int) -> tuple[np.ndarray, np.ndarray]:
    """The training batch of `step`: a pure function of (seed, step), so resume needs no RNG state."""
    rng = np.random.default_rng([cfg.seed, step])
    return sample_tiles(samples.images, samples.masks, rng, cfg.batch_size, cfg.tile_size, cfg.label_size)


def validation_tiles(samples: Samples, cfg: TrainConfig) -> tuple[np.ndarray, np.ndarray]:
    """A fixed set of held-out tiles, a whole number of batches so one compiled shape serves."""
    count = math.ceil(len(samples) * cfg.val_tiles_per_image / cfg.batch_size) * cfg.batch_size
    rng = np.random.default_rng([cfg.seed, VAL_SEED_OFFSET])
    return sample_tiles(samples.images, samples.masks, rng, count, cfg.tile_size, cfg.label_size)


def validate(eval_step, state: TrainState, images: np.ndarray, masks: np.ndarray, batch_size: int):
    """(loss and scores over all tiles, predictions of the first batch), `batch_size` tiles per call."""
    counts, losses, first_predictions = None, [], None
    for start in range(0, len(images), batch_size):
        metrics = eval_step(state, images[start : start + batch_size], masks[start : start + batch_size])
        counts = add_counts(counts, {k: metrics[k] for k in ("true_positive", "predicted", "actual")})
        losses.append(float(metrics["loss"]))
        if first_predictions is None:
            first_predictions = np.asarray(metrics["predictions"])
    return {"loss": float(np.mean(losses)), **scores_from_counts(counts)}, first_predictions


class MetricsLog:
    """metrics.jsonl, appended as the run goes; on resume, records past the checkpoint are dropped
    so that the file reads as one uninterrupted run."""

    def __init__(self, path: Path, resume_step: Optional[int] = None):
        self.path = path
        self.records: list[dict] = []
        if resume_step is not None and path.exists():
            self.records = [r for r in map(json.loads, path.read_text().splitlines()) if r["step"] <= resume_step]
            path.write_text("".join(json.dumps(r) + "\n" for r in self.records))

    def write(self, record: dict) -> None:
        self.records.append(record)
        with self.path.open("a") as f:
            f.write(json.dumps(record) + "\n")


def train(
    cfg: TrainConfig, run_dir: Path, resume: bool = False, progress: bool = True, log=print
) -> dict:
    """Run (or, with `resume`, continue) training in `run_dir`; returns the summary."""
    run_dir = Path(run_dir)
    _check_run_dir(run_dir, resume)
    log(f"preset {cfg.preset!r}: {cfg.model}, tiles {cfg.tile_size}->{cfg.label_size}, batch {cfg.batch_size}, "
        f"{cfg.steps} steps, {cfg.optimizer} lr {cfg.learning_rate}, loss {cfg.loss}, {cfg.dtype}, "
        f"data {cfg.data or 'built-in synthetic cells'}, run dir {run_dir}")

    train_samples, val_samples = load_data(cfg)  # bad data fails here, before anything is written
    run_dir.mkdir(parents=True, exist_ok=True)
    (run_dir / "config.json").write_text(json.dumps(cfg.to_dict(), indent=2) + "\n")
    normalization = _normalization(train_samples, run_dir, resume)
    train_samples = train_samples.map_images(normalization.apply)
    val_images, val_masks = validation_tiles(val_samples.map_images(normalization.apply), cfg)

    model = UNet(cfg.model, dtype=jnp.dtype(cfg.dtype))
    tx = make_optax_optimizer(cfg.optimizer, cfg.learning_rate, cfg.momentum)
    state = create_train_state(model, tx, cfg.seed, cfg.tile_size)
    checkpointer = Checkpointer(run_dir / "checkpoints", keep=cfg.keep_checkpoints)
    if resume:
        state = checkpointer.restore(state)
        log(f"resumed from step {int(state.step)}")
    start = int(state.step)
    metrics_log = MetricsLog(run_dir / "metrics.jsonl", resume_step=start if resume else None)

    loss_fn = make_loss(cfg.loss)
    train_step = make_train_step(loss_fn, augment=augment if cfg.augment else None)
    eval_step = make_eval_step(loss_fn)

    window, timer = [], _Throughput()
    bar = tqdm(total=cfg.steps, initial=start, desc="train", disable=not progress, dynamic_ncols=True)
    try:
        for step in range(start + 1, cfg.steps + 1):
            with timer.data():
                images, masks = batch_at(train_samples, cfg, step)
            # Dispatch is asynchronous: the host samples the next batch while the device computes.
            state, metrics = train_step(state, images, masks)
            window.append(metrics)
            bar.update(1)
            if step == start + 1:  # keep compilation out of the throughput figures
                jax.block_until_ready(metrics)
                log(f"first step, compilation included: {timer.restart():.1f} s")
            else:
                timer.steps += 1
            last = step == cfg.steps
            if step % cfg.log_every == 0 or step % cfg.checkpoint_every == 0 or last:
                record = _train_record(step, window, timer, cfg.batch_size)
                if not math.isfinite(record["loss"]):
                    raise NonFiniteLossError(
                        f"the training loss became {record['loss']} by step {step}; stopped without saving. "
                        f"The last good checkpoint in {run_dir / 'checkpoints'} is intact: resume from it with a "
                        "lower --learning-rate, or check the data for NaN/inf values."
                    )
                metrics_log.write(record)
                bar.set_postfix(loss=f"{record['loss']:.4f}", steps_s=f"{record['steps_per_s']:.2f}",
                                img_s=f"{record['img_per_s']:.1f}")
                window = []
                timer.restart()
            if step % cfg.eval_every == 0 or last:
                val_metrics, _ = validate(eval_step, state, val_images, val_masks, cfg.batch_size)
                metrics_log.write({"step": step, "split": "val", **val_metrics})
                bar.write(f"step {step}: val loss {val_metrics['loss']:.4f}, foreground Dice {val_metrics['dice']:.4f}, "
                          f"IoU {val_metrics['iou']:.4f}")
            if step % cfg.checkpoint_every == 0 or last:
                checkpointer.save(state)
    finally:
        bar.close()
        checkpointer.close()

    whole_images = (val_samples, normalization)
    return _finish(cfg, run_dir, state, eval_step, val_images, val_masks, whole_images, metrics_log, log)


def _check_run_dir(run_dir: Path, resume: bool) -> None:
    if resume:
        if not (run_dir / "config.json").is_file():
            raise FileNotFoundError(f"{run_dir} holds no run (no config.json) to resume")
    elif (run_dir / "config.json").exists():
        raise FileExistsError(
            f"{run_dir} already holds a run; continue it with --resume {run_dir}, or choose another --run-dir"
        )


def _normalization(train_samples: Samples, run_dir: Path, resume: bool) -> Normalization:
    path = run_dir / "normalization.json"
    if resume and path.exists():
        return Normalization.from_dict(json.loads(path.read_text()))
    normalization = Normalization.from_images(train_samples.images)
    path.write_text(json.dumps(normalization.to_dict(), indent=2) + "\n")
    return normalization


class _Throughput:
    """Wall time of the steps dispatched since the last restart, and the host's share of it."""

    def __init__(self):
        self.restart()

    def restart(self) -> float:
        now = time.perf_counter()
        elapsed = now - getattr(self, "start", now)
        self.start, self.steps, self.data_seconds = now, 0, 0.0
        return elapsed

    @contextlib.contextmanager
    def data(self):
        start = time.perf_counter()
        yield
        self.data_seconds += time.perf_counter() - start


def _train_record(step: int, window: list, timer: _Throughput, batch_size: int) -> dict:
    fetched = jax.device_get(window)  # the one sync point per logging window
    seconds = time.perf_counter() - timer.start
    counts = None
    for metrics in fetched:
        counts = add_counts(counts, {k: metrics[k] for k in ("true_positive", "predicted", "actual")})
    timed = max(timer.steps, 1)
    return {
        "step": step,
        "split": "train",
        "loss": float(np.mean([m["loss"] for m in fetched])),
        "last_loss": float(fetched[-1]["loss"]),
        "grad_norm": float(fetched[-1]["grad_norm"]),
        "dice": scores_from_counts(counts)["dice"],
        "steps_per_s": timer.steps / seconds,
        "img_per_s": timer.steps * batch_size / seconds,
        "data_ms_per_step": 1000 * timer.data_seconds / timed,
    }


def _finish(cfg, run_dir, state, eval_step, val_images, val_masks, whole_images, metrics_log, log) -> dict:
    variables = {"params": state.params}
    if state.batch_stats is not None:
        variables["batch_stats"] = state.batch_stats
    save_flax_weights(jax.device_get(variables), cfg.model, run_dir / "weights.safetensors", overwrite=True)
    val_metrics, predictions = validate(eval_step, state, val_images, val_masks, cfg.batch_size)
    shown = min(4, len(predictions))
    plot_predictions(val_images[:shown], val_masks[:shown], predictions[:shown], run_dir / "predictions.png")
    plot_losses(metrics_log.records, run_dir / "loss.png")
    # The tiles score training's view; users judge whole images, predicted overlap-tile.
    val_samples, normalization = whole_images
    whole = evaluate_samples(Predictor(cfg.model, variables, normalization), val_samples, batch_size=cfg.batch_size)
    summary = {"preset": cfg.preset, "steps": int(state.step), "validation_tiles": val_metrics,
               "validation_whole_images": whole}
    (run_dir / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
    log(f"done: held-out foreground Dice {whole['dice']:.4f}, IoU {whole['iou']:.4f}, pixel accuracy "
        f"{whole['pixel_accuracy']:.4f} on {whole['num_images']} whole images ({len(val_images)} tiles: Dice "
        f"{val_metrics['dice']:.4f}); weights in {run_dir / 'weights.safetensors'}")
    return summary
