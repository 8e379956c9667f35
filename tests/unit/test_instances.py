"""Label images from a predicted foreground (unet_jax.inference.instances), on hand-made masks."""

import numpy as np
import pytest

from unet_jax.config import ConfigError
from unet_jax.inference.instances import InstanceRule, foreground_objects, grow_labels, instance_labels


def _two_blobs_with_a_gap(gap: int) -> np.ndarray:
    """Two 6x5 rectangles side by side, `gap` background columns between them."""
    foreground = np.zeros((10, 12 + gap + 2), bool)
    foreground[2:8, 1:7] = True
    foreground[2:8, 7 + gap : 13 + gap] = True
    return foreground


def test_two_touching_but_separated_blobs_stay_two_and_share_the_gap():
    foreground = _two_blobs_with_a_gap(gap=2)
    labels = instance_labels(foreground, growth_distance=1.0, min_size=0)
    assert labels.dtype == np.uint16 and set(np.unique(labels)) == {0, 1, 2}
    # The 2-pixel gap is shared: one column to each object, so they meet without joining.
    assert (labels[2:8, 7] == 1).all() and (labels[2:8, 8] == 2).all()
    # Each grew by one pixel all round (4-neighbours at distance 1, not the diagonal corners at sqrt 2).
    assert (labels[1, 1:7] == 1).all() and labels[1, 0] == labels[1, 7] == 0 and labels[0, 3] == 0


def test_a_one_pixel_diagonal_line_separates_two_objects():
    foreground = np.ones((6, 6), bool)
    np.fill_diagonal(foreground, False)
    labels = instance_labels(foreground, growth_distance=0, min_size=0)
    assert labels.max() == 2  # 4-connected: the diagonal cuts the square in two


def test_growth_never_merges_and_keeps_every_object_pixel():
    rng = np.random.default_rng(0)
    foreground = rng.random((64, 64)) < 0.35  # many small objects with narrow gaps
    objects, count = foreground_objects(foreground, min_size=0)
    for distance in (1.0, 2.0, 5.0, 100.0):
        grown = instance_labels(foreground, growth_distance=distance, min_size=0)
        assert grown.max() == count and len(np.unique(grown[grown > 0])) == count  # none lost, none joined
        assert (grown[foreground] == objects[foreground]).all()  # object pixels keep their id
        assert ((grown > 0) >= foreground).all()


def test_growth_stops_at_the_distance():
    foreground = np.zeros((1, 20), bool)
    foreground[0, 0] = True
    labels = instance_labels(foreground, growth_distance=3.5, min_size=0)
    assert labels[0].tolist() == [1] * 4 + [0] * 16
    assert (grow_labels(labels, 0) == labels).all()


def test_ids_are_dense_after_small_objects_are_dropped():
    foreground = np.zeros((9, 9), bool)
    foreground[0, 0] = True  # 1 pixel: dropped
    foreground[0, 4:8] = True  # 4 pixels: kept
    foreground[4, 4] = True  # 1 pixel: dropped
    foreground[6:9, 0:3] = True  # 9 pixels: kept
    labels = instance_labels(foreground, growth_distance=0, min_size=2)
    assert sorted(np.unique(labels).tolist()) == [0, 1, 2]
    assert (labels[0, 4:8] == 1).all() and (labels[6:9, 0:3] == 2).all() and labels[0, 0] == 0 and labels[4, 4] == 0


def test_uint32_past_65535_objects():
    foreground = np.zeros((520, 520), bool)
    foreground[::2, ::2] = True  # 260 * 260 = 67,600 one-pixel objects, 4-connected apart
    labels = instance_labels(foreground, growth_distance=0, min_size=0)
    assert labels.dtype == np.uint32 and labels.max() == 260 * 260
    few = instance_labels(foreground[:100, :100], growth_distance=0, min_size=0)
    assert few.dtype == np.uint16 and few.max() == 50 * 50


def test_stack_pages_are_labelled_apart():
    pages = np.zeros((2, 8, 8), bool)
    pages[0, 1:3, 1:3] = True
    pages[0, 5:7, 5:7] = True
    pages[1, 1:3, 1:3] = True  # overlaps page 0's first object: still its own page's object 1
    rule = InstanceRule(growth_distance=0, min_size=0)
    labels = rule.label_pages(pages)
    assert labels.shape == (2, 8, 8) and labels.dtype == np.uint16
    assert (labels[0].max(), labels[1].max()) == (2, 1)
    assert (labels[1] == rule.labels(pages[1])).all()


def test_no_foreground_and_all_foreground():
    assert instance_labels(np.zeros((4, 4), bool)).max() == 0
    assert (instance_labels(np.ones((4, 4), bool)) == 1).all()


def test_growth_claims_only_pixels_above_the_extent_threshold():
    foreground = _two_blobs_with_a_gap(gap=2)
    probability = foreground.astype(np.float32)
    probability[2:8, 7:9] = 0.2  # the gap: the trimmed facing edges, still somewhat foreground
    rule = InstanceRule(growth_distance=3.0, min_size=0, extent_threshold=0.05)
    labels = rule.labels(foreground, probability)
    assert (labels[2:8, 7] == 1).all() and (labels[2:8, 8] == 2).all()  # the gap is shared
    assert ((labels > 0) == (probability > 0.05)).all()  # and nothing else grew: the rest is p = 0
    spilled = InstanceRule(growth_distance=3.0, min_size=0, extent_threshold=0).labels(foreground, probability)
    assert (spilled > 0).sum() > (labels > 0).sum()  # threshold 0: by distance alone
    np.testing.assert_array_equal(rule.labels(foreground), spilled)  # probability unknown: by distance alone


@pytest.mark.parametrize("growth, size, extent, named", [
    (-1.0, 0, 0.05, "--growth-distance"), (float("nan"), 0, 0.05, "--growth-distance"), (1.0, -2, 0.05, "--min-object-size"),
    (1.0, 0, 0.5, "--extent-threshold"), (1.0, 0, -0.1, "--extent-threshold"),
])
def test_a_bad_rule_names_its_option(growth, size, extent, named):
    with pytest.raises(ConfigError, match=named):
        InstanceRule(growth, size, extent)
