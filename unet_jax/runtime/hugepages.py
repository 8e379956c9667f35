"""Transparent huge pages for host memory: `unet-jax` asks glibc for them when it starts.

XLA:CPU allocates a step's temporaries afresh on every run (64 MiB for the demo's train step),
and glibc serves an allocation that large with a new mmap, whose 4 KiB pages the kernel then
faults in one by one on first touch: 16,400 page faults per demo step. glibc's
`glibc.malloc.hugetlb=1` tunable makes malloc advise the kernel to back such mappings with 2 MiB
pages (madvise), which brings that to about 100. On the 2-core CI machine the demo's train step
took 101-108 ms without it and 82-87 ms with it, in three alternating pairs of runs
(benchmarks/NOTES.md, 17). It changes where memory comes from, not a single computed value.
PyTorch gains as much from it, which the benchmark harness shows beside PyTorch as its users
run it (`torch-fp32-hugepages`).

glibc reads GLIBC_TUNABLES only when a process starts, so the command line runs itself once more
with it set (`reexec`), first thing, before it imports JAX or reads a file; the benchmark harness
sets it in the environment of its JAX jobs (`with_hugepages`). `import unet_jax` does nothing.

Applied only where it can work: Linux with glibc 2.35 or newer (the first with the tunable) and
the kernel's THP mode `madvise` (under `always` the kernel gives huge pages unasked; under
`never` it gives none). A `glibc.malloc.hugetlb` of the user's own in GLIBC_TUNABLES is left
alone. Off: `UNET_JAX_HUGEPAGES=0` in the environment.
"""

from __future__ import annotations

import os
import platform
import re
import sys
from typing import Mapping, Optional

TUNABLE = "glibc.malloc.hugetlb"
OFF_SWITCH = "UNET_JAX_HUGEPAGES"
THP_MODE_FILE = "/sys/kernel/mm/transparent_hugepage/enabled"
FIRST_GLIBC = (2, 35)


def thp_mode(path: str = THP_MODE_FILE) -> Optional[str]:
    """The kernel's transparent-huge-page mode, the bracketed word of `path`
    ("always [madvise] never" -> "madvise"); None where it cannot be read."""
    try:
        with open(path) as modes:
            chosen = re.search(r"\[(\w+)\]", modes.read())
    except OSError:
        return None
    return chosen.group(1) if chosen else None


def glibc_version() -> Optional[tuple[int, ...]]:
    """(2, 36) for glibc 2.36; None for another C library or none known."""
    library, version = platform.libc_ver()
    if library != "glibc" or not version:
        return None
    return tuple(int(part) for part in version.split(".")[:2])


def switched_off(environ: Mapping[str, str], switch: str = OFF_SWITCH) -> bool:
    """Whether `switch` (this module's, or another setting's of the command line) says off."""
    return environ.get(switch, "").strip().lower() in ("0", "false", "off", "no")


def this_machine() -> tuple[Optional[str], Optional[tuple[int, ...]]]:
    """(THP mode, glibc version) of this machine."""
    return thp_mode(), glibc_version()


def useful(environ: Mapping[str, str], machine: Optional[tuple] = None) -> bool:
    """Whether setting the tunable in `environ` would change anything: not switched off, not set
    by the user (to any value), and a glibc and kernel that act on it. `machine`: (THP mode, glibc
    version), this machine's by default."""
    if switched_off(environ) or TUNABLE in environ.get("GLIBC_TUNABLES", ""):
        return False
    if not sys.platform.startswith("linux"):
        return False
    mode, glibc = this_machine() if machine is None else machine
    return glibc is not None and glibc >= FIRST_GLIBC and mode == "madvise"


def with_hugepages(environ: Mapping[str, str], machine: Optional[tuple] = None) -> dict:
    """A copy of `environ` whose GLIBC_TUNABLES also asks for huge pages, where `useful`."""
    environ = dict(environ)
    if useful(environ, machine):
        tunables = environ.get("GLIBC_TUNABLES", "")
        environ["GLIBC_TUNABLES"] = f"{tunables}:{TUNABLE}=1" if tunables else f"{TUNABLE}=1"
    return environ


def reexec() -> None:
    """Run this process's command line again with the tunable set, where `useful`; else return.

    For a program's entry point only (it replaces the process, keeping its id, arguments and
    environment): `unet-jax` calls it before anything else (unet_jax/__main__.py). Once the
    tunable is set, `useful` is false, so the second start goes on."""
    if not useful(os.environ):
        return
    sys.stdout.flush()
    sys.stderr.flush()
    os.execve(sys.executable, [sys.executable, *sys.orig_argv[1:]], with_hugepages(os.environ))
