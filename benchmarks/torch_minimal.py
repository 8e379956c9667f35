"""The yardstick for the harness's PyTorch side: a train step written apart from it, the way a
PyTorch performance engineer writes one for this network (channels_last model and input made
with `.to(memory_format=...)`, bf16 autocast, `Adam(fused=True)`, cross-entropy on the logits
cast to float, the whole step under `torch.compile`), and nothing else.

It shares no step code with `unet_torch.train_step` or `benchmarks.torch_step` (only the model
class, and the timing around it), so that the harness's best torch.compile variant can be
checked against it in the same run (the fair plan: within 3%).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def build_minimal_step(model: torch.nn.Module, images: torch.Tensor, masks: torch.Tensor, compiler=torch.compile):
    """`step()` training `model` on one batch: images [N, C, H, W] float32, masks [N, H, W] int64,
    on the model's device. Labels are cut to the logits' size once, here, not in every step.
    `compiler` wraps the step (the tests pass an identity, to compare it with the harness's eagerly)."""
    model = model.to(memory_format=torch.channels_last).train()
    images = images.to(memory_format=torch.channels_last)
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3, fused=True)
    with torch.no_grad():
        side = model(images[:1]).shape[-1]  # the valid convolutions' output side
    cut = (masks.shape[-1] - side) // 2
    labels = masks[:, cut:cut + side, cut:cut + side].contiguous()

    @compiler
    def step():
        optimizer.zero_grad(set_to_none=True)
        with torch.autocast(images.device.type, dtype=torch.bfloat16):
            logits = model(images)
        F.cross_entropy(logits.float(), labels).backward()
        optimizer.step()

    return step
