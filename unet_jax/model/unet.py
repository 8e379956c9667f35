"""The U-Net of Ronneberger et al. (2015) as a Flax Linen module, NHWC.

Layer names are explicit and stable, because checkpoints and the torch<->flax table
(`unet_jax.weights.port`) address them:

    down{l}/conv{1,2}, down{l}/norm{1,2}   encoder level l = 1 .. depth
    bottom/conv{1,2},  bottom/norm{1,2}    bottleneck
    upconv{j}, up{j}/conv{1,2}, ...        decoder step j = 1 .. depth (j = 1 is the deepest)
    head                                   1x1 conv to num_classes logits
"""

from __future__ import annotations

import os
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
from jax.ad_checkpoint import checkpoint_name

from unet_jax.config import UNetConfig
from unet_jax.model.compute import REMAT_POLICIES
from unet_jax.model.cpu_kernels import FEW_CHANNELS, conv_with_tap_gradients, few_channel_conv, max_pool_2x2, relu, relu_pinned
from unet_jax.model.layers import BatchNorm, UpConv2x2, at_least_float32, center_crop
from unet_jax.runtime import xla_cpu

# The paper initialises from N(0, sqrt(2 / fan_in)) (He et al.); biases start at zero.
he_normal = nn.initializers.variance_scaling(2.0, "fan_in", "normal")


CONV_OUTPUT = "conv_output"  # the name remat="conv-outputs" keeps


class ConvBlock(nn.Module):
    """Two 3x3 convolutions, each followed by (optional BatchNorm and) ReLU."""

    features: int
    config: UNetConfig
    dtype: Any = jnp.float32
    param_dtype: Any = jnp.float32
    remat: str = "none"  # UNet.remat; this block is wrapped by conv_block_class(remat)
    pin_relu_output: bool = False  # UNet.pin_relu_output

    @nn.compact
    def __call__(self, x, train: bool):
        batch_norm = self.config.norm == "batch"
        for i in (1, 2):
            x = nn.Conv(
                self.features,
                (3, 3),
                padding=self.config.padding.upper(),
                use_bias=not batch_norm,  # BatchNorm's shift makes a conv bias redundant
                kernel_init=he_normal,
                dtype=self.dtype,
                param_dtype=self.param_dtype,
                # Inference's first conv on grayscale or RGB tiles: faster as multiply-adds, same
                # function (not in training: cpu_kernels.few_channel_conv says why).
                conv_general_dilated=(few_channel_conv if not train and x.shape[-1] <= FEW_CHANNELS
                                      else conv_with_tap_gradients),
                name=f"conv{i}",
            )(x)
            if self.remat == "conv-outputs":  # the policy keeps what carries this name
                x = checkpoint_name(x, CONV_OUTPUT)
            if batch_norm:
                x = BatchNorm(dtype=self.dtype, param_dtype=self.param_dtype, name=f"norm{i}")(x, train)
            x = (relu_pinned if self.pin_relu_output else relu)(x)
        return x


