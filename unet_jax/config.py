"""The configs as `unet_jax` names them: the framework-free `unet_config` package, re-exported.

The configs live outside `unet_jax` so that `unet_torch` can import them without running this
package's `__init__`, which imports JAX.
"""

from unet_config import (
    DTYPES,
    LOSSES,
    NORMS,
    OPTIMIZERS,
    PADDINGS,
    RESUMABLE_FIELDS,
    TRAJECTORY_FIELDS,
    UPSAMPLES,
    ConfigError,
    MissingFileError,
    TrainConfig,
    UNetConfig,
    UNetError,
)

__all__ = [
    "DTYPES",
    "LOSSES",
    "NORMS",
    "OPTIMIZERS",
    "PADDINGS",
    "RESUMABLE_FIELDS",
    "TRAJECTORY_FIELDS",
    "UPSAMPLES",
    "ConfigError",
    "MissingFileError",
    "TrainConfig",
    "UNetConfig",
    "UNetError",
]
