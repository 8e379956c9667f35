"""The synthetic cells: reproducible, shaped like the task (touching blobs, sensible foreground)."""

import time

import numpy as np
import pytest

from unet_jax.data import make_cells


@pytest.fixture(scope="module")
def cells():
    return make_cells(4, size=128, seed=3)


def test_shapes_dtypes_and_ranges(cells):
    assert cells.images.shape == (4, 128, 128, 1) and cells.images.dtype == np.float32
    assert cells.masks.shape == (4, 128, 128) and cells.masks.dtype == np.int32
    assert cells.instances.shape == (4, 128, 128) and cells.instances.dtype == np.int32
    assert 0 <= cells.images.min() and cells.images.max() <= 1
    np.testing.assert_array_equal(cells.masks, (cells.instances > 0).astype(np.int32))
    for ids in cells.instances:  # instance ids are 1..K without gaps
        present = np.unique(ids)
        np.testing.assert_array_equal(present, np.arange(len(present)))
    assert len(cells) == 4 and len(set(cells.names)) == 4


def test_same_seed_is_bit_identical_and_other_seeds_differ(cells):
    again = make_cells(4, size=128, seed=3)
    assert cells.images.tobytes() == again.images.tobytes()
    np.testing.assert_array_equal(cells.instances, again.instances)
    other = make_cells(4, size=128, seed=4)
    assert not np.array_equal(cells.masks, other.masks)


def test_image_i_does_not_depend_on_how_many_are_made(cells):
    first_two = make_cells(2, size=128, seed=3)
    np.testing.assert_array_equal(first_two.images, cells.images[:2])
    np.testing.assert_array_equal(first_two.instances, cells.instances[:2])


def test_foreground_fraction_is_sensible(cells):
    fractions = cells.masks.mean(axis=(1, 2))
    assert np.all((0.2 <= fractions) & (fractions <= 0.6)), fractions


def _touching_pairs(ids):
    """Pairs of distinct cells that share a 4-neighbour border."""
    pairs = set()
    for a, b in ((ids[1:, :], ids[:-1, :]), (ids[:, 1:], ids[:, :-1])):
        border = (a != b) & (a > 0) & (b > 0)
        pairs |= {tuple(sorted(p)) for p in zip(a[border].tolist(), b[border].tolist())}
    return pairs


def test_most_cells_touch_a_neighbour(cells):
    touching = total = 0
    for ids in cells.instances:
        assert len(_touching_pairs(ids)) >= 3
        touching += len({k for pair in _touching_pairs(ids) for k in pair})
        total += ids.max()
    assert touching / total >= 0.8  # ~0.94 here; ~0.6 if cells were scattered without clustering


def test_cells_vary_in_size_and_brightness_and_stand_out(cells):
    image, ids = cells.images[0, :, :, 0], cells.instances[0]
    labels = np.arange(1, ids.max() + 1)
    areas = np.array([(ids == k).sum() for k in labels])
    brightness = np.array([image[ids == k].mean() for k in labels])
    assert areas.std() / areas.mean() > 0.25
    assert brightness.std() > 0.05
    assert image[ids > 0].mean() > image[ids == 0].mean() + 0.25


def test_cells_are_not_circles(cells):
    # A disc fills pi/4 of its bounding box; ellipses and wobbly outlines vary around that.
    ids = cells.instances[1]
    fill = []
    for k in range(1, ids.max() + 1):
        rows, cols = np.nonzero(ids == k)
        if len(rows) > 80:
            fill.append(len(rows) / ((np.ptp(rows) + 1) * (np.ptp(cols) + 1)))
    assert np.std(fill) > 0.03


def test_64_images_of_256_are_fast():
    start = time.perf_counter()
    make_cells(64, size=256, seed=0)
    assert time.perf_counter() - start < 6.0  # ~1.1 s on a 2-core CPU; the budget is 3 s


def test_the_touching_layout_packs_cells_against_each_other():
    from unet_jax.inference.instance_metrics import touching_pairs

    mixed, touching = make_cells(3, size=128, seed=1), make_cells(3, size=128, seed=1, layout="touching")
    pairs_per_cell = [sum(len(touching_pairs(i)) for i in s.instances) / sum(int(i.max()) for i in s.instances)
                      for s in (mixed, touching)]
    assert pairs_per_cell[1] > 1.3 * pairs_per_cell[0]
    assert touching.masks.mean() > mixed.masks.mean()
    again = make_cells(3, size=128, seed=1, layout="touching")
    assert again.images.tobytes() == touching.images.tobytes()
    with pytest.raises(ValueError, match="layout must be one of"):
        make_cells(1, layout="dense")
