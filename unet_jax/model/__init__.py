"""The network: the Linen U-Net, its PyTorch-semantics layers, the XLA:CPU kernel forms it computes
with, and how it computes a run (`compute`, importable without JAX for the command line)."""

__all__ = ["UNet"]


def __getattr__(name: str):
    if name == "UNet":  # imports JAX: only when asked for, so that `unet_jax.model.compute` does not
        from unet_jax.model.unet import UNet

        return UNet
    raise AttributeError(f"module 'unet_jax.model' has no attribute {name!r}")
