"""The original U-Net (Ronneberger et al. 2015) in JAX/Flax."""

from unet_jax import _moved
from unet_jax.config import TrainConfig, UNetConfig, UNetError

_moved.install()  # unet_jax.port, unet_jax.xla_cpu, ...: the paths the README documented before the packages

__all__ = ["TrainConfig", "UNet", "UNetConfig", "UNetError", "__version__"]


def __getattr__(name: str):
    # `unet_jax.UNet` imports JAX when first asked for, not at `import unet_jax`: the `unet-jax`
    # command starts itself once more before JAX is imported (unet_jax/__main__.py).
    if name == "UNet":
        from unet_jax.model.unet import UNet

        return UNet
    if name == "__version__":  # asked for, not at import: importlib.metadata costs the command line a tenth of a second
        from importlib.metadata import PackageNotFoundError, version

        try:
            return version("unet-jax")
        except PackageNotFoundError:  # run from a source tree that was never installed
            return "unknown"
    raise AttributeError(f"module 'unet_jax' has no attribute {name!r}")
