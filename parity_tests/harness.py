"""Shared machinery of the parity tests: both models from one config, ported weights,
deterministic batches, precision modes and the error metric.

This module (with `parity_tests/*` and `benchmarks/`) is the only place allowed to import
both torch and jax; `unet_jax` and `unet_torch` stay independent of each other.

Errors are relative to the largest reference value, max|a - ref| / max|ref| (see
`parity_tests.errors`, re-exported here). The reference is the torch model in float64 on the
CPU (`reference_model`; the GPU for the seed network at 572 px): both frameworks are measured
against it, and against each other.
"""

from __future__ import annotations

import contextlib
import copy
import dataclasses
import functools
import math
from collections.abc import Iterator, Mapping
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import torch

import unet_torch
from parity_tests.errors import (  # noqa: F401 (re-exported)
    float64_differences,
    global_rel_error,
    max_rel_error,
    rel_error,
    zero_to_rounding,
)
from unet_config import UNetConfig
from unet_jax.model.unet import UNet as FlaxUNet
from unet_jax.weights.port import flatten_variables, torch_to_flax

# Where each framework runs: whatever accelerator it finds, else the CPU.
TORCH_DEVICE = "cuda" if torch.cuda.is_available() else "cpu"
JAX_BACKEND = jax.default_backend()  # "cpu", "gpu" or "tpu"
# jaxlib reports a CUDA client as "gpu"; "cuda" (the PJRT plugin's own name) is accepted too, so
# that a future change of that name cannot turn the GPU cases into silent skips.
ON_GPU = TORCH_DEVICE == "cuda" and JAX_BACKEND in ("gpu", "cuda")
GPU_SKIP_REASON = "needs an NVIDIA GPU visible to both torch (torch.cuda.is_available()) and jax (jax.default_backend() == 'gpu')"

MODES = ("strict", "default", "bf16")


@dataclasses.dataclass(frozen=True)
class Case:
    """A network and the input it is exercised with."""

    name: str
    config: UNetConfig
    size: int  # input side length (square images)
    batch: int


# Small enough for a 2-core CPU, yet each switches on a different code path of the port and
# the model (in/out channels differ from each other so that a transposed axis cannot hide).
CASES = {
    "seed": Case("seed", UNetConfig(), 188, 1),  # the paper's network at its smallest valid size
    "features8": Case("features8", UNetConfig(features=8), 188, 2),
    "same": Case("same", UNetConfig(features=8, depth=3, padding="same"), 64, 2),
    "bilinear": Case("bilinear", UNetConfig(in_channels=3, num_classes=4, features=8, upsample="bilinear"), 188, 2),
    "batchnorm": Case("batchnorm", UNetConfig(features=8, norm="batch"), 188, 2),
}


# ------------------------------------------------------------------------ precision
@dataclasses.dataclass(frozen=True)
class Precision:
    """How each framework computes in a mode: the Flax compute dtype and torch's autocast."""

    mode: str
    flax_dtype: Any
    autocast_dtype: torch.dtype | None

    def autocast(self, device: str):
        return torch.autocast(device, dtype=self.autocast_dtype, enabled=self.autocast_dtype is not None)


@contextlib.contextmanager
def precision(mode: str) -> Iterator[Precision]:
    """Set both frameworks to a precision mode for the duration of the block.

    strict:  true float32: JAX "highest" matmul/conv precision, torch TF32 off.
    default: each framework's out-of-the-box behaviour (on NVIDIA: TF32 convolutions).
    bf16:    bfloat16 compute with float32 weights (Flax dtype, torch autocast).
    The torch flags are global, so they are restored on exit.
    """
    if mode not in MODES:
        raise ValueError(f"precision mode must be one of {MODES}, got {mode!r}")
    saved = (torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32)
    try:
        with contextlib.ExitStack() as stack:
            if mode == "strict":
                stack.enter_context(jax.default_matmul_precision("highest"))
                torch.backends.cudnn.allow_tf32 = False
                torch.backends.cuda.matmul.allow_tf32 = False
            else:  # torch's documented defaults, in case an earlier test left them changed
                torch.backends.cudnn.allow_tf32 = True
                torch.backends.cuda.matmul.allow_tf32 = False
            bf16 = mode == "bf16"
            yield Precision(mode, jnp.bfloat16 if bf16 else jnp.float32, torch.bfloat16 if bf16 else None)
    finally:
        torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32 = saved


