"""The PyTorch reference U-Net, NCHW: the seed's network, generalised by `UNetConfig`.

Module names match the Flax model (`down1.conv1`, `upconv1`, `up1.conv2`, `head`, ...), so
the torch<->flax table in `unet_jax.weights.port` is a renaming plus layout changes. With default
fields this is the seed's `Unet` layer for layer (31,030,658 parameters).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from unet_config import UNetConfig  # pure Python: importing it pulls in no JAX


class ConvBlock(nn.Module):
    """Two 3x3 convolutions, each followed by (optional BatchNorm and) ReLU."""

    def __init__(self, in_channels: int, out_channels: int, config: UNetConfig):
        super().__init__()
        batch_norm = config.norm == "batch"
        pad = 0 if config.padding == "valid" else 1
        self.conv1 = nn.Conv2d(in_channels, out_channels, 3, padding=pad, bias=not batch_norm)
        self.norm1 = nn.BatchNorm2d(out_channels) if batch_norm else nn.Identity()
        self.conv2 = nn.Conv2d(out_channels, out_channels, 3, padding=pad, bias=not batch_norm)
        self.norm2 = nn.BatchNorm2d(out_channels) if batch_norm else nn.Identity()

    def forward(self, x):
        x = F.relu(self.norm1(self.conv1(x)))
        return F.relu(self.norm2(self.conv2(x)))


class UNet(nn.Module):
    """`UNet(**fields)` takes `UNetConfig`'s field names: `UNet(features=32, norm="batch")`."""

    def __init__(self, **fields):
        super().__init__()
        self.config = cfg = UNetConfig(**fields)
        for level in range(1, cfg.depth + 1):
            in_channels = cfg.in_channels if level == 1 else cfg.channels(level - 2)
            self.add_module(f"down{level}", ConvBlock(in_channels, cfg.channels(level - 1), cfg))
        self.bottom = ConvBlock(cfg.channels(cfg.depth - 1), cfg.channels(cfg.depth), cfg)
        for step in range(1, cfg.depth + 1):
            wide, narrow = cfg.channels(cfg.depth - step + 1), cfg.channels(cfg.depth - step)
            if cfg.upsample == "transpose":
                upconv = nn.ConvTranspose2d(wide, narrow, kernel_size=2, stride=2)
            else:  # bilinear resize in forward(), then this 1x1 conv halves the channels
                upconv = nn.Conv2d(wide, narrow, kernel_size=1)
            self.add_module(f"upconv{step}", upconv)
            self.add_module(f"up{step}", ConvBlock(2 * narrow, narrow, cfg))
        self.head = nn.Conv2d(cfg.features, cfg.num_classes, kernel_size=1)

    def forward(self, x):  # [N, C, H, W] -> [N, num_classes, H', W']
        cfg = self.config
        if x.ndim != 4 or x.shape[1] != cfg.in_channels:
            raise ValueError(
                f"UNet expects [N, {cfg.in_channels}, H, W] (NCHW) input, got shape {tuple(x.shape)}; "
                f"in_channels={cfg.in_channels}"
            )
        cfg.check_input_size(x.shape[2], x.shape[3])
        skips = []
        for level in range(1, cfg.depth + 1):
            x = getattr(self, f"down{level}")(x)
            skips.append(x)
            x = F.max_pool2d(x, 2)
        x = self.bottom(x)
        for step in range(1, cfg.depth + 1):
            if cfg.upsample == "bilinear":
                x = F.interpolate(x, scale_factor=2, mode="bilinear", align_corners=False)
            x = getattr(self, f"upconv{step}")(x)
            x = torch.cat([center_crop(skips[cfg.depth - step], x.shape[2], x.shape[3]), x], dim=1)
            x = getattr(self, f"up{step}")(x)
        return self.head(x)


def center_crop(x, height: int, width: int):
    """The centre `height x width` window of the last two axes: the paper's copy-and-crop of a
    skip `[N, C, H, W]`, and the label crop of masks `[N, H, W]` to the logits' size."""
    top = (x.shape[-2] - height) // 2
    left = (x.shape[-1] - width) // 2
    return x[..., top : top + height, left : left + width]
