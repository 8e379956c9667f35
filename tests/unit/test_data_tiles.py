"""Tile sampling: labels are the mask under the output window, inputs the mirrored context around it."""

import threading

import numpy as np
import pytest

from unet_jax.config import UNetConfig
from unet_jax.data import mirror_crop, mirror_pad, sample_tiles, tiles
from unet_jax.data.tiles import TileRequest

CONFIG = UNetConfig(features=8, depth=2)
INPUT = CONFIG.nearest_valid_input_sizes(60)[1]
OUTPUT = CONFIG.output_size(INPUT)
MARGIN = (INPUT - OUTPUT) // 2


def _coordinate_image(h, w):
    """An image whose two channels hold each pixel's row and column, and a mask of unique ids."""
    rows, cols = np.meshgrid(np.arange(h), np.arange(w), indexing="ij")
    image = np.stack([rows, cols], axis=-1).astype(np.float32)  # [H, W, 2]
    return image, (rows * w + cols).astype(np.int32)  # [H, W]


def test_config_sizes_are_what_the_tests_assume():
    assert (INPUT, OUTPUT, MARGIN) == (60, 20, 20)


@pytest.mark.parametrize("shape", [(5,), (5, 7), (5, 7, 3), (1, 4)])
@pytest.mark.parametrize("pads", [(0, 0, 0, 0), (2, 3, 1, 4), (9, 12, 17, 6)])
def test_mirror_pad_equals_numpy_reflect_even_past_one_reflection(shape, pads):
    array = np.arange(np.prod(shape) * 6).reshape(shape[:1] + (6,) + shape[1:])  # [H, W, ...]
    top, bottom, left, right = pads
    widths = [(top, bottom), (left, right)] + [(0, 0)] * (array.ndim - 2)
    np.testing.assert_array_equal(mirror_pad(array, *pads), np.pad(array, widths, mode="reflect"))


def test_mirror_crop_inside_is_a_plain_crop():
    image, _ = _coordinate_image(30, 40)
    np.testing.assert_array_equal(mirror_crop(image, 3, 5, 10, 20), image[3:13, 5:25])


def test_labels_are_the_mask_window_and_inputs_its_mirrored_context():
    h, w = 70, 90
    image, mask = _coordinate_image(h, w)
    padded = np.pad(image, [(MARGIN, MARGIN), (MARGIN, MARGIN), (0, 0)], mode="reflect")
    x, y = sample_tiles([image], [mask], np.random.default_rng(0), TileRequest(200, INPUT, OUTPUT))
    assert x.shape == (200, INPUT, INPUT, 2) and x.dtype == np.float32
    assert y.shape == (200, OUTPUT, OUTPUT) and y.dtype == np.int32
    tops = []
    for xb, yb in zip(x, y):
        top, left = divmod(int(yb[0, 0]), w)
        tops.append(top)
        assert 0 <= top <= h - OUTPUT and 0 <= left <= w - OUTPUT
        np.testing.assert_array_equal(yb, mask[top : top + OUTPUT, left : left + OUTPUT])
        np.testing.assert_array_equal(xb[MARGIN:-MARGIN, MARGIN:-MARGIN], image[top : top + OUTPUT, left : left + OUTPUT])
        np.testing.assert_array_equal(xb, padded[top : top + INPUT, left : left + INPUT])
    assert min(tops) <= 3 and max(tops) >= h - OUTPUT - 3  # windows reach the borders, so mirroring was exercised


def test_images_smaller_than_the_output_tile_are_mirrored_mask_and_all():
    image, mask = _coordinate_image(12, 15)
    x, y = sample_tiles([image], [mask], np.random.default_rng(1), TileRequest(20, INPUT, OUTPUT))
    assert x.shape == (20, INPUT, INPUT, 2) and y.shape == (20, OUTPUT, OUTPUT)
    for xb, yb in zip(x, y):
        # The window covers the whole image: locate it by where pixel (0, 0) first appears.
        top, left = (-int(np.argmax(xb[MARGIN:-MARGIN, MARGIN, 0] == 0)), -int(np.argmax(xb[MARGIN, MARGIN:-MARGIN, 1] == 0)))
        np.testing.assert_array_equal(yb, mirror_crop(mask, top, left, OUTPUT, OUTPUT))
        np.testing.assert_array_equal(xb, mirror_crop(image, top - MARGIN, left - MARGIN, INPUT, INPUT))
        assert set(np.unique(yb)) == set(np.unique(mask))  # every pixel is in the window


