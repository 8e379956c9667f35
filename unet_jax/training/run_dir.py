"""The run directory: one owner for its file names, its lock, and the files it holds.

    config.json          the run plan (`unet_jax.training.plan`), written once the run has really started:
                         the TrainConfig's fields, "compute" (the JAX options as asked: remat, batch_groups)
                         and "settled" (what the run made of them: batch_groups, devices, fsdp, processes).
                         A config.json from before the plan holds remat and batch_groups among the
                         TrainConfig fields; they are read as its "compute". --data, --val-data and
                         --init-weights are recorded as absolute paths, and "cwd" the folder the run
                         was started from: a relative path in an older config.json is read against it,
                         and refused where it is not recorded (it could name other data from elsewhere)
    normalization.json   the intensity normalisation fitted on the training images
    metrics.jsonl        one JSON record per logged train window and per validation
    resumes.jsonl        one JSON record per --resume: the step it continued from, what changed
    checkpoints/         Orbax checkpoints of the full train state (the newest K kept)
    unusable-checkpoints/  checkpoints a resume could not restore, moved aside (never deleted)
    weights.safetensors  the final Flax weights (`unet-jax convert` turns them into torch)
    summary.json         final validation metrics, and whether the run was an exact continuation
    loss.png, predictions.png
    run.lock             held by the process that is writing the run; names it

What a directory holds decides what may happen to it (`RunDir.state`):
  "empty"      no config.json: a new run may start there.
  "unstarted"  config.json but no checkpoint and no weights: a run that stopped before its
               first checkpoint. Nothing trained exists, so a new run may replace it, and
               --resume starts it again from step 0.
  "run"        a checkpoint or final weights: only --resume may continue it.
A new run starts only in a new folder, an empty one, or one that holds nothing but a run's own
files (`check_holds_only_run_files`): a run writes weights.safetensors, summary.json, loss.png
and more, and a folder of the user's own files is no place for them.
"""

from __future__ import annotations

import contextlib
import dataclasses
import datetime
import errno
import fcntl
import json
import os
import socket
import sys
from pathlib import Path
from typing import Iterator, Optional

from unet_jax.config import ConfigError, MissingFileError, TrainConfig
from unet_jax.data import Normalization
from unet_jax.model.compute import Compute
from unet_jax.runtime.safe_files import check_folder_destination, make_directory, output_errors, write_atomically
from unet_jax.training.errors import RunDirError
from unet_jax.weights import run_outputs
from unet_jax.weights.run_outputs import read_normalization

COMPUTE_FIELDS = tuple(f.name for f in dataclasses.fields(Compute))
PATH_FIELDS = ("data", "val_data", "init_weights")  # TrainConfig's files and folders, recorded as absolute paths


