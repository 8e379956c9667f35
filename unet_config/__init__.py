"""What both frameworks share: the architecture and training configs, their names, and the error base.

Pure Python, importing neither JAX nor torch: `unet_torch` builds its network from the same
`UNetConfig` as `unet_jax`, and must never pull in JAX.
"""

from unet_config.architecture import NORMS, PADDINGS, UPSAMPLES, UNetConfig
from unet_config.errors import ConfigError, MissingFileError, UNetError
from unet_config.training import (
    CELLS_LAYOUTS,
    DTYPES,
    LOSSES,
    OPTIMIZERS,
    RESUMABLE_FIELDS,
    TRAJECTORY_FIELDS,
    WEIGHT_MAP_LOSSES,
    TrainConfig,
)

__all__ = [
    "DTYPES",
    "LOSSES",
    "CELLS_LAYOUTS",
    "WEIGHT_MAP_LOSSES",
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
