"""XLA:CPU flags that `unet-jax` sets when it starts, for jaxlib versions whose defaults are slow.

jaxlib 0.10 hands the network's 3x3 convolutions to YNNPACK ("individual_convolution" library
fusions). On most of the U-Net's layers those run 2-3x slower than XLA's own (Eigen)
convolutions on a 2-core AMD EPYC, up to 10x at some shapes: the 32->32 convolution on 58 px
maps, batch 8, 8.2 ms forward against 2.6 ms (benchmarks/NOTES.md, 16). Turning that one fusion type off leaves YNNPACK's matmuls and
reductions as they are. jaxlib 0.11.2's YNNPACK convolutions run as fast as Eigen's, so nothing
is set there, nor on versions that were never measured: XLA aborts the process on a flag it does
not know, so a flag is only set where its name was seen to exist.

XLA reads XLA_FLAGS once, when JAX starts its backends (the first array or computation), so
`apply()` must run before that. The command line calls it first thing; `import unet_jax` does
not. Library users opt in by calling it themselves. It changes how convolutions are computed,
not what: the parity suite runs with it (conftest.py), and its float32 forward and gradient
tests run once more without it (tests/unit/test_xla_cpu.py), against float64 references.

Off: `UNET_JAX_XLA_CPU_FLAGS=0` in the environment. A flag of the same name already in XLA_FLAGS
is the user's choice and is left alone.
"""

from __future__ import annotations

import os
import re
from typing import MutableMapping, Optional

from unet_jax.runtime.hugepages import switched_off

OFF_SWITCH = "UNET_JAX_XLA_CPU_FLAGS"

# (first jaxlib version, first version after, flags): measured ranges only.
_FLAGS_BY_JAXLIB = (
    ((0, 10, 2), (0, 11, 0), ("--xla_cpu_experimental_ynn_fusion_type=-individual_convolution",)),
)


def _release(version: str) -> tuple[int, ...]:
    """'0.10.2' -> (0, 10, 2); suffixes such as '.dev20260101' or 'rc1' are dropped."""
    return tuple(int(part) for part in re.findall(r"\d+", version)[:3])


def flags_for(jaxlib_version: str) -> tuple[str, ...]:
    """The flags this module sets for `jaxlib_version` (empty outside the measured ranges)."""
    release = _release(jaxlib_version)
    for first, after, flags in _FLAGS_BY_JAXLIB:
        if first <= release < after:
            return flags
    return ()


def _flag_name(flag: str) -> str:
    return flag.split("=", 1)[0]


def _backends_started() -> bool:
    from jax._src import xla_bridge  # no public API tells whether XLA_FLAGS was already read

    return xla_bridge.backends_are_initialized()


def _not_yet_set(environ: MutableMapping[str, str]) -> tuple[str, ...]:
    """This jaxlib's flags whose names XLA_FLAGS does not hold yet (with any value)."""
    import jaxlib

    present = {_flag_name(flag) for flag in environ.get("XLA_FLAGS", "").split()}
    return tuple(flag for flag in flags_for(jaxlib.__version__) if _flag_name(flag) not in present)


def ynnpack_convolutions(environ: Optional[MutableMapping[str, str]] = None) -> bool:
    """Whether this process runs jaxlib 0.10's slow YNNPACK convolutions: a jaxlib this module has
    flags for, and none of them (nor a value of the user's for the same flag) in XLA_FLAGS."""
    import jaxlib

    flags = flags_for(jaxlib.__version__)
    return bool(flags) and _not_yet_set(os.environ if environ is None else environ) == flags


def apply(environ: Optional[MutableMapping[str, str]] = None) -> tuple[str, ...]:
    """Add this jaxlib's flags to XLA_FLAGS, except those the user set or switched off.

    Returns the flags added. Raises RuntimeError if there is something to add but JAX has
    already started its backends, since XLA would never read it."""
    environ = os.environ if environ is None else environ
    if switched_off(environ, OFF_SWITCH):
        return ()
    added = _not_yet_set(environ)
    if not added:
        return ()
    if _backends_started():
        raise RuntimeError(
            f"unet_jax.runtime.xla_cpu.apply() was called after JAX started its backends, so XLA would ignore "
            f"{' '.join(added)}: call it before creating any array, or set {OFF_SWITCH}=0 to go without it")
    environ["XLA_FLAGS"] = " ".join(part for part in (environ.get("XLA_FLAGS", "").strip(), *added) if part)
    return added
