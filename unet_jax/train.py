"""The training run: data, the jitted step, validation, logging, checkpoints, resume.

`train` starts a run in a run directory and `resume` continues one; `unet_jax.run_dir` says
what the directory holds and when each is allowed. Nothing is written before the config,
the data and the directory have been checked, and the directory is locked for the run's life.
"""

from __future__ import annotations

import contextlib
import datetime
import functools
import math
import signal
import threading
import time
from pathlib import Path
from typing import Any, Mapping, Optional

import jax
import jax.numpy as jnp
import numpy as np
from jax.experimental import multihost_utils
from tqdm import tqdm

from unet_jax.checkpoints import Checkpointer
from unet_jax.config import TRAJECTORY_FIELDS, ConfigError, TrainConfig, UNetError
from unet_jax.data import DataError, Normalization, Samples, augment, prefetch, sample_tiles
from unet_jax.data.augment import chain
from unet_jax.data.elastic import elastic_deform
from unet_jax.data.inspect import training_warnings
from unet_jax.data.prefetch import Prefetcher
from unet_jax.data.targets import separated_targets
from unet_jax.distributed import DataParallel, check_batch_size, fetch, is_primary
from unet_jax.evaluate import evaluate_samples
from unet_jax.init_weights import init_normalization, start_from_weights
from unet_jax.losses import make_loss, needs_weights
from unet_jax.metrics import add_counts, scores_from_counts
from unet_jax.model import UNet, default_batch_groups
from unet_jax.plots import plot_losses, plot_predictions, plot_weight_map
from unet_jax.predict import Predictor
from unet_jax.profiling import StepProfiler
from unet_jax.run_dir import FollowerRunDir, MetricsLog, RunDir, RunDirError, TrainingInterrupted
from unet_jax.train_data import VAL_SEED_OFFSET, TrainingData, load_data
from unet_jax.train_step import TrainState, create_train_state, make_eval_step, make_optax_optimizer, make_train_step
from unet_jax.weights_io import save_flax_weights


class NonFiniteLossError(UNetError):
    """Training diverged; every checkpoint saved before is left as it was."""


# ------------------------------------------------------------------ data
def batch_at(samples: Samples, cfg: TrainConfig, step: int, weights=None, rows: Optional[range] = None) -> tuple[np.ndarray, ...]:
    """The training batch of `step` (its `rows` only, if given): a pure function of (seed, step),
    so resume needs no RNG state and every process agrees on the global batch.

    (images, masks), or (images, masks, weights) with per-image `weights`. Elastic deformation
    moves labels into the output window from around it, so it gets input-sized label tiles.
    """
    rng = np.random.default_rng([cfg.seed, step])
    label_size = cfg.tile_size if cfg.elastic else cfg.label_size
    return sample_tiles(samples.images, samples.masks, rng, cfg.batch_size, cfg.tile_size, cfg.label_size, weights, label_size,
                        rows=rows, threads=cfg.sampling_threads, shards=cfg.data_shards)


def validation_tiles(samples: Samples, cfg: TrainConfig, weights=None) -> tuple[np.ndarray, ...]:
    """A fixed set of held-out tiles, a whole number of batches so one compiled shape serves."""
    count = math.ceil(len(samples) * cfg.val_tiles_per_image / cfg.batch_size) * cfg.batch_size
    rng = np.random.default_rng([cfg.seed, VAL_SEED_OFFSET])
    return sample_tiles(samples.images, samples.masks, rng, count, cfg.tile_size, cfg.label_size, weights,
                        threads=cfg.sampling_threads)


def validate(eval_step, state: TrainState, images: np.ndarray, masks: np.ndarray, batch_size: int, weights=None,
             place=lambda a: a):
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


# ------------------------------------------------------------------ entry points
def train(cfg: TrainConfig, run_dir, progress: bool = True, log=print, parallel: Optional[DataParallel] = None) -> dict:
    """Start a run of `cfg` in `run_dir`; returns the summary.

    Refused (before anything is written) if the directory holds a trained run or another
    process holds it. A directory left by a run that stopped before its first checkpoint
    holds nothing trained, so the new run replaces it. `parallel`: the devices (default: all).
    """
    parallel = parallel or DataParallel.create()
    check_batch_size(cfg.batch_size, parallel.device_count)
    if not is_primary():
        return _Session(*load_data(cfg, parallel), FollowerRunDir(run_dir), False, _silent, parallel).run(changes=None)
    run = RunDir(run_dir)
    run.check_new_run()  # fail fast, before loading data; checked again under the lock
    cfg, data = load_data(cfg, parallel)  # bad data fails here, in every process, before anything is written
    if cfg.data is not None:  # `unet-jax inspect --data` tells more
        for warning in training_warnings(data.train):
            log(f"data: warning: {warning}")
    with run.lock():
        run.check_no_trained_run()
        if run.state == "unstarted":
            log(f"{run} holds a run that stopped before its first checkpoint: starting over in place")
            run.clear()
        return _Session(cfg, data, run, progress, log, parallel).run(changes=None)