# ------------------------------------------------------------------------ models
def build_torch(config: UNetConfig, seed: int = 0) -> torch.nn.Module:
    """unet_torch.UNet (float32, CPU) with the paper's He-normal weights and non-zero biases.

    torch's default init shrinks the signal layer after layer, so the logits of a deep
    network would be nearly its head bias and would hide errors; He init keeps them alive.
    Biases and BatchNorm affine/running values are random so that every tensor's port shows.
    """
    model = unet_torch.UNet(**dataclasses.asdict(config))
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, torch.nn.ConvTranspose2d):  # (in, out, 2, 2), stride 2: fan-in is `in`
                module.weight.normal_(0.0, math.sqrt(2.0 / module.weight.shape[0]), generator=gen)
            elif isinstance(module, torch.nn.Conv2d):  # (out, in, k, k)
                fan_in = module.weight[0].numel()
                module.weight.normal_(0.0, math.sqrt(2.0 / fan_in), generator=gen)
            elif isinstance(module, torch.nn.BatchNorm2d):
                module.weight.uniform_(0.5, 1.5, generator=gen)
                module.running_mean.normal_(0.0, 0.1, generator=gen)
                module.running_var.uniform_(0.5, 1.5, generator=gen)
            if getattr(module, "bias", None) is not None:
                module.bias.uniform_(-0.1, 0.1, generator=gen)
    return model


def reference_model(model: torch.nn.Module, device: str = "cpu") -> torch.nn.Module:
    """A float64 copy of `model`: the reference both frameworks are measured against.

    On the CPU unless `device` says otherwise: the seed network at 572 px (~20 TFLOP with its
    Adam steps) is computed in float64 on the GPU, where it takes seconds, not many minutes.
    Float64 is float64 on either (cuDNN has no reduced-precision path for double; TF32 applies
    to float32 only), so only the summation order differs, ~1e-16.
    """
    return copy.deepcopy(model).to(device, torch.float64)


def host_copy(tensor: torch.Tensor) -> np.ndarray:
    """A numpy copy of `tensor` on the host: one copy from any device (`.cpu()` then `.copy()`
    would copy a GPU tensor twice, which the seed network's 31M parameters make count)."""
    return tensor.detach().to("cpu", copy=True).numpy()


def torch_state(model: torch.nn.Module) -> dict[str, np.ndarray]:
    """state_dict as numpy arrays on the host (buffers included)."""
    return {k: host_copy(v) for k, v in model.state_dict().items()}


@functools.cache
def flax_model(config: UNetConfig, dtype=jnp.float32) -> FlaxUNet:
    """The Flax model as `unet-jax train` builds it (unet_jax/train.py): a compute dtype, and the
    model's own parameter dtype (float32 master weights), which the bf16 tests then check.
    One instance per (config, dtype): a train state's `apply_fn` is part of the jitted step's
    cache key, and a new instance would compile the step again."""
    return FlaxUNet(config, dtype=dtype)


def port_to_flax(model: torch.nn.Module, config: UNetConfig) -> dict:
    """Flax variables (device arrays) holding `model`'s weights, through unet_jax.weights.port."""
    return port_state(torch_state(model), config)


def port_state(state: Mapping[str, np.ndarray], config: UNetConfig) -> dict:
    """A numpy state_dict (unet_torch's or the seed's naming) -> Flax variables (device arrays)."""
    return jax.tree.map(jnp.asarray, torch_to_flax(state, config))


def torch_grads_as_flax(model: torch.nn.Module, config: UNetConfig) -> dict[str, np.ndarray]:
    """`model`'s parameter gradients in Flax layout, flat ("params/down1/conv1/kernel").

    The port is a permutation of entries, so gradients map by the same table as weights.
    """
    params = dict(model.named_parameters())  # the port wants every key: buffers as they are, parameters' gradients
    state = {k: host_copy(params[k].grad if k in params else v) for k, v in model.state_dict().items()}
    flat = flatten_variables(torch_to_flax(state, config))
    return {k: v for k, v in flat.items() if k.startswith("params/")}


