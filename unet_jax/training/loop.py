"""The training run: plan, data, lock, then the loop of steps; `unet_jax.training.run_dir` says what
the run directory holds and when each is allowed.

`run` carries out a `RunPlan` (`unet_jax.training.plan`, settled before any work); `train` and
`resume` plan and run in one call. Nothing is written before the plan, the data and the
directory have been checked, and the directory is locked for the run's life. One `due` decides
when the loop logs, validates and checkpoints; where the steps start (`resume.py`) and what the
run says at its end (`report.py`) are plain functions beside it.
"""

from __future__ import annotations

import contextlib
import dataclasses
import datetime
import functools
import math
import signal
import threading
import time
from pathlib import Path
from typing import Any, Mapping, Optional, Union

import jax
import jax.numpy as jnp
import numpy as np
from tqdm import tqdm

from unet_jax.config import TrainConfig, UNetConfig, UNetError
from unet_jax.data import DataError, Normalization, Samples, prefetch
from unet_jax.data.augment import augment, chain
from unet_jax.data.elastic import elastic_deform
from unet_jax.data.inspect import training_warnings
from unet_jax.data.prefetch import Prefetcher
from unet_jax.data.targets import separated_targets
from unet_jax.inference.metrics import add_counts, scores_from_counts
from unet_jax.model.compute import Compute
from unet_jax.model.unet import UNet
from unet_jax.runtime.mesh import DataParallel
from unet_jax.runtime.processes import is_primary
from unet_jax.training.checkpoints import Checkpointer
from unet_jax.training.errors import TrainingInterrupted
from unet_jax.training.losses import make_loss, needs_weights
from unet_jax.training.memory_plan import compared, compiled_bytes, estimate, layout_of
from unet_jax.training.plan import RunPlan, plan_new_run, plan_resumed_run
from unet_jax.training.profiling import StepProfiler
from unet_jax.training.report import divergence_message, finish, where_to_continue
from unet_jax.training.resume import fresh_state, restore
from unet_jax.training.run_dir import FollowerRunDir, MetricsLog, RunDir
from unet_jax.training.sampling import TrainingData, batch_at, load_data
from unet_jax.training.step import create_train_state, make_eval_step, make_optax_optimizer, make_train_step
from unet_jax.training.validation import validate, validation_tiles
from unet_jax.weights.start_from import init_normalization


class NonFiniteLossError(UNetError):
    """Training diverged; every checkpoint saved before is left as it was."""


def due(step: int, every: int, total: int) -> bool:
    """Whether a periodic action (a log record, a validation, a checkpoint) falls on `step`: every
    `every` steps, and always on the last one."""
    return step % every == 0 or step == total


# ------------------------------------------------------------------ entry points
def train(cfg: Union[TrainConfig, RunPlan], run_dir, progress: bool = True, log=print,
          parallel: Optional[DataParallel] = None) -> dict:
    """Start a run of `cfg` (a TrainConfig, planned here with the default compute options, or a
    plan) in `run_dir`; returns the summary. `parallel`: the devices (default: all)."""
    plan = cfg if isinstance(cfg, RunPlan) else plan_new_run(cfg, parallel=parallel)
    return run(plan, run_dir, progress, log)


def resume(run_dir, requested: Optional[Mapping[str, Any]] = None, progress: bool = True, log=print,
           parallel: Optional[DataParallel] = None) -> dict:
    """Continue the run in `run_dir` from its newest intact checkpoint; returns the summary.

    `requested`: the option values to change, by field name (of UNetConfig, TrainConfig or
    Compute), within what `plan_resumed_run` allows; a new learning rate is recorded, and the run is
    then no longer an exact continuation. Without any checkpoint the run starts again from step 0.
    Nothing in the directory changes until the checkpoint has been restored. The checkpoint
    may have been saved on any number of devices.
    """
    return run(plan_resumed_run(run_dir, nest(requested or {}), parallel), run_dir, progress, log)


def nest(options: Mapping[str, Any]) -> dict[str, dict]:
    """Flat options by field name -> {"model": ..., "training": ..., "compute": ...}, as the plan takes them."""
    groups = {"model": UNetConfig, "training": TrainConfig, "compute": Compute}
    names = {group: {f.name for f in dataclasses.fields(kind)} for group, kind in groups.items()}
    return {group: {k: v for k, v in options.items() if k in names[group] and (group != "training" or k not in names["model"])}
            for group in groups}