def resume(run_dir, requested: Optional[Mapping[str, Any]] = None, progress: bool = True, log=print,
           parallel: Optional[DataParallel] = None) -> dict:
    """Continue the run in `run_dir` from its newest intact checkpoint; returns the summary.

    `requested` may change what `TrainConfig.resumed_with` allows (the step count, the
    learning rate, bookkeeping); a new learning rate is recorded, and the run is then no
    longer an exact continuation. Without any checkpoint the run starts again from step 0.
    Nothing in the directory changes until the checkpoint has been restored. The checkpoint
    may have been saved on any number of devices.
    """
    parallel = parallel or DataParallel.create()
    if not is_primary():
        cfg, changes = RunDir(run_dir).load_config().resumed_with(requested or {})
        return _Session(*load_data(cfg, parallel), FollowerRunDir(run_dir), False, _silent, parallel).run(changes=changes)
    run = RunDir(run_dir)
    run.check_resumable()
    with run.lock():
        cfg, changes = run.load_config().resumed_with(requested or {})
        check_batch_size(cfg.batch_size, parallel.device_count)
        cfg, data = load_data(cfg, parallel)
        return _Session(cfg, data, run, progress, log, parallel).run(changes=changes)


def _silent(*_):
    """The log of the processes after process 0: process 0 speaks for the run."""


def default_run_dir(cfg: TrainConfig) -> Path:
    return Path("runs") / f"{cfg.preset}-{datetime.datetime.now():%Y%m%d-%H%M%S}"


