"""A PyTorch U-Net in milesial/Pytorch-UNet's module layout, written here from its description
(not from its code), so the port is checked against a network that shares nothing with
`unet_torch` or the port's table:

- DoubleConv: `double_conv` = Sequential(conv3x3(pad 1, no bias), BN, ReLU, conv3x3, BN, ReLU);
- Down: `maxpool_conv` = Sequential(MaxPool2d(2), DoubleConv);
- Up: `up` = ConvTranspose2d(in, in // 2, 2, stride 2) and `conv` = DoubleConv(in, out); the
  upsampled map is zero-padded to the skip's size, then cat([skip, up]);
- OutConv: `outc.conv` = a 1x1 conv with bias.
`bilinear=True` is milesial's other variant: `up` is a weightless bilinear resize, the
bottleneck and every decoder block but the last have half the channels, and an Up's DoubleConv
narrows to in // 2 in its middle. Depth and width are parameters (milesial: 4 and 64).
"""

import torch
import torch.nn.functional as F
from torch import nn


class DoubleConv(nn.Module):
    def __init__(self, in_channels, out_channels, mid_channels=None):
        super().__init__()
        mid = mid_channels or out_channels
        self.double_conv = nn.Sequential(
            nn.Conv2d(in_channels, mid, 3, padding=1, bias=False),
            nn.BatchNorm2d(mid),
            nn.ReLU(inplace=True),
            nn.Conv2d(mid, out_channels, 3, padding=1, bias=False),
            nn.BatchNorm2d(out_channels),
            nn.ReLU(inplace=True),
        )

    def forward(self, x):
        return self.double_conv(x)


class Down(nn.Module):
    def __init__(self, in_channels, out_channels):
        super().__init__()
        self.maxpool_conv = nn.Sequential(nn.MaxPool2d(2), DoubleConv(in_channels, out_channels))

    def forward(self, x):
        return self.maxpool_conv(x)


class Up(nn.Module):
    def __init__(self, in_channels, out_channels, bilinear):
        super().__init__()
        if bilinear:
            self.up = nn.Upsample(scale_factor=2, mode="bilinear", align_corners=True)
            self.conv = DoubleConv(in_channels, out_channels, in_channels // 2)
        else:
            self.up = nn.ConvTranspose2d(in_channels, in_channels // 2, kernel_size=2, stride=2)
            self.conv = DoubleConv(in_channels, out_channels)

    def forward(self, x, skip):
        x = self.up(x)
        dy, dx = skip.shape[2] - x.shape[2], skip.shape[3] - x.shape[3]
        x = F.pad(x, [dx // 2, dx - dx // 2, dy // 2, dy - dy // 2])
        return self.conv(torch.cat([skip, x], dim=1))


class OutConv(nn.Module):
    def __init__(self, in_channels, out_channels):
        super().__init__()
        self.conv = nn.Conv2d(in_channels, out_channels, kernel_size=1)

    def forward(self, x):
        return self.conv(x)


class MilesialLayoutUNet(nn.Module):
    def __init__(self, n_channels, n_classes, bilinear=False, features=64, depth=4):
        super().__init__()
        factor = 2 if bilinear else 1
        widths = [features * 2**level for level in range(depth + 1)]
        self.depth = depth
        self.inc = DoubleConv(n_channels, widths[0])
        for k in range(1, depth + 1):
            out = widths[k] // factor if k == depth else widths[k]
            self.add_module(f"down{k}", Down(widths[k - 1], out))
        for j in range(1, depth + 1):
            out = widths[depth - j] if j == depth else widths[depth - j] // factor
            self.add_module(f"up{j}", Up(widths[depth - j + 1], out, bilinear))
        self.outc = OutConv(widths[0], n_classes)

    def forward(self, x):
        skips = [self.inc(x)]
        for k in range(1, self.depth + 1):
            skips.append(getattr(self, f"down{k}")(skips[-1]))
        x = skips.pop()
        for j in range(1, self.depth + 1):
            x = getattr(self, f"up{j}")(x, skips.pop())
        return self.outc(x)


def randomize_batch_norm(model: nn.Module, seed: int = 0) -> nn.Module:
    """Non-trivial BatchNorm affine parameters and running statistics (torch initialises them to
    1/0/0/1, which would hide a mean swapped with a bias), and a nonzero batch counter."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, nn.BatchNorm2d):
                shape = module.running_mean.shape
                module.weight.copy_(1 + 0.3 * torch.randn(shape, generator=generator))
                module.bias.copy_(0.2 * torch.randn(shape, generator=generator))
                module.running_mean.copy_(0.5 * torch.randn(shape, generator=generator))
                module.running_var.copy_(0.5 + torch.rand(shape, generator=generator))
                module.num_batches_tracked.fill_(123)
    return model
