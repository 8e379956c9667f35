"""Orbax checkpoints of the whole train state, kept every N steps with the last K retained.

Orbax writes each step into a temporary directory and renames it when complete, so a kill
mid-write leaves the previous checkpoint as the latest one; `latest_step` never sees a torn
write. Once a checkpoint is complete, a manifest of its files (`unet_jax.training.manifest`) is added,
so that damage done later (a disk error, a truncated copy) is found, and named, before
anything is restored; `restore_newest_intact` then falls back to the newest checkpoint that
is whole and restores with finite parameters. Checkpoints are sharded: every process writes
the pieces its devices hold, and a restore lays each array out as the template's is, so a
checkpoint saved on N devices restores on M. The data order needs no state of its own:
batch `s` is drawn from a generator seeded with (seed, s), so restoring the step restores the
data order too.
"""

from __future__ import annotations

import contextlib
import errno
import gc
import logging
import sys
from pathlib import Path
from typing import Iterator, Optional

import jax
import jax.numpy as jnp
import orbax.checkpoint as ocp

from unet_jax.config import MissingFileError, UNetError
from unet_jax.training.manifest import check_manifest, has_manifest, write_manifest
from unet_jax.training.step import TrainState


def _savable(state: TrainState) -> dict:
    # apply_fn and tx are code, not data: they are rebuilt from config.json on resume.
    return {
        "step": state.step,
        "params": state.params,
        "opt_state": state.opt_state,
        "batch_stats": state.batch_stats,
        "rng": state.rng,
    }


class CheckpointWriteError(UNetError):
    """A checkpoint the disk had no room for; the message names what was kept and how to go on."""


class Checkpointer:
    def __init__(self, directory: Path, keep: int):
        self.directory = Path(directory).absolute()
        with self._write_errors(None):
            self._manager = ocp.CheckpointManager(
                self.directory, options=ocp.CheckpointManagerOptions(max_to_keep=keep, create=True)
            )
        self._unsealed: list[int] = []  # saved steps whose manifest is still to be written
        # Orbax logs the failure of its background write with a traceback before raising it: the
        # message of `_write_errors` says it all, so a full disk's log record is dropped.
        logging.getLogger("absl").addFilter(_drop_disk_full_reports)

    def latest_step(self) -> Optional[int]:
        return self._manager.latest_step()

    def save(self, state: TrainState) -> None:
        """Start writing `state` in the background; the previous save is sealed first (by then,
        checkpoint_every steps later, it has long been complete)."""
        self._seal()
        with self._write_errors(int(state.step)):
            self._manager.save(int(state.step), args=ocp.args.StandardSave(_savable(state)), force=True)
        self._unsealed.append(int(state.step))

    def _seal(self) -> None:
        """Wait for the checkpoint being written, then record the files of every complete one."""
        with self._write_errors(self._unsealed[-1] if self._unsealed else None):
            self._manager.wait_until_finished()
            for step in self._unsealed:
                if jax.process_index() == 0 and (self.directory / str(step)).is_dir():  # not yet removed by max_to_keep
                    write_manifest(self.directory / str(step))
        self._unsealed = []

    @contextlib.contextmanager
    def _write_errors(self, step: Optional[int]) -> Iterator[None]:
        """A full disk (Orbax's RESOURCE_EXHAUSTED, an OSError) as a CheckpointWriteError naming the
        checkpoints kept and the fix; every other error as it is."""
        try:
            yield
        except Exception as error:
            if not _is_disk_full(error):
                raise
            if step is not None:
                _silence_failed_reads(self.directory / str(step))  # its other writes report too, as failed reads do
                gc.collect()
            kept = sorted(int(p.name) for p in self.directory.glob("*") if p.is_dir() and p.name.isdigit())
            what = f"the checkpoint of step {step}" if step is not None else "a checkpoint"
            raise CheckpointWriteError(
                f"{what} could not be written: no space left on the device of {self.directory}. Kept: "
                + (f"the complete checkpoints of steps {kept}, and the run's other files. " if kept
                   else "the run's files; no checkpoint was complete yet, so a resume starts at step 0. ")
                + f"Fix: free some space there (a partial *.orbax-checkpoint-tmp folder in it may be deleted), "
                f"then continue with `unet-jax train --resume {self.directory.parent}`"
            ) from None

    def restore(self, template: TrainState, step: Optional[int] = None) -> TrainState:
        """`template` (a freshly initialised state) supplies the structure, shapes, shardings and code."""
        step = self.latest_step() if step is None else step
        if step is None:
            raise MissingFileError(f"no checkpoint in {self.directory}; nothing to resume from")
        abstract = jax.tree.map(ocp.utils.to_shape_dtype_struct, _savable(template))
        restored = self._manager.restore(step, args=ocp.args.StandardRestore(abstract))
        return template.replace(**restored)

    def restore_newest_intact(self, template: TrainState) -> tuple[Optional[TrainState], list[tuple[int, str]]]:
        """(the newest checkpoint that restores whole with finite parameters, or None when none
        does, and (step, why) for every newer one that did not)."""
        skipped = []
        for step in sorted(self._manager.all_steps(), reverse=True):
            state, why = self._try_restore(template, step)
            if state is not None and not all(bool(jnp.isfinite(leaf).all()) for leaf in jax.tree.leaves(state.params)):
                state, why = None, "its parameters hold NaN or infinite values"
            if state is not None:
                return state, skipped
            skipped.append((step, why))
        return None, skipped

    def _try_restore(self, template: TrainState, step: int) -> tuple[Optional[TrainState], Optional[str]]:
        """(the restored state, None), or (None, why it failed) in one line."""
        folder = self.directory / str(step)
        if has_manifest(folder):
            damage = check_manifest(folder)
            if damage is not None:
                return None, damage
        try:
            return self.restore(template, step), None
        except Exception as error:  # Orbax and TensorStore raise bare Exception, ValueError, JSONDecodeError, ...
            why = _first_line(error)
        _silence_failed_reads(self.directory / str(step))
        gc.collect()  # the failed reads' futures, freed with the error, report when collected
        return None, why

    def wait(self) -> None:
        """Block until a checkpoint being written in the background is complete (and sealed)."""
        self._seal()

    def reload(self) -> None:
        """Re-read the checkpoint folder (after checkpoints were moved out of it)."""
        self._manager.reload()

    def close(self) -> None:
        step = self._unsealed[-1] if self._unsealed else None
        try:
            self._seal()
        finally:
            with self._write_errors(step):  # a write that failed for want of space fails again here
                self._manager.close()