class UNet(nn.Module):
    """U-Net mapping images `[N, H, W, in_channels]` to logits `[N, H', W', num_classes]`.

    `dtype` is the compute dtype (e.g. `jnp.bfloat16` for mixed precision) and `param_dtype`
    the storage dtype of the weights; the logits come back in at least float32 (float64 for a
    float64 reference) so that losses are computed in full precision. With `norm="batch"`, call with `train=True` and
    `mutable=["batch_stats"]` to use and update batch statistics.

    `remat` trades compute for memory in the backward pass without changing the function:
    "none" keeps what the backward pass reads; "blocks" keeps only each conv block's input and
    recomputes the block (about one more forward pass of the 3x3 convs); "conv-outputs" keeps
    the convs' outputs and recomputes the BatchNorm and ReLU after them (for `norm="batch"`:
    without a norm it keeps more than "none", tests/unit/test_remat.py); "dots" is JAX's
    `dots_saveable` policy: every convolution's and matmul's output kept, so "conv-outputs"
    plus the up-convolutions' outputs (tests/unit/test_remat.py).

    `pin_relu_output` keeps each ReLU's output as computed (an optimization barrier on what its
    backward pass reads) instead of letting XLA recompute it from the convolution's output: the
    same values and gradients; on a GPU, compiled for an H200, 1.7 GiB fewer temporaries at batch
    16 in bf16 and the ReLU fused into cuDNN's convolution (benchmarks/NOTES.md). Not yet timed on
    a device, so off by default.

    `batch_groups` runs the network on that many groups of the batch (sizes differing by at most
    one), side by side in one program with the same weights, and concatenates the logits: the
    same function, per-image convolutions summed in another order. XLA:CPU then runs the groups
    concurrently on its cores instead of splitting each convolution across them, which keeps
    the cores busier under jaxlib 0.10's YNNPACK convolutions (benchmarks/NOTES.md, 15);
    `default_batch_groups` picks it. Not with BatchNorm in training, whose statistics must cover
    the whole batch.
    """

    config: UNetConfig = UNetConfig()
    dtype: Any = jnp.float32
    param_dtype: Any = jnp.float32
    remat: str = "none"
    pin_relu_output: bool = False
    batch_groups: int = 1

    @nn.compact
    def __call__(self, x, train: bool = False):
        cfg = self.config
        self._check_input(x)
        block = dict(config=cfg, dtype=self.dtype, param_dtype=self.param_dtype, remat=self.remat,
                     pin_relu_output=self.pin_relu_output)
        block_class = conv_block_class(self.remat)
        # Made once and called once per group: the groups share every weight.
        layers = {f"down{level}": block_class(cfg.channels(level - 1), **block, name=f"down{level}")
                  for level in range(1, cfg.depth + 1)}
        layers["bottom"] = block_class(cfg.channels(cfg.depth), **block, name="bottom")
        for step in range(1, cfg.depth + 1):
            layers[f"upconv{step}"] = self._upsampler(cfg.channels(cfg.depth - step), name=f"upconv{step}")
            layers[f"up{step}"] = block_class(cfg.channels(cfg.depth - step), **block, name=f"up{step}")
        layers["head"] = nn.Conv(
            cfg.num_classes, (1, 1), kernel_init=he_normal, dtype=self.dtype, param_dtype=self.param_dtype, name="head"
        )
        x = x.astype(self.dtype)
        groups = min(self.batch_groups, x.shape[0])
        if groups == 1:
            return self._network(layers, x, train)
        if train and cfg.norm == "batch":
            raise ValueError(f"batch_groups={self.batch_groups} with BatchNorm in training would give each group its own "
                             "batch statistics: use batch_groups=1")
        cuts = [x.shape[0] * g // groups for g in range(groups + 1)]
        return jnp.concatenate([self._network(layers, x[a:b], train) for a, b in zip(cuts, cuts[1:])])

    def _network(self, layers: dict, x, train: bool):
        depth = self.config.depth
        skips = []
        for level in range(1, depth + 1):
            x = layers[f"down{level}"](x, train)
            skips.append(x)
            x = max_pool_2x2(x)
        x = layers["bottom"](x, train)
        for step in range(1, depth + 1):
            x = layers[f"upconv{step}"](x)  # [N, 2H, 2W, features]
            skip = center_crop(skips[depth - step], x.shape[1], x.shape[2])
            x = jnp.concatenate([skip, x], axis=-1)  # the seed's order: skip first
            x = layers[f"up{step}"](x, train)
        return layers["head"](x).astype(at_least_float32(self.dtype))

    def _upsampler(self, features: int, name: str):
        if self.config.upsample == "transpose":
            # nn.ConvTranspose's function and parameters, as a matmul (layers.UpConv2x2). Flax
            # does not flip the kernel (PyTorch does); unet_jax.weights.port flips it on import.
            return UpConv2x2(features, kernel_init=he_normal, dtype=self.dtype, param_dtype=self.param_dtype, name=name)
        conv = nn.Conv(features, (1, 1), kernel_init=he_normal, dtype=self.dtype, param_dtype=self.param_dtype, name=name)

        def bilinear_then_conv(x):
            n, h, w, c = x.shape
            # Half-pixel bilinear, which for 2x upsampling equals PyTorch's align_corners=False.
            return conv(jax.image.resize(x, (n, 2 * h, 2 * w, c), method="bilinear"))

        return bilinear_then_conv

    def _check_input(self, x):
        # Shapes are static under jit, so these are Python errors at trace time, not XLA ones.
        if x.ndim != 4:
            raise ValueError(f"UNet expects images as [N, H, W, C] (NHWC), got an array of shape {tuple(x.shape)}")
        if x.shape[-1] != self.config.in_channels:
            raise ValueError(
                f"UNet was configured with in_channels={self.config.in_channels} but the input has "
                f"{x.shape[-1]} channels (shape {tuple(x.shape)}, NHWC). Pass images with "
                f"{self.config.in_channels} channel(s) in the last axis, or set in_channels={x.shape[-1]}."
            )
        self.config.check_input_size(x.shape[1], x.shape[2])


def conv_block_class(remat: str):
    """ConvBlock, or ConvBlock under `nn.remat` with the policy `remat` names. Parameter paths
    stay the same (`down1/conv1/...`), so checkpoints and the port do not depend on it."""
    if remat == "none":
        return ConvBlock
    if remat == "blocks":
        return nn.remat(ConvBlock, static_argnums=(2,))  # argument 2 is `train` (after self and x)
    if remat == "conv-outputs":
        policy = jax.checkpoint_policies.save_only_these_names(CONV_OUTPUT)
        return nn.remat(ConvBlock, static_argnums=(2,), policy=policy)
    if remat == "dots":  # JAX's own policy: every convolution's and matmul's output kept, the rest recomputed
        return nn.remat(ConvBlock, static_argnums=(2,), policy=jax.checkpoint_policies.dots_saveable)
    raise ValueError(f"remat must be one of {REMAT_POLICIES}, got {remat!r}")


def default_batch_groups(devices: int, norm, train: bool = True) -> int:
    """The `UNet.batch_groups` the library uses: two groups per CPU core on a single CPU device
    that runs jaxlib 0.10's YNNPACK convolutions (`unet_jax.runtime.xla_cpu` not applied), else 1.

    Those convolutions split each one's work poorly across the cores, and groups give XLA:CPU
    independent ones to run side by side: demo step on 2 cores, 1, 2, 4, 8 groups 121.0, 106.6,
    101.5, 99.6 ms (benchmarks/NOTES.md, 15). XLA's own convolutions, which `unet-jax` switches
    to on jaxlib 0.10, and jaxlib 0.11's YNNPACK ones use the cores by themselves: there 1, 2 and
    4 groups are within 3% of each other (NOTES 16), so 1. Several devices already run side by
    side, and BatchNorm trains on whole batches. Training's `--batch-groups N` overrides it."""
    if devices != 1 or jax.default_backend() != "cpu" or (train and norm == "batch") or not xla_cpu.ynnpack_convolutions():
        return 1
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    return 2 * cores
