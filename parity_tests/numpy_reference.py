"""An independent float64 U-Net forward pass in plain numpy, written from the paper.

Ronneberger et al. (2015), section 2: the contracting path repeats two 3x3 unpadded
convolutions, each followed by a ReLU, and a 2x2 max-pool with stride 2; the expansive path
up-samples with a 2x2 "up-convolution" that halves the channels, concatenates the
correspondingly cropped feature map of the contracting path, and applies two 3x3
convolutions with ReLUs; a final 1x1 convolution maps to the classes. The options of
`UNetConfig` beyond the paper (same padding, bilinear up-sampling + 1x1 conv, BatchNorm
after each 3x3 conv) are written from their textbook definitions.

Nothing here comes from `unet_jax` or `unet_torch`, only the config (`unet_config`, pure
Python). Every operation is a direct sum over its window, in NHWC float64. Weights are read from a state_dict in PyTorch's
layouts (conv OIHW; up-conv (in, out, kH, kW) applied by its definition
out[2i+a, 2j+b, o] = sum_c x[i, j, c] W[c, o, a, b]); the concat puts the cropped skip first,
as the seed network does. So a bug shared by both models (a crop one pixel off centre, the
concat order, an up-conv kernel applied flipped) shows up as a difference from this.
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np

from unet_config import UNetConfig  # pure Python: no JAX, no torch

BATCH_NORM_EPS = 1e-5


def conv2d(x: np.ndarray, weight: np.ndarray, bias: np.ndarray | None, pad: int) -> np.ndarray:
    """Cross-correlation: out[n, y, x, o] = b[o] + sum_{dy, dx, c} in[n, y+dy, x+dx, c] W[o, c, dy, dx].

    x [N, H, W, C], weight OIHW, zero padding `pad` on each side."""
    if pad:
        x = np.pad(x, ((0, 0), (pad, pad), (pad, pad), (0, 0)))
    _, kh, kw = weight.shape[1:]
    out_h, out_w = x.shape[1] - kh + 1, x.shape[2] - kw + 1
    out = np.zeros((x.shape[0], out_h, out_w, weight.shape[0]))
    for dy in range(kh):
        for dx in range(kw):
            window = x[:, dy : dy + out_h, dx : dx + out_w, :]  # [N, H', W', C]
            out += window @ weight[:, :, dy, dx].T  # [C] . [C, O]
    return out if bias is None else out + bias


def up_conv_2x2(x: np.ndarray, weight: np.ndarray, bias: np.ndarray) -> np.ndarray:
    """2x2 stride-2 transposed conv: out[n, 2i+a, 2j+b, o] = b[o] + sum_c x[n, i, j, c] W[c, o, a, b]."""
    n, h, w, _ = x.shape
    out = np.zeros((n, 2 * h, 2 * w, weight.shape[1]))
    for a in range(2):
        for b in range(2):
            out[:, a::2, b::2, :] = x @ weight[:, :, a, b]  # [C] . [C, O]
    return out + bias


def bilinear_2x(x: np.ndarray) -> np.ndarray:
    """2x bilinear up-sampling, half-pixel centres: output pixel u samples input coordinate
    (u + 0.5) / 2 - 0.5, clamped to the image, interpolated between its two neighbours."""

    def along(axis_len: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        coordinate = np.clip((np.arange(2 * axis_len) + 0.5) / 2 - 0.5, 0, axis_len - 1)
        low = np.floor(coordinate).astype(int)
        high = np.minimum(low + 1, axis_len - 1)
        return low, high, coordinate - low

    low, high, t = along(x.shape[1])
    x = x[:, low] * (1 - t)[None, :, None, None] + x[:, high] * t[None, :, None, None]
    low, high, t = along(x.shape[2])
    return x[:, :, low] * (1 - t)[None, None, :, None] + x[:, :, high] * t[None, None, :, None]


def max_pool_2x2(x: np.ndarray) -> np.ndarray:
    """Maximum over each non-overlapping 2x2 window."""
    n, h, w, c = x.shape
    return x.reshape(n, h // 2, 2, w // 2, 2, c).max(axis=(2, 4))


def center_crop(x: np.ndarray, height: int, width: int) -> np.ndarray:
    """The paper's crop: drop (H - height) / 2 rows at the top and as many at the bottom."""
    top, left = (x.shape[1] - height) // 2, (x.shape[2] - width) // 2
    assert 2 * top == x.shape[1] - height and 2 * left == x.shape[2] - width, "the U-Net's crops are symmetric"
    return x[:, top : top + height, left : left + width]


def batch_norm(x: np.ndarray, state: Mapping[str, np.ndarray], prefix: str, train: bool, seen: dict | None) -> np.ndarray:
    """(x - mean) / sqrt(var + eps) * gamma + beta per channel: the batch's own mean and biased
    variance in training mode (recorded in `seen[prefix]` with the pixel count), the running
    statistics in evaluation mode."""
    if train:
        mean, var = x.mean(axis=(0, 1, 2)), x.var(axis=(0, 1, 2))
        if seen is not None:
            seen[prefix] = (mean, var, x.size // x.shape[-1])
    else:
        mean, var = state[f"{prefix}.running_mean"], state[f"{prefix}.running_var"]
    return (x - mean) / np.sqrt(var + BATCH_NORM_EPS) * state[f"{prefix}.weight"] + state[f"{prefix}.bias"]


def forward(
    config: UNetConfig, state: Mapping[str, np.ndarray], images: np.ndarray, train: bool = False,
    batch_statistics: dict | None = None,
) -> np.ndarray:
    """Logits [N, H', W', num_classes] float64 for images [N, H, W, in_channels].

    `state` is a state_dict (numpy) in unet_torch's key names and PyTorch's layouts.
    `train` only matters with BatchNorm: batch statistics instead of running ones, and each
    BatchNorm's (mean, biased variance, pixel count) goes into `batch_statistics[prefix]`.
    """
    state = {k: np.asarray(v, np.float64) for k, v in state.items()}
    pad = 0 if config.padding == "valid" else 1

    def double_conv(x, block):
        for i in (1, 2):
            prefix = f"{block}.conv{i}"
            x = conv2d(x, state[f"{prefix}.weight"], state.get(f"{prefix}.bias"), pad)
            if config.norm == "batch":
                x = batch_norm(x, state, f"{block}.norm{i}", train, batch_statistics)
            x = np.maximum(x, 0.0)
        return x

    x = np.asarray(images, np.float64)
    skips = []
    for level in range(1, config.depth + 1):
        x = double_conv(x, f"down{level}")
        skips.append(x)
        x = max_pool_2x2(x)
    x = double_conv(x, "bottom")
    for step in range(1, config.depth + 1):
        weight, bias = state[f"upconv{step}.weight"], state[f"upconv{step}.bias"]
        if config.upsample == "transpose":
            x = up_conv_2x2(x, weight, bias)
        else:
            x = conv2d(bilinear_2x(x), weight, bias, pad=0)  # 1x1 conv halves the channels
        skip = center_crop(skips[-step], x.shape[1], x.shape[2])
        x = double_conv(np.concatenate([skip, x], axis=-1), f"up{step}")
    return conv2d(x, state["head.weight"], state["head.bias"], pad=0)
