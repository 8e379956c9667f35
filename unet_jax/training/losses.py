"""Segmentation losses on logits `[N, H, W, C]` and class-index labels `[N, H, W]`.

`weighted-ce` also takes per-pixel weights `[N, H, W]` (the paper's separation weight map,
`unet_jax.data.weight_map`); `needs_weights` says which losses do.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from unet_jax.config import LOSSES, WEIGHT_MAP_LOSSES


def pixel_cross_entropy(logits, labels):
    """Softmax cross-entropy of every pixel, [N, H, W].

    The true class's log-probability is picked with a one-hot comparison, not gathered
    (`optax.softmax_cross_entropy_with_integer_labels` uses `take_along_axis`): the gradient of a
    gather is a scatter-add, which XLA:CPU spent 11 of 27 s constant-folding when compiling the
    seed network's step at 572 px, batch 16 (4 s in all with this form); a comparison fuses
    into the softmax instead. Same function: `tests/unit/test_losses_metrics.py` checks it against
    torch and by hand.
    """
    log_probs = jax.nn.log_softmax(logits, axis=-1)  # [N, H, W, C]
    is_true_class = jax.nn.one_hot(labels, logits.shape[-1], dtype=jnp.bool_)  # [N, H, W, C]
    return -jnp.where(is_true_class, log_probs, 0.0).sum(axis=-1)


def cross_entropy(logits, labels):
    """Mean pixel-wise softmax cross-entropy (PyTorch's `F.cross_entropy`)."""
    return pixel_cross_entropy(logits, labels).mean()


def weighted_cross_entropy(logits, labels, weights):
    """Mean over pixels of weight x softmax cross-entropy: the paper's energy (eq. 1), averaged."""
    return (weights * pixel_cross_entropy(logits, labels)).mean()


def needs_weights(name: str) -> bool:
    """Whether loss `name` takes per-pixel weights (and so instance masks to compute them from)."""
    return name in WEIGHT_MAP_LOSSES


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
    """'ce', 'dice' or 'ce+dice' (their sum) -> loss(logits, labels); 'weighted-ce' -> loss(logits, labels, weights)."""
    if name == "ce":
        return cross_entropy
    if name == "dice":
        return soft_dice_loss
    if name == "ce+dice":
        return lambda logits, labels: cross_entropy(logits, labels) + soft_dice_loss(logits, labels)
    if name == "weighted-ce":
        return weighted_cross_entropy
    raise ValueError(f"loss must be one of {LOSSES}, got {name!r}")
