"""The PyTorch reference U-Net and the seed's training step. Imports no JAX."""

from unet_torch.model import UNet, center_crop
from unet_torch.train_step import make_torch_optimizer, train_step

__all__ = ["UNet", "center_crop", "make_torch_optimizer", "train_step"]
