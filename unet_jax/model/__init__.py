"""The network: the Linen U-Net, its PyTorch-semantics layers, and the XLA:CPU kernel forms it computes with."""

from unet_jax.model.unet import UNet

__all__ = ["UNet"]
