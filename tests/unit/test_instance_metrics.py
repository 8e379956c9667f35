"""Object-level scores on hand-made masks whose answers are counted by hand."""

import numpy as np
import pytest

from unet_jax.inference.instance_metrics import add_instance_counts, instance_scores, match_instances, match_labels, touching_pairs


def _two_touching_squares():
    instances = np.zeros((6, 12), np.int32)
    instances[1:5, 1:5] = 7  # 4x4, ids need not be 1..K
    instances[1:5, 5:9] = 300  # 4x4, touching 7 along a column
    return instances


def test_a_merged_blob_matches_neither_cell():
    instances = _two_touching_squares()
    counts = match_instances(instances > 0, instances)  # one blob of 32 pixels: IoU 16/32 = 0.5 with each, not > 0.5
    assert (counts["true_positives"], counts["false_positives"], counts["false_negatives"]) == (0, 1, 2)
    assert (counts["touching_pairs"], counts["split_pairs"]) == (1, 0)


def test_a_one_pixel_gap_keeps_the_pair_apart():
    instances = _two_touching_squares()
    predicted = instances > 0
    predicted[:, 5] = False  # the paper's gap: 300 keeps 12 of its 16 pixels, IoU 0.75
    counts = match_instances(predicted, instances)
    assert (counts["true_positives"], counts["false_positives"], counts["false_negatives"]) == (2, 0, 0)
    assert (counts["touching_pairs"], counts["split_pairs"]) == (1, 1)
    assert counts["matched"] == {7, 300}


def test_a_diagonal_gap_separates_4_connected_objects():
    instances = np.zeros((6, 6), np.int32)
    instances[np.triu_indices(6, 1)] = 1  # above the diagonal (15 px)
    instances[np.tril_indices(6, -1)] = 2  # below it (15 px)
    assert touching_pairs(instances) == {(1, 2)}  # they meet only at corners: 8-neighbours
    counts = match_instances(instances > 0, instances)  # the diagonal stays background
    assert (counts["true_positives"], counts["split_pairs"]) == (2, 1)


def test_false_positives_false_negatives_and_the_iou_threshold():
    instances = np.zeros((10, 20), np.int32)
    instances[0:4, 0:4] = 1  # found exactly
    instances[0:4, 10:14] = 2  # found as a 2x4 half: IoU 8/16 = 0.5, not a match
    instances[6:10, 0:4] = 3  # found as a 3x4 part: IoU 12/16 = 0.75
    predicted = np.zeros_like(instances, bool)
    predicted[0:4, 0:4] = True
    predicted[0:2, 10:14] = True
    predicted[6:9, 0:4] = True
    predicted[8:10, 16:20] = True  # nothing there
    counts = match_instances(predicted, instances)
    assert (counts["true_positives"], counts["false_positives"], counts["false_negatives"]) == (2, 2, 1)
    assert counts["touching_pairs"] == 0
    scores = instance_scores(add_instance_counts(None, counts))
    assert scores["precision"] == pytest.approx(2 / 4) and scores["recall"] == pytest.approx(2 / 3)
    assert scores["f1"] == pytest.approx(2 * 2 / (2 * 2 + 2 + 1))
    assert scores["split_fraction"] is None


def test_counts_add_over_images_before_the_ratios():
    first = {"true_positives": 3, "false_positives": 1, "false_negatives": 0, "touching_pairs": 2, "split_pairs": 1,
             "matched_iou_sum": 2.4}
    second = {"true_positives": 1, "false_positives": 0, "false_negatives": 3, "touching_pairs": 2, "split_pairs": 2,
              "matched_iou_sum": 0.6}
    scores = instance_scores(add_instance_counts(add_instance_counts(None, first), second))
    assert scores["true_positives"] == 4 and scores["false_negatives"] == 3
    assert scores["f1"] == pytest.approx(8 / (8 + 1 + 3))  # not the mean of per-image F1s (0.857, 0.4)
    assert scores["split_fraction"] == pytest.approx(3 / 4)
    assert scores["mean_matched_iou"] == pytest.approx(3.0 / 4)  # per matched object, not per image (0.8, 0.6)


def test_empty_cases():
    nothing = instance_scores(add_instance_counts(None, match_instances(np.zeros((4, 4), bool), np.zeros((4, 4), int))))
    assert (nothing["precision"], nothing["recall"], nothing["f1"]) == (1.0, 1.0, 1.0)
    missed = np.zeros((4, 4), int)
    missed[1:3, 1:3] = 5
    scores = instance_scores(add_instance_counts(None, match_instances(np.zeros((4, 4), bool), missed)))
    assert (scores["precision"], scores["recall"], scores["f1"]) == (0.0, 0.0, 0.0)
    with pytest.raises(ValueError, match="differ in size"):
        match_instances(np.zeros((4, 5), bool), missed)


def test_a_pair_counts_as_kept_apart_only_when_both_cells_are_found():
    instances = _two_touching_squares()
    predicted = instances == 7  # 7 found exactly, 300 missed
    counts = match_instances(predicted, instances)
    assert (counts["true_positives"], counts["false_negatives"], counts["split_pairs"]) == (1, 1, 0)


def test_a_label_image_is_scored_by_its_ids_even_where_its_objects_touch():
    instances = _two_touching_squares()
    predicted = np.zeros_like(instances)
    predicted[1:5, 1:6] = 1  # 7 and one column of 300: IoU 16/20
    predicted[1:5, 6:9] = 2  # the rest of 300, touching object 1: IoU 12/16
    counts = match_labels(predicted, instances)
    assert (counts["true_positives"], counts["false_positives"], counts["split_pairs"]) == (2, 0, 1)
    assert counts["matched_iou_sum"] == pytest.approx(16 / 20 + 12 / 16)
    assert match_instances(predicted > 0, instances)["true_positives"] == 0  # as one foreground, the two merge
    scores = instance_scores(add_instance_counts(None, counts))
    assert scores["mean_matched_iou"] == pytest.approx((16 / 20 + 12 / 16) / 2)
    none = instance_scores(add_instance_counts(None, match_labels(np.zeros_like(instances), instances)))
    assert none["mean_matched_iou"] is None
