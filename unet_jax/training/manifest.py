"""A record of a folder's files (size and SHA-256 each), to tell later whether it is still whole.

Orbax and TensorStore store arrays without checksums: a truncated or altered file is found,
if at all, halfway through a parallel restore, with an error that names no file. A manifest
written when a checkpoint is complete names the damaged file and how it changed before
anything is restored.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Optional

from unet_jax.runtime.safe_files import write_atomically

MANIFEST = "unet_jax_manifest.json"
_CHUNK = 1 << 20


def _digest(path: Path) -> str:
    sha = hashlib.sha256()
    with path.open("rb") as f:
        while chunk := f.read(_CHUNK):
            sha.update(chunk)
    return sha.hexdigest()


def _files(folder: Path) -> dict[str, Path]:
    return {p.relative_to(folder).as_posix(): p for p in sorted(folder.rglob("*")) if p.is_file() and p.name != MANIFEST}


def write_manifest(folder: Path) -> None:
    """Record every file under `folder` (but the manifest itself)."""
    record = {name: {"bytes": p.stat().st_size, "sha256": _digest(p)} for name, p in _files(folder).items()}
    write_atomically(folder / MANIFEST, (json.dumps(record, indent=1) + "\n").encode(), overwrite=True)


def has_manifest(folder: Path) -> bool:
    return (folder / MANIFEST).is_file()


def check_manifest(folder: Path) -> Optional[str]:
    """None if `folder` holds exactly the recorded files, unchanged; else what differs, in one line."""
    try:
        record = json.loads((folder / MANIFEST).read_text())
    except (OSError, ValueError) as error:
        return f"its file list {MANIFEST} is unreadable ({type(error).__name__})"
    files = _files(folder)
    for name, expected in record.items():
        if name not in files:
            return f"{name} is missing"
        size = files[name].stat().st_size
        if size != expected["bytes"]:
            return f"{name} has {size} bytes, {expected['bytes']} when it was written"
    extra = sorted(set(files) - set(record))
    if extra:
        return f"{extra[0]} was not part of it when it was written"
    for name, expected in record.items():  # sizes first: cheap, and the usual damage
        if _digest(files[name]) != expected["sha256"]:
            return f"{name} has changed since it was written (SHA-256 differs)"
    return None