def run(plan: RunPlan, run_dir, progress: bool = True, log=print) -> dict:
    """Carry out `plan` in `run_dir`, a new run or a resumed one; returns the summary.

    A new run is refused (before anything is written) if the directory holds a trained run or
    another process holds it. A directory left by a run that stopped before its first
    checkpoint holds nothing trained, so the new run replaces it.
    """
    if not is_primary():
        return _run_steps_of(plan, _load(plan), FollowerRunDir(run_dir), False, _silent)
    directory = RunDir(run_dir)
    if plan.resumed:
        with directory.lock():
            return _run_steps_of(plan, _load(plan), directory, progress, log)
    directory.check_new_run()  # fail fast, before loading data; checked again under the lock
    data = _load(plan, log)  # bad data fails here, in every process, before anything is written
    with directory.lock():
        directory.check_no_trained_run()
        if directory.state == "unstarted":
            log(f"{directory} holds a run that stopped before its first checkpoint: starting over in place")
            directory.clear()
        return _run_steps_of(plan, data, directory, progress, log)


def _load(plan: RunPlan, log=None) -> TrainingData:
    data = load_data(plan.train, plan.parallel, plan.sources)
    if log is not None and plan.train.data is not None:  # `unet-jax inspect --data` tells more
        for warning in training_warnings(data.train):
            log(f"data: warning: {warning}")
    return data


def _silent(*_):
    """The log of the processes after process 0: process 0 speaks for the run."""


def default_run_dir(cfg: TrainConfig) -> Path:
    return Path("runs") / f"{cfg.preset}-{datetime.datetime.now():%Y%m%d-%H%M%S}"


# ------------------------------------------------------------------ the run
@dataclasses.dataclass
class _Position:
    """How far the run got: what an interruption message needs."""

    started: bool = False  # config.json written: the directory now holds this run
    step: int = 0  # the last step completed


def _run_steps_of(plan: RunPlan, data: TrainingData, run: RunDir, progress: bool, log) -> dict:
    """One process's share of a run: from a fresh or restored state to the last step, then the report."""
    cfg, parallel = plan.train, plan.parallel
    log(f"preset {cfg.preset!r}: {cfg.model}, tiles {cfg.tile_size}->{cfg.label_size}, batch {cfg.batch_size} "
        f"over {parallel.device_count} device(s){' (FSDP)' if parallel.fsdp else ''}, "
        f"{cfg.steps} steps, {cfg.optimizer} lr {cfg.learning_rate}, {plan.loss_note()}, {cfg.dtype}, "
        f"data {cfg.data or 'built-in synthetic cells'}, run dir {run}")
    if len(data.read_per_process) > 1 or cfg.data_shards > 1:
        log(f"{len(data.train)} training images in {cfg.data_shards} shard(s); training images read by "
            f"each process: {list(data.read_per_process)}")
    # A pure function of the training images (or of --init-weights): refitting one never saved gives the same numbers.
    normalization = run.load_normalization() if plan.resumed else None
    normalization = normalization or init_normalization(cfg) or Normalization.from_moments(data.moments)
    train_samples, train_weights, val_samples, val_weights = _targets(cfg, data.train.map_images(normalization.apply),
                                                                      data.val.map_images(normalization.apply), log)
    val_images, val_masks, *val_rest = validation_tiles(val_samples, cfg, val_weights)
    val_tiles = (val_images, val_masks, val_rest[0] if val_rest else None)
    # What weight_map.png shows: the first training image's targets.
    weight_map_example = None if train_weights is None else (train_samples.images[0], train_samples.masks[0], train_weights[0])
    if plan.batch_groups > 1:
        log(f"the network runs on {plan.batch_groups} groups of each batch side by side (--batch-groups; 1: off)")
    model = UNet(cfg.model, dtype=jnp.dtype(cfg.dtype), remat=plan.compute.remat, pin_relu_output=plan.compute.pin_relu_output,
                 batch_groups=plan.batch_groups)
    template = create_train_state(model, make_optax_optimizer(cfg.optimizer, cfg.learning_rate, cfg.momentum),
                                  cfg.seed, cfg.tile_size)
    template = parallel.place_state(template)  # restores take this layout, whatever the checkpoint's
    checkpointer = Checkpointer(run.file(RunDir.CHECKPOINTS), keep=cfg.keep_checkpoints)
    eval_step = make_eval_step(make_loss(cfg.loss), shardings=parallel.step_shardings(template))
    position = _Position()
    try:
        try:
            state = restore(checkpointer, template, plan, run, log) if plan.resumed else fresh_state(template, plan, log)
            position.step = int(state.step)
            # The run has really started: what --resume rebuilds from is written now.
            run.save_config(cfg, plan.compute, plan.settled())
            run.save_normalization(normalization)
            position.started = True
            metrics_log = MetricsLog(run.file(RunDir.METRICS), keep_until=position.step, write=is_primary(), log=log)
            state = run_steps(state, plan, train_samples, train_weights, eval_step, val_tiles, checkpointer, metrics_log,
                              run, position, progress, log)
        finally:
            checkpointer.close()  # waits for a checkpoint still being written
    except KeyboardInterrupt:
        raise TrainingInterrupted(f"interrupted at step {position.step}. "
                                  f"{where_to_continue(run, cfg, position.started, position.step)}") from None
    return finish(plan, run, state, eval_step, val_tiles, data, normalization, metrics_log, weight_map_example, log)


