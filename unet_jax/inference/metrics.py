"""Segmentation metrics from summed per-class counts, so that they add up over batches.

Dice and IoU are computed from counts accumulated over a whole evaluation set (not averaged
per tile), which is what "Dice on the held-out images" means. The counts come from logits on
the device (`segmentation_counts`, inside the jitted steps) or from class maps on the host
(`class_counts`, for whole images); both return the same three per-class vectors.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np


def segmentation_counts(logits, labels):
    """Per-class true-positive, predicted and true pixel counts.  # each [C]"""
    num_classes = logits.shape[-1]
    is_pred = jax.nn.one_hot(jnp.argmax(logits, axis=-1), num_classes, dtype=jnp.bool_)  # [N, H, W, C]
    is_true = jax.nn.one_hot(labels, num_classes, dtype=jnp.bool_)
    return {
        "true_positive": (is_pred & is_true).sum(axis=(0, 1, 2)),
        "predicted": is_pred.sum(axis=(0, 1, 2)),
        "actual": is_true.sum(axis=(0, 1, 2)),
    }


def class_counts(predicted: np.ndarray, labels: np.ndarray, num_classes: int) -> dict:
    """Per-class true-positive, predicted and true pixel counts, int64 [K] each.

    The numpy twin of `segmentation_counts`, from class maps [H, W] rather than logits: a
    whole image's one-hot comparison would cost H*W*K memory on the host for nothing.
    """
    predicted, labels = np.ravel(predicted), np.ravel(labels)
    if predicted.shape != labels.shape:
        raise ValueError(f"prediction and mask differ in size: {predicted.size} vs {labels.size} pixels")
    return {
        "true_positive": np.bincount(labels[predicted == labels], minlength=num_classes).astype(np.int64),
        "predicted": np.bincount(predicted, minlength=num_classes).astype(np.int64),
        "actual": np.bincount(labels, minlength=num_classes).astype(np.int64),
    }


def add_counts(total, counts):
    if total is None:
        return {k: np.asarray(v, np.int64) for k, v in counts.items()}
    return {k: total[k] + np.asarray(v, np.int64) for k, v in counts.items()}


def scores_from_counts(counts) -> dict:
    """dice / iou averaged over the foreground classes, per class, and pixel accuracy.

    A class absent from both prediction and truth scores 1 (nothing to find, nothing found).
    """
    tp = np.asarray(counts["true_positive"], np.float64)
    pred = np.asarray(counts["predicted"], np.float64)
    true = np.asarray(counts["actual"], np.float64)
    union = pred + true - tp
    with np.errstate(invalid="ignore", divide="ignore"):
        dice = np.where(pred + true > 0, 2 * tp / (pred + true), 1.0)
        iou = np.where(union > 0, tp / union, 1.0)
    return {
        "dice": float(dice[1:].mean()),
        "iou": float(iou[1:].mean()),
        "pixel_accuracy": float(tp.sum() / true.sum()) if true.sum() else 1.0,
        "dice_per_class": [float(d) for d in dice],
        "iou_per_class": [float(i) for i in iou],
    }