# ------------------------------------------------------------------------ data
def make_batch(config: UNetConfig, size: int, batch: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """(images [N, H, W, C] float32, masks [N, H, W] int64 class indices), reproducible."""
    rng = np.random.default_rng(seed)
    images = rng.standard_normal((batch, size, size, config.in_channels)).astype(np.float32)
    masks = rng.integers(0, config.num_classes, (batch, size, size), dtype=np.int64)
    return images, masks


def to_nchw(x: np.ndarray) -> np.ndarray:
    return np.ascontiguousarray(x.transpose(0, 3, 1, 2))  # [N, H, W, C] -> [N, C, H, W]


def to_nhwc(x: np.ndarray) -> np.ndarray:
    return np.ascontiguousarray(x.transpose(0, 2, 3, 1))  # [N, C, H, W] -> [N, H, W, C]


def torch_input(images: np.ndarray, model: torch.nn.Module) -> torch.Tensor:
    """NHWC numpy images -> NCHW tensor on the model's device, in the model's dtype."""
    param = next(model.parameters())
    return torch.from_numpy(to_nchw(images)).to(param.device, param.dtype)


# ------------------------------------------------------------------------ forward
def torch_forward(model, images: np.ndarray, train: bool, prec: Precision | None = None) -> np.ndarray:
    """Logits as NHWC float64 numpy. In train mode BatchNorm uses and updates batch statistics."""
    model.train(train)
    device = next(model.parameters()).device.type
    with torch.no_grad(), (prec.autocast(device) if prec else contextlib.nullcontext()):
        logits = model(torch_input(images, model))
    return to_nhwc(logits.double().cpu().numpy())


# The jitted functions are made once per (network, compute dtype, ...) and kept for the session:
# a new jax.jit per test compiles again (12-30 s for the seed network at 572 px on an H200). The
# precision mode is part of JAX's own cache key (jax.default_matmul_precision is traced state), so
# one function serves every mode, compiled once per mode.
@functools.cache
def jitted_apply(config: UNetConfig, dtype, train: bool, mutable: bool):
    model = flax_model(config, dtype)
    if mutable:
        return jax.jit(lambda v, x: model.apply(v, x, train=True, mutable=["batch_stats"]))
    return jax.jit(lambda v, x: model.apply(v, x, train=train))


def flax_forward(config: UNetConfig, variables, images: np.ndarray, train: bool, dtype=jnp.float32):
    """(logits NHWC float64 numpy, updated batch_stats or None), through one jitted apply."""
    if train and "batch_stats" in variables:
        logits, updates = jitted_apply(config, dtype, True, True)(variables, images)
        return np.asarray(logits, np.float64), updates["batch_stats"]
    logits = jitted_apply(config, dtype, train, False)(variables, images)
    return np.asarray(logits, np.float64), None


# ------------------------------------------------------------------------ gradients
def torch_loss(model, images: np.ndarray, masks: np.ndarray, prec: Precision | None = None) -> torch.Tensor:
    """Mean cross-entropy with labels centre-cropped to the logits (unet_torch.train_step's loss).

    The loss is taken in at least float32 and in float64 for the float64 reference.
    """
    device = next(model.parameters()).device
    with prec.autocast(device.type) if prec else contextlib.nullcontext():
        logits = model(torch_input(images, model))
    labels = unet_torch.center_crop(torch.from_numpy(masks).to(device), logits.shape[-2], logits.shape[-1])
    logits = logits.to(torch.promote_types(logits.dtype, torch.float32))
    return torch.nn.functional.cross_entropy(logits, labels)


def torch_loss_and_grads(model, config, images, masks, prec: Precision | None = None):
    """(loss, flat Flax-layout gradients) of one train-mode forward/backward."""
    model.train()
    model.zero_grad(set_to_none=True)
    loss = torch_loss(model, images, masks, prec)
    loss.backward()
    return float(loss.detach()), torch_grads_as_flax(model, config)


@functools.cache
def jitted_loss_and_grads(config: UNetConfig, dtype):
    """jit of (params, batch_stats, images, masks) -> ((loss, (logits, labels, batch_stats)), grads)
    through `unet_jax.training.step.loss_and_logits` with the cross-entropy, in train mode."""
    from unet_jax.training.losses import cross_entropy
    from unet_jax.training.step import loss_and_logits

    model = flax_model(config, dtype)

    def loss(params, batch_stats, images, masks):
        return loss_and_logits(params, batch_stats, model.apply, images, masks, cross_entropy)

    return jax.jit(jax.value_and_grad(loss, has_aux=True))


def flax_loss_and_grads(config: UNetConfig, variables, images, masks, dtype=jnp.float32, with_logits: bool = False):
    """(loss, flat gradients[, train-mode logits as returned by the model]) from
    `unet_jax.training.step.loss_and_logits` under jax.grad."""
    (value, (logits, _, _)), grads = jitted_loss_and_grads(config, dtype)(
        variables["params"], variables.get("batch_stats"), images, masks)
    flat = {f"params/{k}": np.asarray(v) for k, v in flatten_variables(grads).items()}
    return (float(value), flat, np.asarray(logits).astype(np.float64)) if with_logits else (float(value), flat)
