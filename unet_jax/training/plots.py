"""The pictures a run leaves behind: loss curves, image | truth | prediction rows, and the weight map."""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # files only; never needs a display
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402


def plot_losses(records: list[dict], path: Path) -> None:
    """Train loss per logged step and validation loss/Dice per evaluation."""
    train = [r for r in records if r["split"] == "train"]
    val = [r for r in records if r["split"] == "val"]
    fig, loss_axis = plt.subplots(figsize=(7, 4))
    loss_axis.plot([r["step"] for r in train], [r["loss"] for r in train], label="train loss")
    if val:
        loss_axis.plot([r["step"] for r in val], [r["loss"] for r in val], "o-", label="val loss")
        dice_axis = loss_axis.twinx()
        dice_axis.plot([r["step"] for r in val], [r["dice"] for r in val], "s--", color="tab:green", label="val Dice")
        dice_axis.set_ylabel("foreground Dice")
        dice_axis.set_ylim(0, 1)
        dice_axis.legend(loc="center right")
    loss_axis.set_xlabel("step")
    loss_axis.set_ylabel("loss")
    loss_axis.set_yscale("log")
    loss_axis.legend(loc="upper right")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def plot_predictions(images: np.ndarray, truths: np.ndarray, predictions: np.ndarray, path: Path) -> None:
    """One row per tile: the input's centre (the part the labels cover), truth, prediction.

    images [N, Hin, Win, C]; truths and predictions [N, Hout, Wout] class indices.
    """
    rows = len(images)
    fig, axes = plt.subplots(rows, 3, figsize=(7.5, 2.5 * rows), squeeze=False)
    out = truths.shape[1]
    margin = (images.shape[1] - out) // 2
    for row in range(rows):
        image = images[row, margin : margin + out, margin : margin + out]
        image = image[..., 0] if image.shape[-1] == 1 else (image - image.min()) / max(np.ptp(image), 1e-6)
        for column, (picture, title) in enumerate(
            ((image, "image"), (truths[row], "truth"), (predictions[row], "prediction"))
        ):
            axis = axes[row, column]
            axis.imshow(picture, cmap="gray" if column == 0 else "viridis", interpolation="nearest")
            axis.set_xticks([])
            axis.set_yticks([])
            if row == 0:
                axis.set_title(title)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def plot_weight_map(image: np.ndarray, target: np.ndarray, weights: np.ndarray, path: Path) -> None:
    """A training image [H, W, C], its target with the gaps between touching objects [H, W], and its weight map [H, W]."""
    fig, axes = plt.subplots(1, 3, figsize=(12, 4.4))
    picture = image[..., 0] if image.shape[-1] == 1 else (image - image.min()) / max(np.ptp(image), 1e-6)
    axes[0].imshow(picture, cmap="gray", interpolation="nearest")
    axes[1].imshow(target, cmap="gray", interpolation="nearest")
    shown = axes[2].imshow(weights, cmap="jet", interpolation="nearest")
    fig.colorbar(shown, ax=axes[2], fraction=0.046, pad=0.04)
    for axis, title in zip(axes, ("image", "target (gaps between touching cells)", "weight map w(x)")):
        axis.set_title(title)
        axis.set_xticks([])
        axis.set_yticks([])
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
