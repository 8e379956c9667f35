"""The paper's separation weight map and the gap between touching cells, against hand-made cases and brute force."""

import numpy as np
import pytest

from unet_jax.data import make_cells
from unet_jax.data.weight_map import W0, class_balance_weights, separate_touching, separation_targets, separation_weights


def test_two_bars_with_known_distances():
    """Two full-height bars: every background pixel's nearest pixels of each bar lie in its own row,
    so d1 and d2 are column differences, written out by hand."""
    instances = np.zeros((5, 12), np.int32)
    instances[:, 0:2] = 1  # columns 0, 1
    instances[:, 7:9] = 2  # columns 7, 8
    # 60 pixels, 20 foreground, 40 background: w_c = 60 / (2 * 20) = 1.5 and 60 / (2 * 40) = 0.75.
    expected_row = [1.5, 1.5]
    expected_row += [0.75 + 10 * np.exp(-(6.0**2) / 50)] * 5  # columns 2..6: d1 + d2 = (c - 1) + (7 - c) = 6
    expected_row += [1.5, 1.5]
    expected_row += [0.75 + 10 * np.exp(-(s**2) / 50) for s in (9.0, 11.0, 13.0)]  # columns 9..11: (c - 8) + (c - 1)
    weights = separation_weights(instances)
    assert weights.dtype == np.float32 and weights.shape == instances.shape
    np.testing.assert_allclose(weights, np.tile(expected_row, (5, 1)), rtol=1e-6)


def test_the_paper_defaults_and_their_parameters():
    instances = np.zeros((3, 7), np.int32)
    instances[:, 0] = 1
    instances[:, 6] = 2  # background columns 1..5, d1 + d2 = 6 everywhere
    w_c = 21 / (2 * 15)
    np.testing.assert_allclose(separation_weights(instances)[:, 3], w_c + 10 * np.exp(-36 / 50), rtol=1e-6)
    np.testing.assert_allclose(separation_weights(instances, w0=2.0, sigma=3.0)[:, 3], w_c + 2 * np.exp(-36 / 18), rtol=1e-6)


def test_one_object_or_none_gets_only_the_class_balance():
    one = np.zeros((4, 4), np.int32)
    one[:2, :1] = 1  # 2 of 16 pixels
    np.testing.assert_allclose(separation_weights(one), np.where(one > 0, 16 / 4, 16 / 28), rtol=1e-6)
    np.testing.assert_array_equal(separation_weights(np.zeros((3, 3), np.int32)), np.ones((3, 3)))  # one class: N / (1 * N)


def test_class_balance_gives_every_class_the_same_total():
    classes = np.random.default_rng(0).integers(0, 3, (20, 30))
    w = class_balance_weights(classes)
    totals = [w[classes == c].sum() for c in range(3)]
    np.testing.assert_allclose(totals, [600 / 3] * 3, rtol=1e-5)


def test_touching_objects_get_a_one_pixel_gap():
    instances = np.zeros((4, 8), np.int32)
    instances[:, :4] = 1
    instances[:, 4:] = 2
    expected = instances.copy()
    expected[:, 4] = 0  # the larger id gives up its border column
    np.testing.assert_array_equal(separate_touching(instances), expected)
    diagonal = np.array([[1, 0], [0, 2]], np.int32)  # 8-neighbours only
    np.testing.assert_array_equal(separate_touching(diagonal), [[1, 0], [0, 0]])
    apart = np.array([[1, 0, 2]], np.int32)  # already apart: unchanged
    np.testing.assert_array_equal(separate_touching(apart), apart)


def _neighbour_pairs(labels, reach=1):
    """(a, b) label pairs of different objects with pixels within `reach` rows and columns (reach 1:
    8-neighbours): numpy shifts, no scipy."""
    h, w = labels.shape
    padded = np.pad(labels, reach)
    pairs = set()
    for dy in range(-reach, reach + 1):
        for dx in range(-reach, reach + 1):
            shifted = padded[reach + dy : reach + dy + h, reach + dx : reach + dx + w]
            hit = (labels > 0) & (shifted > 0) & (labels != shifted)
            pairs |= set(zip(labels[hit].tolist(), shifted[hit].tolist()))
    return pairs


