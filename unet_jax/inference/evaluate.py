"""Scores of a trained U-Net on a folder of images and masks, each image predicted whole.

Training validates on tiles; users judge a model on their images. So every image is
predicted at full size with the overlap-tile strategy (`unet_jax.inference.predictor`), and Dice, IoU
and pixel accuracy are computed from per-class counts summed over all pixels of all images
(`unet_jax.inference.metrics`), not averaged per image: large images weigh by their pixels. Where the
masks carry instance labels, the objects are scored too (`unet_jax.inference.instance_metrics`).
"""

from __future__ import annotations

from typing import Optional

from unet_jax.data import Samples, load_folder
from unet_jax.inference.instance_metrics import add_instance_counts, instance_scores, match_instances
from unet_jax.inference.metrics import add_counts, class_counts, scores_from_counts
from unet_jax.inference.predictor import Predictor, predict_probabilities
from unet_jax.inference.tile_plan import DEFAULT_BATCH_SIZE
from unet_jax.weights.io import ArchitectureRequest


def evaluate(
    weights_path,
    data_dir,
    config: ArchitectureRequest = None,
    tile_size: Optional[int] = None,
    batch_size: int = DEFAULT_BATCH_SIZE,
    devices: Optional[int] = None,
) -> dict:
    """Scores of the weights (a run directory or any weights file `Predictor.from_weights` reads)
    on the samples under `data_dir` (any layout `load_folder` reads).

    Returns `{"dice", "iou", "pixel_accuracy", "dice_per_class", "iou_per_class", "num_images"}`;
    dice and iou average the foreground classes (1 ..), per-class lists include background.
    With instance masks it adds `"instances"` (`instance_metrics.instance_scores`: true/false
    positives, false negatives, precision, recall, F1, touching and split pairs); without,
    `"instances_absent"` says why.
    """
    predictor = Predictor.from_weights(weights_path, config, devices=devices)
    samples = load_folder(data_dir, predictor.config.in_channels, predictor.config.num_classes)
    return evaluate_samples(predictor, samples, tile_size, batch_size)


def evaluate_samples(
    predictor: Predictor, samples: Samples, tile_size: Optional[int] = None, batch_size: int = DEFAULT_BATCH_SIZE
) -> dict:
    """As `evaluate`, for samples already in memory (images scaled to [0, 1], not yet normalised)."""
    if len(samples) == 0:
        raise ValueError("no samples to evaluate")
    num_classes = predictor.config.num_classes
    class_only = [name for name, instances in zip(samples.names, samples.instances) if instances is None]
    total, objects = None, None
    for image, mask, instances in zip(samples.images, samples.masks, samples.instances):
        probs = predict_probabilities(predictor, predictor.normalize(image), tile_size, batch_size)  # [H, W, K]
        predicted = probs.argmax(axis=-1)  # [H, W]
        total = add_counts(total, class_counts(predicted, mask, num_classes))
        if not class_only:
            objects = add_instance_counts(objects, match_instances(predicted > 0, instances))
    result = {**scores_from_counts(total), "num_images": len(samples)}
    if class_only:
        result["instances_absent"] = (
            f"no object scores: {len(class_only)} of {len(samples)} masks hold class indices, not instance labels "
            f"(first: the mask of {class_only[0]}); instance masks are 16-bit or wider, 0 background and one id per object"
        )
    else:
        result["instances"] = instance_scores(objects)
    return result