_SILENCED_CHECKPOINTS: set[str] = set()


def _silence_failed_reads(checkpoint: Path) -> None:
    """Keep the failure of a damaged checkpoint to the one line we report.

    Only checkpoints without a manifest get here damaged (the process died before it was
    written). Orbax reads a checkpoint's arrays in parallel on an event loop that it closes as soon as
    the first read fails. The other reads report anyway, some only later: asyncio logs each
    failed future as "Future exception was never retrieved" when it is collected, and
    TensorStore threads that finish after the loop closed raise "RuntimeError: Event loop is
    closed" into sys.unraisablehook: ~150 lines for one bad file. From the first failure on,
    both are dropped: the futures' reports only where they name a checkpoint that failed.
    """
    first = not _SILENCED_CHECKPOINTS
    _SILENCED_CHECKPOINTS.add(str(checkpoint))
    if not first:
        return  # the filters are installed at the first failure
    logging.getLogger("asyncio").addFilter(_drop_failed_read_reports)
    previous = sys.unraisablehook

    def hook(unraisable):
        error = unraisable.exc_value
        if any(isinstance(e, RuntimeError) and str(e) == "Event loop is closed" for e in (error, error.__cause__)):
            return
        previous(unraisable)

    sys.unraisablehook = hook


def _drop_failed_read_reports(record: logging.LogRecord) -> bool:
    message = record.getMessage()
    return not (message.startswith("Future exception was never retrieved")
                and any(path in message for path in _SILENCED_CHECKPOINTS))


def _is_disk_full(error: BaseException) -> bool:
    """Whether `error` says the disk is full: an OSError, or Orbax's and TensorStore's text of one."""
    if isinstance(error, OSError) and error.errno in (errno.ENOSPC, errno.EDQUOT):
        return True
    return any(words in str(error) for words in (f"[os_error_code='{errno.ENOSPC}']", "No space left on device",
                                                 "Disk quota exceeded"))


def _drop_disk_full_reports(record: logging.LogRecord) -> bool:
    return not (record.exc_info and record.exc_info[1] is not None and _is_disk_full(record.exc_info[1]))


def _first_line(error: Exception, limit: int = 160) -> str:
    text = str(error).strip().splitlines()[0] if str(error).strip() else ""
    text = text if len(text) <= limit else text[: limit - 3] + "..."
    return f"{type(error).__name__}: {text}" if text else type(error).__name__
