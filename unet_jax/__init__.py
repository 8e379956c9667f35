"""The original U-Net (Ronneberger et al. 2015) in JAX/Flax.

`UNetConfig` is pure Python; the Flax pieces are imported on first use, so that
`unet_torch` can share the config without importing JAX.
"""

from unet_jax.config import UNetConfig

__all__ = ["UNetConfig", "UNet"]


def __getattr__(name):
    if name == "UNet":
        from unet_jax.model import UNet

        return UNet
    raise AttributeError(f"module 'unet_jax' has no attribute {name!r}")