def test_images_of_different_sizes_and_determinism():
    images, masks = zip(*(_coordinate_image(h, w) for h, w in [(30, 80), (64, 64), (100, 25)]))
    first = sample_tiles(list(images), list(masks), np.random.default_rng(7), TileRequest(16, INPUT, OUTPUT))
    again = sample_tiles(list(images), list(masks), np.random.default_rng(7), TileRequest(16, INPUT, OUTPUT))
    other = sample_tiles(list(images), list(masks), np.random.default_rng(8), TileRequest(16, INPUT, OUTPUT))
    for a, b in zip(first, again):
        np.testing.assert_array_equal(a, b)
    assert not np.array_equal(first[1], other[1])


def test_stacked_arrays_work_like_lists():
    image, mask = _coordinate_image(40, 40)
    x, y = sample_tiles(image[None], mask[None], np.random.default_rng(0), TileRequest(3, INPUT, OUTPUT))
    assert x.shape == (3, INPUT, INPUT, 2) and y.shape == (3, OUTPUT, OUTPUT)


def test_sizes_that_no_unet_produces_are_refused():
    image, mask = _coordinate_image(40, 40)
    with pytest.raises(ValueError, match="even"):
        sample_tiles([image], [mask], np.random.default_rng(0), TileRequest(1, 61, 20))
    with pytest.raises(ValueError):
        sample_tiles([image], [mask[:30]], np.random.default_rng(0), TileRequest(1, INPUT, OUTPUT))


def test_weights_and_input_sized_labels_are_cut_from_the_same_windows():
    rng = np.random.default_rng(0)
    image = rng.uniform(0, 1, (50, 60, 1)).astype(np.float32)
    mask = rng.integers(0, 2, (50, 60)).astype(np.int32)
    weights = rng.uniform(0, 5, (50, 60)).astype(np.float32)
    x, y = sample_tiles([image], [mask], np.random.default_rng(4), TileRequest(6, INPUT, OUTPUT))
    x2, y2, w2 = sample_tiles([image], [mask], np.random.default_rng(4), TileRequest(6, INPUT, OUTPUT), [weights])
    x3, y3, w3 = sample_tiles([image], [mask], np.random.default_rng(4), TileRequest(6, INPUT, OUTPUT, label_size=INPUT), [weights])
    np.testing.assert_array_equal(x, x2)
    np.testing.assert_array_equal(x, x3)
    np.testing.assert_array_equal(y, y2)
    assert y3.shape == (6, INPUT, INPUT) and w3.shape == (6, INPUT, INPUT) and w3.dtype == np.float32
    margin = (INPUT - OUTPUT) // 2
    np.testing.assert_array_equal(y3[:, margin:-margin, margin:-margin], y)  # concentric: the window is its centre
    np.testing.assert_array_equal(w3[:, margin:-margin, margin:-margin], w2)
    # Weights sit where the mask sits: cutting the image's own pixel positions finds them.
    positions = np.arange(50 * 60, dtype=np.float32).reshape(50, 60)
    request = TileRequest(6, INPUT, OUTPUT, label_size=INPUT)
    _, ids, cut = sample_tiles([image], [positions.astype(np.int32)], np.random.default_rng(4), request, [positions])
    np.testing.assert_array_equal(cut, ids.astype(np.float32))
    np.testing.assert_array_equal(x3[..., 0], image[..., 0].ravel()[ids])  # the image under the labels, mirror and all


def test_threads_cut_the_same_batch_and_report_a_bad_sample(monkeypatch):
    monkeypatch.setattr(tiles, "_THREADED_TILE_PIXELS", 0)  # these tiles are small: thread them anyway
    cut_on = set()
    real_crop = tiles.mirror_crop
    monkeypatch.setattr(tiles, "mirror_crop", lambda *a: cut_on.add(threading.current_thread().name) or real_crop(*a))
    rng = np.random.default_rng(1)
    images = [rng.uniform(0, 1, (h, w, 2)).astype(np.float32) for h, w in ((50, 60), (30, 80), (20, 20))]
    masks = [rng.integers(0, 3, im.shape[:2]).astype(np.int32) for im in images]
    weights = [rng.uniform(0, 5, im.shape[:2]).astype(np.float32) for im in images]
    one = sample_tiles(images, masks, np.random.default_rng(7), TileRequest(9, INPUT, OUTPUT, rows=range(2, 8)), weights)
    four = sample_tiles(images, masks, np.random.default_rng(7), TileRequest(9, INPUT, OUTPUT, rows=range(2, 8), threads=4), weights)
    for a, b in zip(one, four, strict=True):
        np.testing.assert_array_equal(a, b)
    assert threading.current_thread().name in cut_on and any(n.startswith("unet-jax-tiles") for n in cut_on)
    with pytest.raises(ValueError, match="don't match"):  # checked while drawing, before any thread runs
        sample_tiles(images, [masks[0], masks[1], masks[2][:5]], np.random.default_rng(0), TileRequest(40, INPUT, OUTPUT, threads=4))
