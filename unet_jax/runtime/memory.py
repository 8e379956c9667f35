"""How much memory a device has: what an accelerator reports, or what the host has free for a CPU device.

Read by training's memory plan (`unet_jax.training.memory_plan`, which refuses a run over the
budget) and inference's tile choice (`unet_jax.inference.tile_plan`). `UNET_JAX_MEMORY_BUDGET`
(bytes, or with a KiB/MiB/GiB suffix) replaces the measured figure: for a machine that reports it
wrongly, and for tests that need a small budget without a large run.
"""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Optional

from unet_jax.config import ConfigError

BUDGET_VARIABLE = "UNET_JAX_MEMORY_BUDGET"
_UNITS = {"": 1, "b": 1, "kib": 2**10, "mib": 2**20, "gib": 2**30, "tib": 2**40}
_CGROUP_FILES = (("/sys/fs/cgroup/memory.max", "/sys/fs/cgroup/memory.current"),  # cgroup v2
                 ("/sys/fs/cgroup/memory/memory.limit_in_bytes", "/sys/fs/cgroup/memory/memory.usage_in_bytes"))  # v1


def device_memory_stats(device) -> Optional[dict]:
    """`device.memory_stats()`, or None where the backend has none (the CPU returns None; some backends raise)."""
    try:
        stats = device.memory_stats()
    except Exception:  # noqa: BLE001 - a backend without statistics may raise anything
        return None
    return stats if stats and "bytes_limit" in stats else None


def budget_override() -> Optional[int]:
    """The bytes `UNET_JAX_MEMORY_BUDGET` sets, or None; ConfigError naming the variable if it is not a size."""
    text = os.environ.get(BUDGET_VARIABLE, "").strip()
    if not text:
        return None
    match = re.fullmatch(r"(\d+(?:\.\d+)?)\s*([a-zA-Z]*)", text)
    if not match or match.group(2).lower() not in _UNITS:
        raise ConfigError(f"{BUDGET_VARIABLE}={text!r} is not a size: give bytes, or a number with KiB, MiB or GiB (e.g. 512MiB)")
    return int(float(match.group(1)) * _UNITS[match.group(2).lower()])


def host_memory_available() -> Optional[int]:
    """Bytes the host can still give this process: /proc/meminfo's MemAvailable, lowered to what the
    cgroup's limit leaves (a container's limit is often far below the machine's); None where neither is readable."""
    figures = []
    try:
        meminfo = Path("/proc/meminfo").read_text()
        figures.append(int(re.search(r"^MemAvailable:\s+(\d+) kB", meminfo, re.M).group(1)) * 1024)
    except (OSError, AttributeError):
        pass
    for limit_file, usage_file in _CGROUP_FILES:
        try:
            limit, usage = Path(limit_file).read_text().strip(), int(Path(usage_file).read_text())
        except (OSError, ValueError):
            continue
        if limit.isdigit() and int(limit) < 2**60:  # "max", or v1's "no limit" figure near 2**63
            figures.append(max(int(limit) - usage, 0))
        break
    return min(figures) if figures else None


def device_budget(device) -> tuple[Optional[int], str]:
    """(bytes one device may use, where that figure comes from): the override, else an accelerator's
    `bytes_limit`, else (CPU) the host's available memory; (None, why) where nothing says."""
    override = budget_override()
    if override is not None:
        return override, f"${BUDGET_VARIABLE}"
    stats = device_memory_stats(device)
    if stats is not None:
        return int(stats["bytes_limit"]), f"{device.device_kind}'s memory_stats() bytes_limit"
    available = host_memory_available()
    if available is not None:
        return available, "the host's available memory (MemAvailable, cgroup limit)"
    return None, "this machine reports no memory figure"
