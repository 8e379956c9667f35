"""The errors of a training run that the command line reports, importable without JAX or numpy."""

from unet_jax.config import UNetError


class RunDirError(UNetError):
    """A run directory that can't be used for what was asked; the message says why and what to do."""


class TrainingInterrupted(UNetError):
    """Ctrl-C: the run stopped cleanly; the message says where it can be continued from."""


class OutOfMemory(UNetError):
    """Training needed more memory than the host or a device had; the message says what was kept and what to change."""


class OverMemoryBudget(UNetError):
    """A run refused before compiling: its estimated step memory exceeds the device's budget; the message says what fits."""
