"""Where a run's steps start: a fresh state (random, or the `--init-weights` file) or, resumed, the
newest intact checkpoint, with what changed recorded. Plain functions beside the loop."""

from __future__ import annotations

import contextlib
import datetime

import jax
from jax.experimental import multihost_utils

from unet_jax.config import TRAJECTORY_FIELDS, ConfigError
from unet_jax.training.checkpoints import Checkpointer
from unet_jax.training.errors import RunDirError
from unet_jax.training.plan import RunPlan
from unet_jax.training.run_dir import RunDir
from unet_jax.training.step import TrainState
from unet_jax.weights.io import read_weights_file
from unet_jax.weights.start_from import start_from_weights


def fresh_state(template: TrainState, plan: RunPlan, log) -> TrainState:
    """The state a run starts from at step 0: random, or `--init-weights` with a fresh optimizer."""
    cfg = plan.train
    if cfg.init_weights is None:
        return template
    log(f"starting from the weights in {cfg.init_weights}")
    weights = plan.init_weights or read_weights_file(cfg.init_weights)  # a resumed plan reads it only here, when needed
    state = start_from_weights(template, weights, cfg.model)  # new weights as host arrays, the rest as placed
    parallel = plan.parallel
    shardings = parallel.state_shardings(state)

    def place(tree, tree_shardings):
        return None if tree is None else jax.tree.map(parallel.put, tree, tree_shardings)

    return state.replace(params=place(state.params, shardings.params), batch_stats=place(state.batch_stats, shardings.batch_stats))


def restore(checkpointer: Checkpointer, template: TrainState, plan: RunPlan, run: RunDir, log) -> TrainState:
    """The newest intact checkpoint (unusable ones moved aside), or a fresh state where there is
    none; the resume and its changes are recorded in the run directory."""
    cfg, changes = plan.train, plan.changes
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
        log(f"checkpoint {step} in {checkpointer.directory} can't be restored ({why}): moved to {moved}")
    if skipped:
        multihost_utils.sync_global_devices("unet_jax: unusable checkpoints moved aside")  # by process 0
        checkpointer.reload()
    exact = start == 0 or not (set(changes) & set(TRAJECTORY_FIELDS))
    if state is None:
        log(f"{run} has no checkpoint yet: starting the run again from step 0")
        with contextlib.suppress(FileNotFoundError):
            run.file(RunDir.RESUMES).unlink()  # the run begins anew
    else:
        log(f"resumed from step {start}" + (f", skipping checkpoint(s) {[s for s, _ in skipped]}" if skipped else ""))
    for name, (old, new) in changes.items():
        note = "" if exact or name not in TRAJECTORY_FIELDS else ": from here on the run is no longer an exact continuation"
        log(f"{name} {old} -> {new}{note}")
    run.record_resume({"at": datetime.datetime.now().isoformat(timespec="seconds"), "from_step": start,
                       "changes": {k: list(v) for k, v in changes.items()}, "exact": exact})
    return fresh_state(template, plan, log) if state is None else state