class RunDir:
    CONFIG = run_outputs.CONFIG
    NORMALIZATION = run_outputs.NORMALIZATION
    METRICS = "metrics.jsonl"
    RESUMES = "resumes.jsonl"
    CHECKPOINTS = "checkpoints"
    UNUSABLE_CHECKPOINTS = "unusable-checkpoints"
    WEIGHTS = run_outputs.WEIGHTS
    SUMMARY = "summary.json"
    LOSS_PLOT = "loss.png"
    PREDICTIONS_PLOT = "predictions.png"
    WEIGHT_MAP_PLOT = "weight_map.png"  # runs with --loss weighted-ce
    LOCK = "run.lock"
    FILES = (CONFIG, NORMALIZATION, METRICS, RESUMES, CHECKPOINTS, UNUSABLE_CHECKPOINTS, WEIGHTS, SUMMARY, LOSS_PLOT,
             PREDICTIONS_PLOT, WEIGHT_MAP_PLOT, LOCK)

    def __init__(self, path):
        self.path = Path(path)

    def __str__(self) -> str:
        return str(self.path)

    def file(self, name: str) -> Path:
        return self.path / name

    # ------------------------------------------------------------------ state
    def checkpoint_steps(self) -> list[int]:
        """Steps of the complete checkpoints, ascending. Orbax names a complete one by its step
        and renames a partial write into place only when it is whole, so nothing else counts."""
        directory = self.file(self.CHECKPOINTS)
        if not directory.is_dir():
            return []
        return sorted(int(p.name) for p in directory.iterdir() if p.is_dir() and p.name.isdigit())

    @property
    def state(self) -> str:
        """"empty", "unstarted" or "run" (module docstring)."""
        if not self.file(self.CONFIG).is_file():
            return "empty"
        if self.checkpoint_steps() or self.file(self.WEIGHTS).exists():
            return "run"
        return "unstarted"

    def check_new_run(self) -> None:
        """RunDirError unless a new run may start here: a folder that can be written, that no
        process holds, and that holds nothing trained. Checked again under the lock
        (`check_no_trained_run`), since another process may start a run meanwhile."""
        check_folder_destination(self.path)
        self.check_not_in_use()
        self.check_no_trained_run()

    def check_no_trained_run(self) -> None:
        if self.state == "run":
            raise RunDirError(
                f"{self.path} already holds a run. Fix: continue it with `unet-jax train --resume {self.path}`, "
                "or choose another --run-dir"
            )
        self.check_holds_only_run_files()

    def check_holds_only_run_files(self) -> None:
        """RunDirError if the folder holds anything but what a run that never got going leaves (its
        files, their temporary forms): a new run would write its files among, and over, the user's."""
        if not self.path.is_dir():
            return
        allowed = set(self.FILES) if self.state == "unstarted" and self._config_is_a_runs() else {self.LOCK}
        foreign = sorted(p.name for p in self.path.iterdir() if p.name not in allowed and not _temporary_form(p.name, allowed))
        if foreign:
            shown = ", ".join(foreign[:3]) + (f" and {len(foreign) - 3} more" if len(foreign) > 3 else "")
            raise RunDirError(
                f"{self.path} is a folder that holds files of its own ({shown}) and no run; a new run would write "
                f"{self.WEIGHTS}, {self.SUMMARY}, {self.LOSS_PLOT} and more there, over any of the same name. "
                "Fix: give --run-dir a new or empty folder"
            )

    def _config_is_a_runs(self) -> bool:
        """Whether config.json is one a run wrote (and not the user's own file of that name)."""
        try:
            values = json.loads(self.file(self.CONFIG).read_text())
        except (OSError, ValueError):
            return False
        return isinstance(values, dict) and {"preset", "model", "tile_size"} <= values.keys()

    def check_resumable(self) -> None:
        self.check_not_in_use()
        if not self.file(self.CONFIG).is_file():
            raise MissingFileError(
                f"{self.path} holds no run to resume (no {self.CONFIG}). Fix: start one with "
                f"`unet-jax train --run-dir {self.path}`, or give the folder of an existing run"
            )
        for name in (self.METRICS, self.RESUMES):  # damaged in the middle: refused before anything is written
            read_records(self.file(name))

    # ------------------------------------------------------------------ lock
    def check_not_in_use(self) -> None:
        """RunDirError naming the process that holds the lock, if one does (the lock is not kept)."""
        path = self.file(self.LOCK)
        if path.is_file():
            with open(path) as handle:
                self._take(handle, path)  # released when the handle closes

    @contextlib.contextmanager
    def lock(self) -> Iterator["RunDir"]:
        """Hold the directory's lock for the life of a run: a second process is refused, naming
        the holder. The operating system drops the lock when the process dies, however it dies."""
        make_directory(self.path)
        path = self.file(self.LOCK)
        with output_errors(path):
            handle = open(path, "a+")
        try:
            self._take(handle, path)
            handle.seek(0)
            handle.truncate()
            handle.write(json.dumps(_holder()) + "\n")
            handle.flush()
            yield self
        finally:
            handle.close()  # releases the lock

    def _take(self, handle, path: Path) -> None:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as error:
            if error.errno not in (errno.EAGAIN, errno.EACCES, errno.EWOULDBLOCK):
                raise
            raise RunDirError(self._busy_message(path)) from None

    def _busy_message(self, path: Path) -> str:
        try:
            holder = json.loads(path.read_text())
            who = f"process {holder['pid']} on {holder['host']} (`{holder['command']}`, since {holder['since']})"
            stop = f", or stop it (kill {holder['pid']})"
        except (OSError, ValueError, KeyError, TypeError):  # the holder has not written its name yet
            who, stop = "another process", ""
        return (
            f"{self.path} is in use by {who}; two runs in one directory would mix their files. "
            f"Fix: wait for it to finish{stop}, or choose another --run-dir"
        )

    # ------------------------------------------------------------------ files
    def load_config(self) -> tuple[TrainConfig, Compute]:
        """config.json's TrainConfig and JAX compute options, of either form (see the module docstring)."""
        path = self.file(self.CONFIG)
        try:
            values = json.loads(path.read_text())
            compute = values.pop("compute", None) or {k: values[k] for k in COMPUTE_FIELDS if k in values}
            for name in (*COMPUTE_FIELDS, "settled"):  # the settled choices are the plan's; a resume settles its own
                values.pop(name, None)
            started_in = values.pop("cwd", None)
            train, compute = TrainConfig.from_dict(values), Compute(**compute)
        except (OSError, ValueError, TypeError, AttributeError) as error:
            raise ConfigError(f"{path}: not a readable training config ({error})") from None
        return dataclasses.replace(train, **self._absolute_paths(train, started_in)), compute

    def _absolute_paths(self, train: TrainConfig, started_in: Optional[str]) -> dict:
        """config.json's path options as absolute paths: a relative one (written before they were
        recorded absolute) is read against the folder the run started in, or refused where that is not
        recorded: read against today's working folder it could name other data."""
        values = {k: getattr(train, k) for k in PATH_FIELDS}
        relative = {k: v for k, v in values.items() if v is not None and not Path(v).is_absolute()}
        if relative and started_in is None:
            name, value = next(iter(relative.items()))
            raise ConfigError(
                f"{self.file(self.CONFIG)} records --{name.replace('_', '-')} as the relative path {value!r} and not the "
                f"folder the run was started from, so it can't tell which {value!r} is meant. Fix: write the absolute "
                f"path into {self.file(self.CONFIG)} (\"{name}\": \"/.../{value}\") and resume again"
            )
        return {k: str(Path(started_in, v).resolve()) for k, v in relative.items()}

    def save_config(self, cfg: TrainConfig, compute: Optional[Compute] = None, settled: Optional[dict] = None) -> None:
        self._write_json(self.CONFIG, {**cfg.to_dict(), "compute": dataclasses.asdict(compute or Compute()), "settled": settled or {},
                                       "cwd": os.getcwd()})

    def load_normalization(self) -> Optional[Normalization]:
        path = self.file(self.NORMALIZATION)
        return read_normalization(path) if path.is_file() else None

    def save_normalization(self, normalization: Normalization) -> None:
        self._write_json(self.NORMALIZATION, normalization.to_dict())

    def save_summary(self, summary: dict) -> None:
        self._write_json(self.SUMMARY, summary)

    def resumes(self) -> list[dict]:
        return read_records(self.file(self.RESUMES))[0]

    def record_resume(self, record: dict) -> None:
        """Add `record` to resumes.jsonl, written whole (a last line a crash cut is dropped, not appended to)."""
        records = [*self.resumes(), record]
        write_atomically(self.file(self.RESUMES), "".join(json.dumps(r) + "\n" for r in records).encode(), overwrite=True)

    def clear(self) -> None:
        """Remove what a run that never reached its first checkpoint left behind (state "unstarted")."""
        if self.state == "run":
            raise RunDirError(f"{self.path} holds a trained run; it is never cleared")  # a bug if reached
        for name in (self.CONFIG, self.NORMALIZATION, self.METRICS, self.RESUMES, self.SUMMARY):
            with output_errors(self.file(name)):
                self.file(name).unlink(missing_ok=True)

    def set_aside(self, step: int) -> Path:
        """Move checkpoint `step` out of the checkpoints folder (it could not be restored)."""
        target = make_directory(self.file(self.UNUSABLE_CHECKPOINTS)) / str(step)
        suffix = 1
        while target.exists():
            target = target.with_name(f"{step}.{suffix}")
            suffix += 1
        with output_errors(target):
            os.replace(self.file(self.CHECKPOINTS) / str(step), target)
        return target

    def _write_json(self, name: str, value) -> None:
        write_atomically(self.file(name), (json.dumps(value, indent=2) + "\n").encode(), overwrite=True)


