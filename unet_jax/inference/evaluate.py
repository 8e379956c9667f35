"""Scores of a trained U-Net on a folder of images and masks, each image predicted whole.

Training validates on tiles; users judge a model on their images. So every image is
predicted at full size with the overlap-tile strategy (`unet_jax.inference.predictor`), and Dice, IoU
and pixel accuracy are computed from per-class counts summed over all pixels of all images
(`unet_jax.inference.metrics`), not averaged per image: large images weigh by their pixels. Where the
masks carry instance labels, the objects are scored too (`unet_jax.inference.instance_metrics`).

A 2-class model is scored twice: as predicted (the class map, and its connected components as
objects), and as the label images `predict --instances` writes (`unet_jax.inference.instances`:
the objects grown back over the gap the network draws between them), the pixel scores of the
grown foreground against the true foreground and, with instance masks, the grown objects.
"""

from __future__ import annotations

from typing import Optional

import numpy as np

from unet_jax.data import Samples, load_folder
from unet_jax.inference.instance_metrics import add_instance_counts, instance_scores, match_instances, match_labels
from unet_jax.inference.instances import InstanceRule
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
    instances: Optional[InstanceRule] = None,
) -> dict:
    """Scores of the weights (a run directory or any weights file `Predictor.from_weights` reads)
    on the samples under `data_dir` (any layout `load_folder` reads).

    Returns `{"dice", "iou", "pixel_accuracy", "dice_per_class", "iou_per_class", "num_images"}`;
    dice and iou average the foreground classes (1 ..), per-class lists include background.
    With instance masks it adds `"instances"` (`instance_metrics.instance_scores`: true/false
    positives, false negatives, precision, recall, F1, mean IoU of the matched objects, touching
    and split pairs); without, `"instances_absent"` says why. A 2-class model adds `"grown"`: the
    rule (`instances`, default `InstanceRule()`), the pixel scores of the grown foreground, and
    with instance masks its `"instances"` scored the same way.
    """
    predictor = Predictor.from_weights(weights_path, config, devices=devices)
    samples = load_folder(data_dir, predictor.config.in_channels, predictor.config.num_classes)
    return evaluate_samples(predictor, samples, tile_size, batch_size, instances)


def evaluate_samples(
    predictor: Predictor, samples: Samples, tile_size: Optional[int] = None, batch_size: int = DEFAULT_BATCH_SIZE,
    instances: Optional[InstanceRule] = None,
) -> dict:
    """As `evaluate`, for samples already in memory (images scaled to [0, 1], not yet normalised)."""
    if len(samples) == 0:
        raise ValueError("no samples to evaluate")
    num_classes = predictor.config.num_classes
    rule = (instances or InstanceRule()) if num_classes == 2 else None  # labels of one foreground class only
    class_only = [name for name, ids in zip(samples.names, samples.instances) if ids is None]
    total, objects, grown_total, grown_objects = None, None, None, None
    for image, mask, true_ids in zip(samples.images, samples.masks, samples.instances):
        probs = predict_probabilities(predictor, predictor.normalize(image), tile_size, batch_size)  # [H, W, K]
        predicted = probs.argmax(axis=-1)  # [H, W]
        total = add_counts(total, class_counts(predicted, mask, num_classes))
        if not class_only:
            objects = add_instance_counts(objects, match_instances(predicted > 0, true_ids))
        if rule is not None:
            grown = rule.labels(predicted > 0, probs[..., 1])  # [H, W] object ids
            grown_total = add_counts(grown_total, class_counts((grown > 0).astype(np.int64), mask, num_classes))
            if not class_only:
                grown_objects = add_instance_counts(grown_objects, match_labels(grown, true_ids))
    result = {**scores_from_counts(total), "num_images": len(samples)}
    if class_only:
        result["instances_absent"] = (
            f"no object scores: {len(class_only)} of {len(samples)} masks hold class indices, not instance labels "
            f"(first: the mask of {class_only[0]}); instance masks are 16-bit or wider, 0 background and one id per object"
        )
    else:
        result["instances"] = instance_scores(objects)
    if rule is not None:
        pixels = scores_from_counts(grown_total)
        result["grown"] = {"growth_distance": rule.growth_distance, "min_object_size": rule.min_size,
                           "extent_threshold": rule.extent_threshold,
                           "dice": pixels["dice"], "iou": pixels["iou"], "pixel_accuracy": pixels["pixel_accuracy"]}
        if grown_objects is not None:
            result["grown"]["instances"] = instance_scores(grown_objects)
    return result