def test_the_gap_separates_every_touching_pair_of_synthetic_cells_and_takes_only_one_side():
    instances = make_cells(2, 96, seed=3).instances
    for labels in instances:
        assert _neighbour_pairs(labels), "the test needs touching cells"
        separated = separate_touching(labels)
        assert not _neighbour_pairs(separated)
        removed = (labels > 0) & (separated == 0)
        assert np.all(separated[~removed] == labels[~removed])
        # Every removed pixel had a neighbour with a smaller id (the rule), computed by shifts.
        h, w = labels.shape
        padded = np.pad(labels, 1)
        smaller = np.zeros_like(removed)
        for dy in (-1, 0, 1):
            for dx in (-1, 0, 1):
                shifted = padded[1 + dy : 1 + dy + h, 1 + dx : 1 + dx + w]
                smaller |= (shifted > 0) & (shifted < labels)
        np.testing.assert_array_equal(removed, smaller & (labels > 0))


def _brute_force_weights(instances, w0=10.0, sigma=5.0):
    """The formula with every pixel-to-pixel distance written out (no distance transform, no cut-off)."""
    ys, xs = np.indices(instances.shape)
    ids = [i for i in np.unique(instances) if i > 0]
    distances = []
    for i in ids:
        oy, ox = ys[instances == i], xs[instances == i]
        d = np.sqrt((ys.ravel()[:, None] - oy[None]) ** 2 + (xs.ravel()[:, None] - ox[None]) ** 2).min(axis=1)
        distances.append(d.reshape(instances.shape))
    distances = np.sort(np.stack(distances), axis=0)
    fg = instances > 0
    n, n_fg = instances.size, fg.sum()
    w_c = np.where(fg, n / (2 * n_fg), n / (2 * (n - n_fg)))
    return w_c + np.where(fg, 0.0, w0 * np.exp(-((distances[0] + distances[1]) ** 2) / (2 * sigma**2)))


@pytest.mark.parametrize("seed", [0, 1])
def test_synthetic_cells_match_the_brute_force_formula(seed):
    instances = separate_touching(make_cells(1, 64, seed=seed).instances[0])
    assert len(np.unique(instances)) > 3
    expected = _brute_force_weights(instances)
    # The only approximation: terms below 1e-6 * w0 = 1e-5 are left out (analytic bound); measured
    # 4.8e-7 here (float32 rounding), so 2e-5 is the bound with a 2x margin.
    np.testing.assert_allclose(separation_weights(instances), expected, rtol=0, atol=2e-5)
    assert np.max(expected[instances == 0]) > 0.75 * W0  # a gap pixel carries most of w0


def test_separation_targets_are_the_gapped_mask_and_its_weights():
    instances = np.zeros((4, 8), np.int32)
    instances[:, :4] = 1
    instances[:, 4:] = 2
    mask, weights = separation_targets(instances)
    assert mask.dtype == np.int32 and weights.dtype == np.float32
    np.testing.assert_array_equal(mask[:, 4], 0)
    np.testing.assert_array_equal(mask[:, [0, 3, 5, 7]], 1)
    # The gap column: d1 = d2 = 1; 4 background of 32 pixels -> w_c = 32 / 8 = 4.
    np.testing.assert_allclose(weights[:, 4], 4 + 10 * np.exp(-4 / 50), rtol=1e-6)



@pytest.mark.parametrize("width", [2, 3])
def test_a_wider_gap_keeps_every_pair_of_synthetic_cells_that_far_apart(width):
    labels = make_cells(1, 96, seed=3).instances[0]
    separated = separate_touching(labels, width)
    assert not _neighbour_pairs(separated, width)
    # Not wider than asked: some pair is still within width + 1 (the gap's far side), and only objects gave up pixels.
    assert _neighbour_pairs(separated, width + 1)
    kept = separated > 0
    np.testing.assert_array_equal(separated[kept], labels[kept])


def test_two_touching_bars_get_a_gap_of_the_asked_width():
    instances = np.zeros((4, 10), np.int32)
    instances[:, :5] = 1
    instances[:, 5:] = 2
    for width in (1, 2, 3):
        separated = separate_touching(instances, width)
        np.testing.assert_array_equal(separated[0], [1] * 5 + [0] * width + [2] * (5 - width))  # the larger id gives up pixels


@pytest.mark.parametrize("width", [0, -1, 1.5, True])
def test_a_gap_width_that_is_not_a_positive_whole_number_is_refused(width):
    with pytest.raises(ValueError, match="gap width"):
        separate_touching(np.ones((3, 3), np.int32), width)
