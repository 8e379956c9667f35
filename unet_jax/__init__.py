"""The original U-Net (Ronneberger et al. 2015) in JAX/Flax."""

from importlib.metadata import PackageNotFoundError, version

from unet_jax.config import TrainConfig, UNetConfig, UNetError
from unet_jax.model import UNet

try:
    __version__ = version("unet-jax")
except PackageNotFoundError:  # run from a source tree that was never installed
    __version__ = "unknown"

__all__ = ["TrainConfig", "UNet", "UNetConfig", "UNetError", "__version__"]