def _targets(cfg: TrainConfig, train: Samples, val: Samples, log):
    """(train, train weights, val, val weights): with the gap between touching objects and the
    weight maps where the config asks for them, computed here once for the whole run."""
    if not cfg.separates_touching:
        return train, None, val, None
    started = time.perf_counter()
    recipe = dict(w0=cfg.weight_w0, sigma=cfg.weight_sigma, gap_width=cfg.target_gap_width)
    train, train_weights = separated_targets(train, needs_weights(cfg.loss), **recipe)
    val, val_weights = separated_targets(val, needs_weights(cfg.loss), **recipe)
    made = f"targets with a {cfg.target_gap_width}-pixel gap between touching objects" + (
        f" and their weight maps (w0 {cfg.weight_w0:g}, sigma {cfg.weight_sigma:g} px)" if train_weights else "")
    log(f"{made}: {time.perf_counter() - started:.1f} s for {len(train.held) + len(val.held)} images")
    return train, train_weights, val, val_weights


def run_steps(state, plan: RunPlan, train_samples: Samples, train_weights, eval_step, val_tiles: tuple,
              checkpointer: Checkpointer, metrics_log: MetricsLog, run: RunDir, position: _Position, progress: bool, log):
    """The loop: the steps after `state.step` up to the plan's last, each logged, validated and
    checkpointed when `due`; returns the last state."""
    cfg, parallel = plan.train, plan.parallel
    val_images, val_masks, val_weights = val_tiles
    start = int(state.step)
    augmentations = [functools.partial(elastic_deform, sigma=cfg.elastic_sigma)] if cfg.elastic else []
    augmentations += [augment] if cfg.augment else []
    train_step = make_train_step(make_loss(cfg.loss), augment=chain(*augmentations) if augmentations else None,
                                 shardings=parallel.step_shardings(state))
    window, timer = [], _Throughput()
    bar = tqdm(total=cfg.steps, initial=start, desc="train", disable=not progress, dynamic_ncols=True)
    # Batches are cut and placed on the device two steps ahead, on worker threads (unet_jax.data.prefetch).
    feed = Prefetcher(lambda step: parallel.global_batch(
        cfg.batch_size, functools.partial(batch_at, train_samples, cfg, step, train_weights)),
        range(start + 1, cfg.steps + 1), workers=prefetch.workers_for(jax.local_devices()))
    profiler = StepProfiler(cfg.profile_range if is_primary() else None, start, run.file("profile"), log)
    with _stop_between_steps(log) as stop, contextlib.closing(bar), feed, contextlib.closing(profiler):
        for step in range(start + 1, cfg.steps + 1):
            with profiler.step(step):
                with timer.data():
                    batch = _next_batch(feed, step, checkpointer, run, cfg, position)
                if step == start + 1:  # the compile the first call would do, done here to read its figure
                    log(compared(estimate(layout_of(plan)), compiled_bytes(train_step.lower(state, *batch).compile())))
                # Dispatch is asynchronous: the device computes while the workers make the next batches.
                state, metrics = train_step(state, *batch)
            profiler.done(step, metrics)
            window.append(metrics)
            bar.update(1)
            if step == start + 1:  # keep compilation out of the throughput figures
                jax.block_until_ready(metrics)
                log(f"first step, compilation included: {timer.restart():.1f} s")
            else:
                timer.steps += 1
            if due(step, cfg.log_every, cfg.steps) or due(step, cfg.checkpoint_every, cfg.steps):
                record = _train_record(step, window, timer, cfg.batch_size)
                if not record.pop("finite"):
                    checkpointer.wait()  # so that the message names every checkpoint there is
                    raise NonFiniteLossError(divergence_message(run, cfg, step, record, window_start=step - len(window) + 1))
                metrics_log.write(record)
                bar.set_postfix(loss=f"{record['loss']:.4f}", steps_s=f"{record['steps_per_s']:.2f}",
                                img_s=f"{record['img_per_s']:.1f}")
                window = []
                timer.restart()
            if due(step, cfg.eval_every, cfg.steps):
                val_metrics, _ = validate(eval_step, state, val_images, val_masks, cfg.batch_size, val_weights, parallel.put)
                metrics_log.write({"step": step, "split": "val", **val_metrics})
                say = bar.write if is_primary() else _silent
                say(f"step {step}: val loss {val_metrics['loss']:.4f}, foreground Dice {val_metrics['dice']:.4f}, "
                    f"IoU {val_metrics['iou']:.4f}")
            if due(step, cfg.checkpoint_every, cfg.steps):
                checkpointer.save(state)  # only ever after the window's loss and gradients were finite
            position.step = step
            if stop.is_set():
                raise KeyboardInterrupt
    return state


