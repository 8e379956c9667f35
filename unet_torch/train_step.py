"""The seed's training step (Adam lr 1e-3, cross-entropy), made to work for any mask size.

The seed's loop feeds masks straight to `CrossEntropyLoss`, which only works when they are
already output-sized (388x388 for 572x572 tiles). Here masks of the input's size are
centre-cropped to the logits, which is what the paper's overlap-tile training means.
"""

from __future__ import annotations

from typing import Optional

import torch
import torch.nn.functional as F

from unet_config import OPTIMIZERS
from unet_torch.model import center_crop


def make_torch_optimizer(parameters, name: str = "adam", learning_rate: float = 1e-3, momentum: float = 0.99,
                         fused: bool = False):
    """The seed's Adam(lr=1e-3), or the paper's SGD with momentum 0.99, over `parameters`
    (as `torch.optim` takes them: `model.parameters()`). `fused` asks for torch's fused Adam
    (one multi-tensor kernel set per step); otherwise torch picks (foreach on a GPU)."""
    if name == "adam":
        # fused=None, not False: an explicit False would also turn torch's foreach default off.
        return torch.optim.Adam(parameters, lr=learning_rate, fused=True if fused else None)
    if name == "sgd":
        return torch.optim.SGD(parameters, lr=learning_rate, momentum=momentum)
    raise ValueError(f"optimizer must be one of {OPTIMIZERS}, got {name!r}")


def train_step(
    model: torch.nn.Module,
    optimizer: torch.optim.Optimizer,
    images: torch.Tensor,  # [N, C, H, W] float
    masks: torch.Tensor,  # [N, H, W] (or already output-sized) int64 class indices
    autocast_dtype: Optional[torch.dtype] = None,
) -> torch.Tensor:
    """One optimisation step; returns the (detached) mean cross-entropy of the batch."""
    model.train()
    optimizer.zero_grad(set_to_none=True)
    loss = step_loss(model, images, masks, autocast_dtype)
    loss.backward()
    optimizer.step()
    return loss.detach()


def step_loss(model: torch.nn.Module, images: torch.Tensor, masks: torch.Tensor,
              autocast_dtype: Optional[torch.dtype] = None) -> torch.Tensor:
    """The step's differentiable part: forward (under autocast) and the mean cross-entropy
    against the masks centre-cropped to the logits."""
    with torch.autocast(images.device.type, dtype=autocast_dtype, enabled=autocast_dtype is not None):
        logits = model(images)
    labels = center_crop(masks, logits.shape[-2], logits.shape[-1])
    # At least float32 (bf16 autocast logits are upcast), but float64 stays float64: the parity
    # tests train a float64 copy of this model as the reference.
    return F.cross_entropy(logits.to(torch.promote_types(logits.dtype, torch.float32)), labels)
