"""Object-level scores: are the cells found one by one, and are touching cells kept apart?

Pixel Dice barely notices two touching cells predicted as one blob; these scores do:
  - predicted objects are the connected components of the predicted foreground (class > 0),
    4-connected (scipy.ndimage.label's default): a one-pixel background line, even a diagonal
    one, separates two objects;
  - a predicted object matches a true object when their IoU exceeds 0.5. Two objects that
    overlap by more than half of their union can't both be matched to a third, so matches are
    one-to-one without any assignment step;
  - true positives are matched pairs, false positives unmatched predictions, false negatives
    unmatched true objects; precision, recall and F1 follow from counts summed over images,
    and `mean_matched_iou` is the IoU of the matched pairs averaged over all of them;
  - a label image (`match_labels`, e.g. the grown objects of `unet_jax.inference.instances`)
    is scored by its ids as they are, since its objects may touch;
  - touching pairs are pairs of true objects with 8-neighbouring pixels; a pair is kept apart
    ("split") when both of its objects are matched, which, matches being one-to-one, means to
    two different predicted objects, each covering most of its cell.
"""

from __future__ import annotations

import numpy as np
from scipy import ndimage

IOU_THRESHOLD = 0.5
COUNT_FIELDS = ("true_positives", "false_positives", "false_negatives", "touching_pairs", "split_pairs")
SUM_FIELDS = ("matched_iou_sum",)  # summed as floats


def touching_pairs(instances: np.ndarray) -> set[tuple[int, int]]:
    """Pairs (a, b), a < b, of objects in `instances` [H, W] that have 8-neighbouring pixels."""
    pairs = set()
    # Four shifts cover the 8 neighbours: each neighbouring pixel pair is seen from one side.
    for first, second in (
        (instances[:, :-1], instances[:, 1:]),
        (instances[:-1, :], instances[1:, :]),
        (instances[:-1, :-1], instances[1:, 1:]),
        (instances[:-1, 1:], instances[1:, :-1]),
    ):
        hit = (first > 0) & (second > 0) & (first != second)
        a, b = first[hit], second[hit]
        pairs |= set(zip(np.minimum(a, b).tolist(), np.maximum(a, b).tolist()))
    return pairs


def match_instances(predicted_foreground: np.ndarray, instances: np.ndarray) -> dict:
    """Matching of the predicted objects to the true ones in one image.

    predicted_foreground: bool [H, W]; instances: int [H, W], 0 background, one id per object.
    Returns the counts of `COUNT_FIELDS` and `matched`, the set of true ids that were matched.
    """
    components, _ = ndimage.label(np.asarray(predicted_foreground, bool))  # [H, W], 0 background, 1..P
    return match_labels(components, instances)


def match_labels(predicted: np.ndarray, instances: np.ndarray) -> dict:
    """As `match_instances`, for predicted objects given as a label image [H, W] (0 background,
    ids 1..P dense, objects may touch). Adds `matched_iou_sum`, the summed IoU of the matched pairs."""
    predicted = np.asarray(predicted)
    instances = np.asarray(instances)
    if predicted.shape != instances.shape:
        raise ValueError(f"prediction {predicted.shape} and instance mask {instances.shape} differ in size")
    components = predicted.astype(np.int64)
    num_predicted = int(components.max()) if components.size else 0
    true_ids = np.unique(instances[instances > 0])
    # Dense true ids 1..T so that one bincount over (true, predicted) pairs gives every intersection.
    dense = np.searchsorted(true_ids, instances) + 1
    dense[instances == 0] = 0
    width = num_predicted + 1
    overlap = np.bincount((dense * width + components).ravel(), minlength=(len(true_ids) + 1) * width)
    overlap = overlap.reshape(len(true_ids) + 1, width)[1:, 1:]  # [T, P] intersection areas
    true_area = np.bincount(dense.ravel(), minlength=len(true_ids) + 1)[1:]  # [T]
    predicted_area = np.bincount(components.ravel(), minlength=width)[1:]  # [P]
    union = true_area[:, None] + predicted_area[None, :] - overlap
    iou = np.divide(overlap, union, out=np.zeros(overlap.shape), where=union > 0)  # [T, P]
    matched_true, matched_predicted = np.nonzero(iou > IOU_THRESHOLD)
    matched = set(true_ids[matched_true].tolist())
    touching = touching_pairs(instances)
    return {
        "true_positives": len(matched_true),
        "false_positives": num_predicted - len(matched_true),
        "false_negatives": len(true_ids) - len(matched_true),
        "touching_pairs": len(touching),
        "split_pairs": sum(1 for a, b in touching if a in matched and b in matched),
        "matched_iou_sum": float(iou[matched_true, matched_predicted].sum()),
        "matched": matched,
    }


def add_instance_counts(total: dict | None, counts: dict) -> dict:
    total = total or dict.fromkeys(COUNT_FIELDS + SUM_FIELDS, 0)
    return {**{k: total[k] + int(counts[k]) for k in COUNT_FIELDS}, **{k: total[k] + float(counts[k]) for k in SUM_FIELDS}}


def instance_scores(counts: dict) -> dict:
    """The summed counts with precision, recall, F1 and the share of touching pairs kept apart.

    With no predicted objects precision is 1 if there was nothing to find, else 0 (recall
    likewise with no true objects); with no touching pairs `split_fraction` is None, and with
    no matches `mean_matched_iou` is None.
    """
    tp, fp, fn = counts["true_positives"], counts["false_positives"], counts["false_negatives"]
    pairs = counts["touching_pairs"]
    return {
        **{k: int(counts[k]) for k in COUNT_FIELDS},
        "precision": tp / (tp + fp) if tp + fp else float(fn == 0),
        "recall": tp / (tp + fn) if tp + fn else float(fp == 0),
        "f1": 2 * tp / (2 * tp + fp + fn) if tp + fp + fn else 1.0,
        "split_fraction": counts["split_pairs"] / pairs if pairs else None,
        "mean_matched_iou": counts["matched_iou_sum"] / tp if tp else None,
        "iou_threshold": IOU_THRESHOLD,
    }
