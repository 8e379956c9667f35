"""Analytic FLOP count of the U-Net, so that TFLOP/s and MFU do not depend on a profiler.

Counted: every convolution (3x3, the 2x2 stride-2 transposed up-convolution, the 1x1 conv after
a bilinear resize, the 1x1 head) at 2 FLOPs per multiply-add, over every output pixel and every
kernel tap (taps that fall on "same" padding included, the usual convention, and what
`torch.utils.flop_counter` counts). Not counted: bias adds, ReLU, pooling, crop/concat,
BatchNorm and the bilinear resize itself -- together well under 0.1 % for the seed network.

Seed network (features 64, depth 4, valid padding) at 572x572, multiply-adds per layer
(side^2 * taps * in * out):

    down1   570^2*9*1*64     + 568^2*9*64*64        =   0.187 G +  11.893 G
    down2   282^2*9*64*128   + 280^2*9*128*128      =   5.863 G +  11.561 G
    down3   138^2*9*128*256  + 136^2*9*256*256      =   5.616 G +  10.909 G
    down4    66^2*9*256*512  +  64^2*9*512*512      =   5.139 G +   9.664 G
    bottom   30^2*9*512*1024 +  28^2*9*1024*1024    =   4.247 G +   7.399 G
    up1  T   56^2*1*1024*512 (each output pixel receives one of the 4 taps)
             + 54^2*9*1024*512 + 52^2*9*512*512     =   1.644 G +  13.759 G + 6.380 G
    up2  T  104^2*512*256 + 102^2*9*512*256 + 100^2*9*256*256 = 1.418 G + 12.273 G + 5.898 G
    up3  T  200^2*256*128 + 198^2*9*256*128 + 196^2*9*128*128 = 1.311 G + 11.562 G + 5.665 G
    up4  T  392^2*128*64  + 390^2*9*128*64  + 388^2*9*64*64   = 1.259 G + 11.214 G + 5.550 G
    head    388^2*64*2                                        = 0.019 G
    total 150.43 G multiply-adds = 300.86 GFLOP forward per image.

Training is counted as 3x forward (backward = gradient w.r.t. activations + w.r.t. weights,
each as large as the forward), the usual convention; it overstates by the skipped
input-gradient of the first conv (0.04 % for the seed).
"""

from __future__ import annotations

import dataclasses

from unet_jax.config import UNetConfig

TRAIN_MULTIPLIER = 3  # forward + two backward passes of the same size


@dataclasses.dataclass(frozen=True)
class ConvLayer:
    """One convolution: `side x side` output pixels, each a dot over `taps * in_channels`."""

    name: str
    side: int  # output side length (square maps)
    taps: int  # kernel taps that touch one output pixel: 9, 1, or 1 for a stride-2 2x2 up-conv
    in_channels: int
    out_channels: int

    @property
    def multiply_adds(self) -> int:
        return self.side * self.side * self.taps * self.in_channels * self.out_channels

    @property
    def output_elements(self) -> int:
        return self.side * self.side * self.out_channels


def conv_layers(config: UNetConfig, input_size: int) -> list[ConvLayer]:
    """The network's convolutions with their output sizes, following the model's own order."""
    config.check_input_size(input_size, input_size)
    shrink = config.conv_shrink
    side, channels_in, layers = input_size, config.in_channels, []

    def block(name: str, channels_out: int):
        nonlocal side, channels_in
        for i in (1, 2):
            side -= shrink
            layers.append(ConvLayer(f"{name}/conv{i}", side, 9, channels_in, channels_out))
            channels_in = channels_out

    skip_channels = []
    for level in range(1, config.depth + 1):
        block(f"down{level}", config.channels(level - 1))
        skip_channels.append(channels_in)
        side //= 2  # 2x2 max-pool
    block("bottom", config.channels(config.depth))
    for step in range(1, config.depth + 1):
        narrow = config.channels(config.depth - step)
        side *= 2
        # Transposed 2x2 stride 2: every output pixel receives exactly one kernel tap.
        # Bilinear: the resize is not counted, the 1x1 conv after it is.
        layers.append(ConvLayer(f"upconv{step}", side, 1, channels_in, narrow))
        channels_in = narrow + skip_channels[config.depth - step]  # concat [skip, up]
        block(f"up{step}", narrow)
    layers.append(ConvLayer("head", side, 1, channels_in, config.num_classes))
    return layers


def forward_flops(config: UNetConfig, input_size: int) -> int:
    """FLOPs of one forward pass of one `input_size x input_size` image."""
    return 2 * sum(layer.multiply_adds for layer in conv_layers(config, input_size))


def train_flops(config: UNetConfig, input_size: int) -> int:
    """FLOPs of one training step per image (forward + backward), by the 3x convention."""
    return TRAIN_MULTIPLIER * forward_flops(config, input_size)
