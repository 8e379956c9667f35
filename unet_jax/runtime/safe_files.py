"""Writing output files without losing data: never over an existing file unless asked, never over
an input, never half a file, and an error naming the path and the fix when the disk says no.

Every command checks its destinations with `check_destination` before any work, so a run that
would fail to save its result fails in the first second instead.
"""

from __future__ import annotations

import contextlib
import errno
import os
import tempfile
from pathlib import Path
from typing import Iterable, Iterator

from unet_jax.config import UNetError

_FIXES = {
    errno.EACCES: "permission denied. Fix: choose a location you can write to",
    errno.EPERM: "permission denied. Fix: choose a location you can write to",
    errno.EROFS: "the file system is read-only. Fix: choose a writable location",
    errno.EISDIR: "is a folder. Fix: give a file name",
    errno.ENOTDIR: "a part of this path is a file, not a folder. Fix: choose a path whose folders are folders",
    errno.EEXIST: "exists and is not a folder. Fix: choose another folder name",
    errno.ENOSPC: "no space left on the device. Fix: free some space or choose another disk",
}


class OutputError(UNetError, OSError):
    """A destination that can't be written, or may not be replaced; the message names it and the fix."""


@contextlib.contextmanager
def output_errors(path) -> Iterator[None]:
    """Turn the OSError of writing `path` into an OutputError naming it and the fix."""
    try:
        yield
    except OutputError:
        raise
    except OSError as error:
        where = error.filename or path
        fix = _FIXES.get(error.errno, f"cannot be written ({error.strerror or error}). Fix: choose another location")
        raise OutputError(f"{where}: {fix}") from error


def check_destination(path, overwrite: bool, sources: Iterable = ()) -> Path:
    """Raise OutputError unless `path` may be written: it must not be (or lie inside) one of the
    `sources`, not be a folder, and exist only when `overwrite`; the nearest existing folder
    above it must be a folder."""
    path = Path(path)
    for source in map(Path, sources):
        if _same_or_inside(path, source):
            raise OutputError(f"{path} is {'inside ' if source.is_dir() else ''}the input {source}; it is never replaced. "
                              "Fix: choose another destination")
    if path.is_dir():
        raise OutputError(f"{path}: {_FIXES[errno.EISDIR]}")
    if path.exists() and not overwrite:
        raise OutputError(f"{path} already exists. Fix: pass --overwrite (overwrite=True) to replace it, or choose another name")
    parent = next(p for p in (path.absolute(), *path.absolute().parents) if p.exists() or p == p.parent)
    if parent != path.absolute() and not parent.is_dir():
        raise OutputError(f"{path}: {_FIXES[errno.ENOTDIR]} ({parent} is a file)")
    folder = parent if parent != path.absolute() else parent.parent
    if not os.access(folder, os.W_OK | os.X_OK):  # found now, not after the work (evaluate's --output was)
        raise OutputError(f"{path}: {_FIXES[errno.EACCES]} ({folder} is not writable)")
    return path


def check_folder_destination(path) -> Path:
    """Raise OutputError unless `path` is a folder, or a folder that can be made, and writable."""
    path = Path(path)
    existing = next(p for p in (path.absolute(), *path.absolute().parents) if p.exists() or p == p.parent)
    if not existing.is_dir():
        what = "is a file, not a folder" if existing == path.absolute() else f"can't be made: {existing} is a file"
        raise OutputError(f"{path} {what}. Fix: choose another folder")
    if not os.access(existing, os.W_OK | os.X_OK):
        raise OutputError(f"{path}: {_FIXES[errno.EACCES]} ({existing} is not writable)")
    return path


def make_directory(path) -> Path:
    """`mkdir -p path`, with an OutputError naming the path when it can't be made."""
    path = Path(path)
    with output_errors(path):
        path.mkdir(parents=True, exist_ok=True)
    return path


def write_atomically(path, data: bytes, overwrite: bool) -> Path:
    """Write `data` to a temporary file beside `path`, then rename it into place: a crash never
    leaves half a file, and an existing file is only replaced when `overwrite`."""
    path = check_destination(path, overwrite)
    make_directory(path.parent)
    with output_errors(path):
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
        try:
            with os.fdopen(fd, "wb") as f:
                f.write(data)
            os.replace(tmp, path)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise
    return path


def _same_or_inside(path: Path, source: Path) -> bool:
    path, source = path.resolve(), source.resolve()
    return path == source or source in path.parents
