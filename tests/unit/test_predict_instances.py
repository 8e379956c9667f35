"""`predict_files(instances=...)`: label images that a tiled prediction and a whole-image pass agree on,
one page per page of a stack, and a model of more than 2 classes refused before anything is written."""

import numpy as np
import pytest
import tifffile
from PIL import Image

from tests.helpers.random_weights import random_variables
from unet_jax.config import ConfigError, UNetConfig
from unet_jax.inference.instances import InstanceRule
from unet_jax.inference.predictor import Predictor, predict_files, predict_probabilities
from unet_jax.inference.tile_plan import tile_geometry

CONFIG = UNetConfig(features=4, depth=2)  # valid sizes 4k >= 44, output = input - 40
TILE = 60  # 20 output pixels per tile: many seams across a 90 x 130 image
RULE = InstanceRule()  # the defaults


@pytest.fixture(scope="module")
def predictor():
    return Predictor(CONFIG, random_variables(CONFIG, seed=3))


def _smooth_image(height, width, seed=0):
    """Blobs larger than a tile, so that objects cross the seams: smoothed noise, 8-bit."""
    from scipy import ndimage

    noise = ndimage.gaussian_filter(np.random.default_rng(seed).normal(size=(height, width)), 6)
    return (255 * (noise - noise.min()) / np.ptp(noise)).astype(np.uint8)


def test_tiled_labels_equal_the_whole_image_labels_and_ids_are_dense(tmp_path, predictor):
    Image.fromarray(_smooth_image(90, 130)).save(tmp_path / "a.png")
    [tiled] = predict_files(predictor, [tmp_path / "a.png"], tmp_path / "tiled", tile_size=TILE, instances=RULE,
                            save_probabilities=True)
    [whole] = predict_files(predictor, [tmp_path / "a.png"], tmp_path / "whole", tile_size=100000, instances=RULE)  # one tile
    labels = tifffile.imread(tiled["instances"])
    assert tiled["instances"].name == "a_instances.tif" and labels.dtype == np.uint16 and labels.shape == (90, 130)
    np.testing.assert_array_equal(labels, tifffile.imread(whole["instances"]))
    ids = np.unique(labels[labels > 0])
    assert tiled["objects"] == len(ids) >= 2 and (ids == np.arange(1, len(ids) + 1)).all()
    # The labels are the rule applied to the written class mask and probabilities.
    probability = np.load(tiled["probabilities"])[..., 1]
    np.testing.assert_array_equal(labels, RULE.labels(np.array(Image.open(tiled["mask"])) > 0, probability))
    # The claim is tested where it can fail: some object spans several output tiles.
    stride = tile_geometry(CONFIG, TILE).stride
    rows, cols = np.indices(labels.shape) // stride
    tile_of = rows * 100 + cols
    assert any(len(np.unique(tile_of[labels == i])) > 1 for i in ids)


def test_a_stack_gets_one_label_page_per_page(tmp_path, predictor):
    stack = np.stack([_smooth_image(40, 50, seed) for seed in range(3)])
    tifffile.imwrite(tmp_path / "stack.tif", stack, photometric="minisblack")
    [record] = predict_files(predictor, [tmp_path / "stack.tif"], tmp_path / "out", tile_size=TILE, instances=RULE)
    labels = tifffile.imread(record["instances"])
    assert labels.shape == (3, 40, 50) and labels.dtype == np.uint16
    for page in range(3):
        expected = predict_probabilities(predictor, stack[page, :, :, None] / np.float32(255), tile_size=TILE)
        np.testing.assert_array_equal(labels[page], RULE.labels(expected.argmax(-1) > 0, expected[..., 1]))
    assert record["objects"] == [int(page.max()) for page in labels]


def test_instances_and_probabilities_are_written_together(tmp_path, predictor):
    Image.fromarray(_smooth_image(30, 30)).save(tmp_path / "a.png")
    [record] = predict_files(predictor, [tmp_path / "a.png"], tmp_path / "out", save_probabilities=True, instances=RULE)
    probs, labels = np.load(record["probabilities"]), tifffile.imread(record["instances"])
    np.testing.assert_array_equal(labels, RULE.labels(probs.argmax(-1) > 0, probs[..., 1]))


def test_more_than_two_classes_are_refused_before_anything_is_written(tmp_path):
    config = UNetConfig(features=4, depth=2, num_classes=3)
    Image.fromarray(_smooth_image(30, 30)).save(tmp_path / "a.png")
    with pytest.raises(ConfigError, match="2-class .* num_classes=3. Fix: predict without --instances"):
        predict_files(Predictor(config, random_variables(config)), [tmp_path / "a.png"], tmp_path / "out", instances=RULE)
    assert not (tmp_path / "out").exists()
