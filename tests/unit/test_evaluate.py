"""Whole-image evaluation: perfect where the masks are the model's own predictions, hand-checked Dice
on a model that predicts one class everywhere, and weights for another network refused loudly."""

import json

import jax
import numpy as np
import pytest
from PIL import Image

from tests.helpers.random_weights import random_variables
from unet_jax.config import UNetConfig
from unet_jax.data import Samples, load_folder
from unet_jax.inference.evaluate import evaluate, evaluate_samples
from unet_jax.inference.instance_defaults import DEFAULT_EXTENT_THRESHOLD, DEFAULT_GROWTH_DISTANCE, DEFAULT_MIN_SIZE
from unet_jax.inference.instances import InstanceRule
from unet_jax.inference.predictor import Predictor, predict_probabilities
from unet_jax.weights.io import save_flax_weights
from unet_jax.weights.port import PortError

CONFIG = UNetConfig(features=4, depth=2)  # valid sizes 4k >= 44, output = input - 40
TILE = 60  # output 20: several tiles per test image


def _write_pair(root, stem, image, mask):
    for sub, array in (("images", image), ("masks", mask)):
        (root / sub).mkdir(parents=True, exist_ok=True)
        Image.fromarray(array).save(root / sub / f"{stem}.png")


@pytest.mark.slow
def test_masks_made_by_the_model_score_perfectly(tmp_path):
    rng = np.random.default_rng(0)
    images = {"a": rng.integers(0, 256, (30, 41), dtype=np.uint8), "b": rng.integers(0, 256, (25, 25), dtype=np.uint8)}
    normalization = {"mean": [0.5], "std": [0.3]}
    variables = random_variables(CONFIG)
    # Shift the head's class-1 bias so that about half of the pixels are class 1: a model that
    # predicts one class everywhere would score 1 on any mask of that class alone.
    probe = Predictor(CONFIG, variables)
    p1 = np.sort(predict_probabilities(probe, (images["a"][..., None] / 255 - 0.5) / 0.3, TILE)[..., 1], axis=None)
    median = float(p1[p1.size // 2 - 1 : p1.size // 2 + 1].mean())  # between two pixels, so none sits on 0.5
    variables["params"]["head"]["bias"] = variables["params"]["head"]["bias"] - np.array(
        [0.0, np.log(median / (1 - median))], np.float32
    )
    run = tmp_path / "run"
    save_flax_weights(variables, CONFIG, run / "weights.safetensors")
    (run / "normalization.json").write_text(json.dumps(normalization))

    predictor = Predictor.from_weights(run)
    data = tmp_path / "data"
    for stem, image in images.items():
        _write_pair(data, stem, image, np.zeros_like(image))  # placeholder masks, replaced below
    for stem, image in zip("ab", load_folder(data, 1, 2).images):
        probs = predict_probabilities(predictor, predictor.normalize(image), TILE)  # [H, W, 2]
        assert np.abs(probs[..., 1] - 0.5).min() > 1e-5  # no argmax that float rounding could flip
        labels = probs.argmax(-1)
        assert 0 < labels.mean() < 1  # both classes occur
        mask = (labels * (255 if stem == "b" else 1)).astype(np.uint8)  # class indices and 0/255 both read
        Image.fromarray(mask).save(data / "masks" / f"{stem}.png")

    for tile_size in (TILE, None):  # None: the default tile size, one tile per image here
        scores = evaluate(run, data, tile_size=tile_size, batch_size=3)
        assert scores["num_images"] == 2
        assert scores["dice"] == scores["iou"] == scores["pixel_accuracy"] == 1.0
        assert scores["dice_per_class"] == scores["iou_per_class"] == [1.0, 1.0]


@pytest.mark.slow
def test_hand_computed_dice_for_a_model_that_predicts_foreground_everywhere(tmp_path):
    # All weights zero and head bias (0, 1): logits (0, 1) at every pixel, so class 1 everywhere.
    variables = jax.tree.map(np.zeros_like, random_variables(CONFIG))
    variables["params"]["head"]["bias"] = np.array([0.0, 1.0], np.float32)
    save_flax_weights(variables, CONFIG, tmp_path / "constant.safetensors")
    mask_a = np.zeros((10, 10), np.uint8)
    mask_a[:3] = 1  # 30 foreground pixels
    _write_pair(tmp_path / "data", "a", np.zeros((10, 10), np.uint8), mask_a)
    _write_pair(tmp_path / "data", "b", np.zeros((6, 5), np.uint8), np.zeros((6, 5), np.uint8))

    scores = evaluate(tmp_path / "constant.safetensors", tmp_path / "data", tile_size=TILE)
    # 130 pixels, 30 of them foreground, all predicted foreground:
    #   class 1: tp 30, predicted 130, actual 30 -> Dice 60/160, IoU 30/130
    #   class 0: tp 0, predicted 0, actual 100   -> Dice 0, IoU 0
    assert scores["num_images"] == 2
    assert scores["dice"] == pytest.approx(60 / 160)
    assert scores["iou"] == pytest.approx(30 / 130)
    assert scores["pixel_accuracy"] == pytest.approx(30 / 130)
    assert scores["dice_per_class"] == pytest.approx([0.0, 60 / 160])
    assert scores["iou_per_class"] == pytest.approx([0.0, 30 / 130])


def test_weights_of_another_network_list_every_mismatch(tmp_path):
    torch = pytest.importorskip("torch")
    from unet_torch import UNet as TorchUNet

    torch.save(TorchUNet(features=4, depth=2).state_dict(), tmp_path / "small.pt")
    _write_pair(tmp_path / "data", "a", np.zeros((8, 8), np.uint8), np.zeros((8, 8), np.uint8))
    with pytest.raises(PortError) as error:
        evaluate(tmp_path / "small.pt", tmp_path / "data", config=UNetConfig(features=8, depth=3))
    message = str(error.value)
    assert "wrong shape: down1.conv1.weight is (4, 1, 3, 3), expected (8, 1, 3, 3)" in message
    assert "missing: down3.conv1.weight" in message
    assert message.count("\n") > 10  # every mismatch, not the first one


def test_instance_scores_with_instance_masks_and_the_reason_without(tmp_path):
    # The constant model again: the whole image is one predicted object.
    variables = jax.tree.map(np.zeros_like, random_variables(CONFIG))
    variables["params"]["head"]["bias"] = np.array([0.0, 1.0], np.float32)
    save_flax_weights(variables, CONFIG, tmp_path / "constant.safetensors")
    instances = np.zeros((10, 10), np.uint16)  # 16-bit: read as instance labels
    instances[:6] = 1  # 60 of 100 pixels: IoU 0.6 with the one predicted object, a match
    instances[6:8, :4] = 2  # 8 pixels touching object 1: not matched
    _write_pair(tmp_path / "objects", "a", np.zeros((10, 10), np.uint8), instances)
    scores = evaluate(tmp_path / "constant.safetensors", tmp_path / "objects", tile_size=TILE)
    objects = scores["instances"]
    assert (objects["true_positives"], objects["false_positives"], objects["false_negatives"]) == (1, 0, 1)
    assert (objects["touching_pairs"], objects["split_pairs"]) == (1, 0)
    assert objects["f1"] == pytest.approx(2 / 3) and "instances_absent" not in scores
    assert scores["dice"] == pytest.approx(2 * 68 / 168)  # the pixel scores stay

    _write_pair(tmp_path / "classes", "b", np.zeros((10, 10), np.uint8), (instances > 0).astype(np.uint8))
    scores = evaluate(tmp_path / "constant.safetensors", tmp_path / "classes", tile_size=TILE)
    assert "instances" not in scores
    assert "hold class indices, not instance labels" in scores["instances_absent"]
    assert f"(first: the mask of {tmp_path / 'classes' / 'images' / 'b.png'})" in scores["instances_absent"]  # not the image


def test_the_grown_instances_are_scored_beside_the_raw_foreground(monkeypatch):
    # Two touching 6x6 cells; the "network" draws a 2-pixel gap between them, trimming each by a column.
    instances = np.zeros((10, 16), np.int32)
    instances[2:8, 2:8], instances[2:8, 8:14] = 1, 2
    foreground = instances > 0
    foreground[:, 7:9] = False
    probabilities = np.stack([~foreground, foreground], axis=-1).astype(np.float32)  # [H, W, 2]
    monkeypatch.setattr("unet_jax.inference.evaluate.predict_probabilities", lambda *args: probabilities)
    samples = Samples(images=[np.zeros((10, 16, 1), np.float32)], masks=[(instances > 0).astype(np.int32)],
                      instances=[instances], names=("hand-made",))
    predictor = Predictor(CONFIG, random_variables(CONFIG))
    scores = evaluate_samples(predictor, samples, instances=InstanceRule(growth_distance=1.0, extent_threshold=0))
    assert scores["iou"] == pytest.approx(60 / 72)  # raw: 60 of the 72 cell pixels, nothing else
    assert scores["instances"]["f1"] == 1.0 and scores["instances"]["mean_matched_iou"] == pytest.approx(30 / 36)
    grown = scores["grown"]
    assert (grown["growth_distance"], grown["min_object_size"], grown["extent_threshold"]) == (1.0, DEFAULT_MIN_SIZE, 0)
    # Grown by one pixel (4-neighbours; diagonals are sqrt 2 away): the gap is filled, a column to each cell, and
    # each cell spills a row of 5 above and below it and a column of 6 at its far end.
    spill = 2 * (5 + 5 + 6)
    assert grown["iou"] == pytest.approx(72 / (72 + spill))
    assert grown["instances"]["f1"] == 1.0 and grown["instances"]["split_pairs"] == 1
    assert grown["instances"]["mean_matched_iou"] == pytest.approx(36 / (36 + spill / 2))
    # Where the network left the gap a little foreground probability, and none outside, growth fills the gap only.
    probabilities[2:8, 7:9] = [0.8, 0.2]
    fitted = evaluate_samples(predictor, samples, instances=InstanceRule(growth_distance=1.0, extent_threshold=0.1))["grown"]
    assert fitted["iou"] == 1.0 and fitted["instances"]["mean_matched_iou"] == 1.0
    default = evaluate_samples(predictor, samples)["grown"]
    assert (default["growth_distance"], default["min_object_size"], default["extent_threshold"]) == (
        DEFAULT_GROWTH_DISTANCE, DEFAULT_MIN_SIZE, DEFAULT_EXTENT_THRESHOLD)