def _next_batch(feed: Prefetcher, step: int, checkpointer: Checkpointer, run: RunDir, cfg: TrainConfig,
                position: _Position) -> tuple:
    """The batch of `step` from the prefetcher's workers; a file that fails them stops the run with one
    message naming it and what was kept (no worker thread's traceback: the prefetcher hands its error here)."""
    try:
        return feed.next(step)
    except (DataError, OSError) as error:
        checkpointer.wait()  # so that the message names every checkpoint there is
        raise DataError(f"the batch of step {step} could not be made: {error}. "
                        f"{where_to_continue(run, cfg, position.started, position.step)}") from None


@contextlib.contextmanager
def _stop_between_steps(log):
    """While training, a first Ctrl-C asks the loop to stop after the current step, so that no
    step, checkpoint write or log record is cut in half; a second one stops at once. (Signal
    handlers belong to the main thread; elsewhere Ctrl-C keeps its usual effect.)"""
    stop = threading.Event()
    if threading.current_thread() is not threading.main_thread():
        yield stop
        return
    previous = signal.getsignal(signal.SIGINT)

    def on_ctrl_c(signum, frame):
        if stop.is_set():
            raise KeyboardInterrupt
        stop.set()
        log("stopping after this step (Ctrl-C again to stop at once)")

    signal.signal(signal.SIGINT, on_ctrl_c)
    try:
        yield stop
    finally:
        signal.signal(signal.SIGINT, previous)


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
    """The logged record of a window of steps, with "finite": whether every loss and gradient norm
    in it was finite (a finite loss can still come with an infinite gradient that ruins the update)."""
    fetched = jax.device_get(window)  # the one sync point per logging window
    seconds = time.perf_counter() - timer.start
    counts = None
    for metrics in fetched:
        counts = add_counts(counts, {k: metrics[k] for k in ("true_positive", "predicted", "actual")})
    timed = max(timer.steps, 1)
    losses = [float(m["loss"]) for m in fetched]
    return {
        "step": step,
        "split": "train",
        "loss": float(np.mean(losses)),
        "last_loss": losses[-1],
        "grad_norm": float(fetched[-1]["grad_norm"]),
        "dice": scores_from_counts(counts)["dice"],
        "steps_per_s": timer.steps / seconds,
        "img_per_s": timer.steps * batch_size / seconds,
        "data_ms_per_step": 1000 * timer.data_seconds / timed,
        "finite": all(math.isfinite(x) for m in fetched for x in (float(m["loss"]), float(m["grad_norm"]))),
    }