class FollowerRunDir(RunDir):
    """The run directory as the processes after process 0 of a multi-process run see it: they
    read it (config, checkpoints) and compute, and process 0 alone writes it and holds its lock."""

    def save_config(self, cfg: TrainConfig, compute: Optional[Compute] = None, settled: Optional[dict] = None) -> None:
        pass

    def save_normalization(self, normalization: Normalization) -> None:
        pass

    def save_summary(self, summary: dict) -> None:
        pass

    def record_resume(self, record: dict) -> None:
        pass

    def set_aside(self, step: int) -> Path:
        return self.file(self.UNUSABLE_CHECKPOINTS) / str(step)  # process 0 moves it


def _temporary_form(name: str, allowed: set) -> bool:
    """Whether `name` is what `write_atomically` writes before renaming into one of the `allowed`
    names (".config.json.x1y2.tmp"), left where a crash interrupted it."""
    return name.startswith(".") and name.endswith(".tmp") and any(name.startswith(f".{a}.") for a in allowed)


def _holder() -> dict:
    return {
        "pid": os.getpid(),
        "host": socket.gethostname(),
        "command": " ".join([Path(sys.argv[0]).name, *sys.argv[1:]]),
        "since": datetime.datetime.now().isoformat(timespec="seconds"),
    }


