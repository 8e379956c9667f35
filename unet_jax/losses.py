"""Segmentation losses on logits `[N, H, W, C]` and class-index labels `[N, H, W]`."""

from __future__ import annotations

import jax
import optax

from unet_jax.config import LOSSES


def cross_entropy(logits, labels):
    """Mean pixel-wise softmax cross-entropy (PyTorch's `F.cross_entropy`)."""
    return optax.softmax_cross_entropy_with_integer_labels(logits, labels).mean()


def soft_dice_loss(logits, labels, smooth: float = 1.0):
    """1 - soft Dice of the softmax, averaged over the foreground classes (1 .. C-1).

    Sums run over the whole batch, so a tile without foreground does not score as a failure.
    """
    num_classes = logits.shape[-1]
    probs = jax.nn.softmax(logits, axis=-1)[..., 1:]  # [N, H, W, C-1]
    truth = jax.nn.one_hot(labels, num_classes, dtype=probs.dtype)[..., 1:]
    intersection = (probs * truth).sum(axis=(0, 1, 2))
    total = probs.sum(axis=(0, 1, 2)) + truth.sum(axis=(0, 1, 2))
    return 1.0 - ((2.0 * intersection + smooth) / (total + smooth)).mean()


def make_loss(name: str):
    """'ce', 'dice' or 'ce+dice' (their sum) -> loss(logits, labels)."""
    if name == "ce":
        return cross_entropy
    if name == "dice":
        return soft_dice_loss
    if name == "ce+dice":
        return lambda logits, labels: cross_entropy(logits, labels) + soft_dice_loss(logits, labels)
    raise ValueError(f"loss must be one of {LOSSES}, got {name!r}")
