"""The PyTorch reference U-Net and the seed's training step. Imports no JAX."""

from unet_torch.model import UNet
from unet_torch.train_step import crop_labels, make_optimizer, train_step

__all__ = ["UNet", "crop_labels", "make_optimizer", "train_step"]