def read_records(path: Path) -> tuple[list[dict], Optional[str]]:
    """The records of a JSON-lines file the run appends to (metrics.jsonl, resumes.jsonl), none if it
    is missing, and its last line where a crash cut it mid-write (dropped: it was never a record).
    A RunDirError naming the file and line if any other line is not a record."""
    try:
        lines = path.read_text().splitlines() if path.is_file() else []
    except (OSError, UnicodeDecodeError) as error:
        raise RunDirError(f"{path} can't be read ({error}). Fix: move it aside (mv {path} {path}.damaged) and run again") from None
    records = []
    for number, line in enumerate(lines, 1):
        try:
            record = json.loads(line)
        except ValueError:
            record = None
        if isinstance(record, dict) and isinstance(record.get("step", 0), int):
            records.append(record)
        elif number == len(lines):
            return records, line
        else:
            raise RunDirError(
                f"{path}, line {number}, is not a JSON record ({line[:60]!r}); the run writes one per line. Fix: move "
                f"the file aside (mv {path} {path}.damaged); the run's checkpoints do not depend on it, and it is written anew"
            )
    return records, None


class MetricsLog:
    """metrics.jsonl, appended as the run goes. On resume from step k, records past k are dropped,
    so that the file reads as one uninterrupted run; so is a last line a crash cut mid-write, with a note."""

    def __init__(self, path: Path, keep_until: Optional[int] = None, write: bool = True, log=print):
        self.path, self.writes = path, write  # write=False: kept in memory (processes after process 0)
        self.records: list[dict] = []
        if keep_until is not None:
            records, cut = read_records(path)
            self.records = [r for r in records if r.get("step", 0) <= keep_until]
            if cut is not None:
                log(f"{path}: dropped its last line, cut mid-write ({cut[:60]!r})")
        if write:
            write_atomically(path, "".join(json.dumps(r) + "\n" for r in self.records).encode(), overwrite=True)

    def write(self, record: dict) -> None:
        self.records.append(record)
        if not self.writes:
            return
        with output_errors(self.path), self.path.open("a") as f:
            f.write(json.dumps(record) + "\n")