# ------------------------------------------------------------------ the run
class _Session:
    """One process's share of a run: from a fresh or restored state to the last step."""

    def __init__(self, cfg: TrainConfig, data: TrainingData, run: RunDir, progress: bool, log, parallel: DataParallel):
        self.cfg, self.data, self.run_dir, self.progress, self.log, self.parallel = cfg, data, run, progress, log, parallel
        self.train_samples, self.val_samples = data.train, data.val
        self.started = False  # config.json written: the directory now holds this run
        self.step = 0  # the last step completed

    def run(self, changes: Optional[dict]) -> dict:
        """`changes` None: a new run; else a resume with these {field: (old, new)} changes."""
        cfg = self.cfg
        self.log(f"preset {cfg.preset!r}: {cfg.model}, tiles {cfg.tile_size}->{cfg.label_size}, batch {cfg.batch_size} "
                 f"over {self.parallel.device_count} device(s){' (FSDP)' if self.parallel.fsdp else ''}, "
                 f"{cfg.steps} steps, {cfg.optimizer} lr {cfg.learning_rate}, loss {cfg.loss}, {cfg.dtype}, "
                 f"data {cfg.data or 'built-in synthetic cells'}, run dir {self.run_dir}")
        if len(self.data.read_per_process) > 1 or cfg.data_shards > 1:
            self.log(f"{len(self.train_samples)} training images in {cfg.data_shards} shard(s); training images read by "
                     f"each process: {list(self.data.read_per_process)}")
        # A pure function of the training images (or of --init-weights): refitting one never saved gives the same numbers.
        normalization = self.run_dir.load_normalization() if changes is not None else None
        normalization = normalization or init_normalization(cfg) or Normalization.from_moments(self.data.moments)
        train_samples = self.train_samples.map_images(normalization.apply)
        val_samples = self.val_samples.map_images(normalization.apply)
        train_samples, self.train_weights, val_samples, val_weights = self._targets(train_samples, val_samples)
        val_images, val_masks, *val_rest = validation_tiles(val_samples, cfg, val_weights)
        self.val_weights = val_rest[0] if val_rest else None
        self.weight_map_example = None  # what weight_map.png shows: the first training image's targets
        if self.train_weights is not None:
            self.weight_map_example = (train_samples.images[0], train_samples.masks[0], self.train_weights[0])
        groups = cfg.batch_groups or default_batch_groups(self.parallel.device_count, cfg.model.norm)
        if groups > 1:
            self.log(f"the network runs on {groups} groups of each batch side by side (--batch-groups; 1: off)")
        model = UNet(cfg.model, dtype=jnp.dtype(cfg.dtype), remat=cfg.remat, batch_groups=groups)
        template = create_train_state(model, make_optax_optimizer(cfg.optimizer, cfg.learning_rate, cfg.momentum),
                                      cfg.seed, cfg.tile_size)
        template = self.parallel.place_state(template)  # restores take this layout, whatever the checkpoint's
        checkpointer = Checkpointer(self.run_dir.file(RunDir.CHECKPOINTS), keep=cfg.keep_checkpoints)
        eval_step = make_eval_step(make_loss(cfg.loss), shardings=self.parallel.step_shardings(template))
        try:
            try:
                state = self._fresh(template) if changes is None else self._restore(checkpointer, template, changes)
                self.step = int(state.step)
                # The run has really started: what --resume rebuilds from is written now.
                self.run_dir.save_config(cfg)
                self.run_dir.save_normalization(normalization)
                self.started = True
                metrics_log = MetricsLog(self.run_dir.file(RunDir.METRICS), keep_until=self.step, write=is_primary())
                state = self._loop(state, train_samples, eval_step, val_images, val_masks, checkpointer, metrics_log)
            finally:
                checkpointer.close()  # waits for a checkpoint still being written
        except KeyboardInterrupt:
            raise TrainingInterrupted(f"interrupted at step {self.step}. {self._where_to_continue()}") from None
        return self._finish(state, eval_step, val_images, val_masks, normalization, metrics_log)

    def _targets(self, train: Samples, val: Samples):
        """(train, train weights, val, val weights): with the gap between touching objects and the
        weight maps where the config asks for them, computed here once for the whole run."""
        cfg = self.cfg
        if not cfg.separates_touching:
            return train, None, val, None
        started = time.perf_counter()
        train, train_weights = separated_targets(train, needs_weights(cfg.loss))
        val, val_weights = separated_targets(val, needs_weights(cfg.loss))
        made = "targets with a one-pixel gap between touching objects" + (" and their weight maps" if train_weights else "")
        self.log(f"{made}: {time.perf_counter() - started:.1f} s for {len(train.held) + len(val.held)} images")
        return train, train_weights, val, val_weights

    def _restore(self, checkpointer: Checkpointer, template: TrainState, changes: dict) -> TrainState:
        cfg, run = self.cfg, self.run_dir
        state, skipped = checkpointer.restore_newest_intact(template)
        if state is None and skipped:
            reasons = "; ".join(f"step {s}: {why}" for s, why in skipped)
            raise RunDirError(
                f"no checkpoint in {checkpointer.directory} can be restored ({reasons}). Fix: to start this run again "
                f"from step 0, move that folder aside (mv {checkpointer.directory} {checkpointer.directory}.broken) and "
                f"run `unet-jax train --resume {run}` again"
            )
        start = 0 if state is None else int(state.step)
        if start > cfg.steps:
            raise ConfigError(f"--steps {cfg.steps} is below step {start}, where the run in {run} already is")
        for step, why in skipped:
            moved = run.set_aside(step)
            self.log(f"checkpoint {step} in {checkpointer.directory} can't be restored ({why}): moved to {moved}")
        if skipped:
            multihost_utils.sync_global_devices("unet_jax: unusable checkpoints moved aside")  # by process 0
            checkpointer.reload()
        exact = start == 0 or not (set(changes) & set(TRAJECTORY_FIELDS))
        if state is None:
            self.log(f"{run} has no checkpoint yet: starting the run again from step 0")
            with contextlib.suppress(FileNotFoundError):
                run.file(RunDir.RESUMES).unlink()  # the run begins anew
        else:
            self.log(f"resumed from step {start}" + (f", skipping checkpoint(s) {[s for s, _ in skipped]}" if skipped else ""))
        for name, (old, new) in changes.items():
            note = "" if exact or name not in TRAJECTORY_FIELDS else ": from here on the run is no longer an exact continuation"
            self.log(f"{name} {old} -> {new}{note}")
        run.record_resume({"at": datetime.datetime.now().isoformat(timespec="seconds"), "from_step": start,
                           "changes": {k: list(v) for k, v in changes.items()}, "exact": exact})
        return self._fresh(template) if state is None else state

    def _fresh(self, template: TrainState) -> TrainState:
        """The state a run starts from at step 0: random, or `--init-weights` with a fresh optimizer."""
        if self.cfg.init_weights is None:
            return template
        self.log(f"starting from the weights in {self.cfg.init_weights}")
        state = start_from_weights(template, self.cfg)  # new weights as host arrays, the rest as placed
        shardings = self.parallel.state_shardings(state)

        def place(tree, tree_shardings):
            return None if tree is None else jax.tree.map(self.parallel.put, tree, tree_shardings)

        return state.replace(params=place(state.params, shardings.params),
                             batch_stats=place(state.batch_stats, shardings.batch_stats))

    def _loop(self, state, train_samples, eval_step, val_images, val_masks, checkpointer, metrics_log) -> TrainState:
        """Run the steps after `state.step` up to `cfg.steps`; returns the last state."""
        cfg = self.cfg
        start = int(state.step)
        augmentations = [functools.partial(elastic_deform, sigma=cfg.elastic_sigma)] if cfg.elastic else []
        augmentations += [augment] if cfg.augment else []
        train_step = make_train_step(make_loss(cfg.loss), augment=chain(*augmentations) if augmentations else None,
                                     shardings=self.parallel.step_shardings(state))
        window, timer = [], _Throughput()
        bar = tqdm(total=cfg.steps, initial=start, desc="train", disable=not self.progress, dynamic_ncols=True)
        # Batches are cut and placed on the device two steps ahead, on worker threads (unet_jax.data.prefetch).
        feed = Prefetcher(lambda step: self.parallel.global_batch(
            cfg.batch_size, functools.partial(batch_at, train_samples, cfg, step, self.train_weights)),
            range(start + 1, cfg.steps + 1), workers=prefetch.workers_for(jax.local_devices()))
        profiler = StepProfiler(cfg.profile_range if is_primary() else None, start, self.run_dir.file("profile"), self.log)
        with _stop_between_steps(self.log) as stop, contextlib.closing(bar), feed, contextlib.closing(profiler):
            for step in range(start + 1, cfg.steps + 1):
                with profiler.step(step):
                    with timer.data():
                        batch = self._next_batch(feed, step, checkpointer)
                    # Dispatch is asynchronous: the device computes while the workers make the next batches.
                    state, metrics = train_step(state, *batch)
                profiler.done(step, metrics)
                window.append(metrics)
                bar.update(1)
                if step == start + 1:  # keep compilation out of the throughput figures
                    jax.block_until_ready(metrics)
                    self.log(f"first step, compilation included: {timer.restart():.1f} s")
                else:
                    timer.steps += 1
                last = step == cfg.steps
                if step % cfg.log_every == 0 or step % cfg.checkpoint_every == 0 or last:
                    record = _train_record(step, window, timer, cfg.batch_size)
                    if not record.pop("finite"):
                        checkpointer.wait()  # so that the message names every checkpoint there is
                        raise NonFiniteLossError(self._divergence_message(step, record, window_start=step - len(window) + 1))
                    metrics_log.write(record)
                    bar.set_postfix(loss=f"{record['loss']:.4f}", steps_s=f"{record['steps_per_s']:.2f}",
                                    img_s=f"{record['img_per_s']:.1f}")
                    window = []
                    timer.restart()
                if step % cfg.eval_every == 0 or last:
                    val_metrics, _ = validate(eval_step, state, val_images, val_masks, cfg.batch_size, self.val_weights,
                                              self.parallel.put)
                    metrics_log.write({"step": step, "split": "val", **val_metrics})
                    say = bar.write if is_primary() else _silent
                    say(f"step {step}: val loss {val_metrics['loss']:.4f}, foreground Dice {val_metrics['dice']:.4f}, "
                        f"IoU {val_metrics['iou']:.4f}")
                if step % cfg.checkpoint_every == 0 or last:
                    checkpointer.save(state)  # only ever after the window's loss and gradients were finite
                self.step = step
                if stop.is_set():
                    raise KeyboardInterrupt
        return state

    def _next_batch(self, feed: Prefetcher, step: int, checkpointer: Checkpointer) -> tuple:
        """The batch of `step` from the prefetcher's workers; a file that fails them stops the run with one
        message naming it and what was kept (no worker thread's traceback: the prefetcher hands its error here)."""
        try:
            return feed.next(step)
        except (DataError, OSError) as error:
            checkpointer.wait()  # so that the message names every checkpoint there is
            raise DataError(f"the batch of step {step} could not be made: {error}. {self._where_to_continue()}") from None

    # ------------------------------------------------------------------ messages
    def _where_to_continue(self) -> str:
        """What exists now, and the command that continues from it."""
        run = self.run_dir
        if not self.started:
            return "Nothing was written yet: run the same command again."
        steps = run.checkpoint_steps()
        if steps:
            recomputed = "" if steps[-1] == self.step else "; the steps after it are recomputed, identically"
            return (f"The latest checkpoint is step {steps[-1]} ({run.file(RunDir.CHECKPOINTS) / str(steps[-1])}): continue "
                    f"with `unet-jax train --resume {run}`{recomputed}.")
        return (f"No checkpoint was saved yet (the first is due at step {self.cfg.checkpoint_every}), so nothing is "
                f"lost: start the run again with `unet-jax train --resume {run}`.")

    def _divergence_message(self, step: int, record: dict, window_start: int) -> str:
        cfg, run = self.cfg, self.run_dir
        lower = f"{cfg.learning_rate / 10:g}"
        what = f"the training loss became {record['loss']}" if not math.isfinite(record["loss"]) else "the gradients became non-finite"
        steps = run.checkpoint_steps()
        if steps:
            exists = (f"The latest checkpoint, step {steps[-1]} ({run.file(RunDir.CHECKPOINTS) / str(steps[-1])}), was saved "
                      "while loss and gradients were finite: continue from it with a lower learning rate")
        else:
            exists = (f"No checkpoint was saved yet (the first is due at step {cfg.checkpoint_every}), so nothing is lost: "
                      "start the run again from step 0 with a lower learning rate")
        when = f"at step {step}" if window_start == step else f"between steps {window_start} and {step}"
        return (f"{what} {when}; stopped without saving anything more. {exists}: "
                f"`unet-jax train --resume {run} --learning-rate {lower}`.")

    # ------------------------------------------------------------------ the end
    def _finish(self, state, eval_step, val_images, val_masks, normalization: Normalization, metrics_log) -> dict:
        cfg, run = self.cfg, self.run_dir
        variables = {"params": state.params}
        if state.batch_stats is not None:
            variables["batch_stats"] = state.batch_stats
        variables = fetch(variables)
        val_metrics, predictions = validate(eval_step, state, val_images, val_masks, cfg.batch_size, self.val_weights,
                                            self.parallel.put)
        if not is_primary():
            return {"steps": int(state.step), "validation_tiles": val_metrics}  # process 0 writes and scores the run
        save_flax_weights(variables, cfg.model, run.file(RunDir.WEIGHTS), overwrite=True)
        shown = min(4, len(predictions))
        plot_predictions(val_images[:shown], val_masks[:shown], predictions[:shown], run.file(RunDir.PREDICTIONS_PLOT))
        if self.weight_map_example is not None:
            plot_weight_map(*self.weight_map_example, run.file(RunDir.WEIGHT_MAP_PLOT))
        plot_losses(metrics_log.records, run.file(RunDir.LOSS_PLOT))
        # The tiles score training's view; users judge whole images, predicted overlap-tile.
        predictor = Predictor(cfg.model, variables, normalization, devices=self.parallel.local_device_count)
        whole = evaluate_samples(predictor, self.val_samples, batch_size=cfg.batch_size)
        resumes = run.resumes()
        summary = {"preset": cfg.preset, "steps": int(state.step), "exact_continuation": all(r["exact"] for r in resumes),
                   "resumes": resumes, "validation_tiles": val_metrics, "validation_whole_images": whole,
                   "training_data": {"images": len(self.train_samples), "shards": cfg.data_shards,
                                     "read_per_process": list(self.data.read_per_process)}}
        run.save_summary(summary)
        objects = whole.get("instances")
        objects = (f", instance F1 {objects['f1']:.4f} with {objects['split_pairs']} of {objects['touching_pairs']} touching "
                   "pairs kept apart") if objects else ""
        self.log(f"done: held-out foreground Dice {whole['dice']:.4f}, IoU {whole['iou']:.4f}, pixel accuracy "
                 f"{whole['pixel_accuracy']:.4f}{objects} on {whole['num_images']} whole images ({len(val_images)} tiles: Dice "
                 f"{val_metrics['dice']:.4f}); weights in {run.file(RunDir.WEIGHTS)}")
        return summary


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
