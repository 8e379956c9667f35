"""`unet-jax predict --instances` and `unet-jax evaluate` on the command line: the label image beside
the mask, both scores printed, and the bad inputs refused with exit status 2 and the fix."""

import json

import numpy as np
import tifffile
from PIL import Image

from tests.helpers.cell_folders import write_cells_folder
from tests.helpers.random_weights import random_variables
from unet_jax.cli import main
from unet_jax.config import UNetConfig
from unet_jax.inference.instances import InstanceRule
from unet_jax.weights.io import save_flax_weights


def _weights(tmp_path, num_classes=2):
    config = UNetConfig(features=4, depth=2, num_classes=num_classes)
    path = tmp_path / f"{num_classes}-classes.safetensors"
    save_flax_weights(random_variables(config), config, path)
    return path


def test_predict_instances_writes_the_label_image_and_says_so(tmp_path, capsys):
    data = write_cells_folder(tmp_path / "data", instance_masks=True, count=1)
    image = data / "images" / "c0.png"
    args = ["predict", "--weights", str(_weights(tmp_path)), str(image), "--output", str(tmp_path / "out"), "--instances",
            "--growth-distance", "3", "--min-object-size", "4", "--extent-threshold", "0.1", "--probabilities"]
    assert main(args) == 0
    out = tmp_path / "out"
    assert capsys.readouterr().out.strip() == (f"{image}: 64x64 -> {out / 'c0_mask.png'}, {out / 'c0_probs.npy'}, "
                                               f"{out / 'c0_instances.tif'}")
    labels = tifffile.imread(out / "c0_instances.tif")
    mask, probability = np.array(Image.open(out / "c0_mask.png")), np.load(out / "c0_probs.npy")[..., 1]
    np.testing.assert_array_equal(labels, InstanceRule(3, 4, 0.1).labels(mask > 0, probability))
    assert main([*args, "--json", "--overwrite"]) == 0
    record = json.loads(capsys.readouterr().out)
    assert record["instances"] == str(out / "c0_instances.tif") and record["objects"] == int(labels.max())


def test_predict_instances_refuses_bad_input_with_the_fix(tmp_path, capsys):
    image = write_cells_folder(tmp_path / "data", instance_masks=True, count=1) / "images" / "c0.png"
    common = [str(image), "--output", str(tmp_path / "out"), "--instances"]
    assert main(["predict", "--weights", str(_weights(tmp_path, num_classes=3)), *common]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "num_classes=3" in err and "Fix: predict without --instances" in err
    assert main(["predict", "--weights", str(_weights(tmp_path)), *common, "--growth-distance", "-1"]) == 2
    assert "--growth-distance" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()


def test_evaluate_prints_the_raw_and_the_grown_scores(tmp_path, capsys):
    data = write_cells_folder(tmp_path / "data", instance_masks=True, count=2)
    assert main(["evaluate", "--weights", str(_weights(tmp_path)), "--data", str(data), "--growth-distance", "1.5"]) == 0
    result = json.loads(capsys.readouterr().out)
    assert {"dice", "iou", "instances", "grown"} <= set(result) and result["grown"]["growth_distance"] == 1.5
    for scores in (result["instances"], result["grown"]["instances"]):
        assert {"precision", "recall", "f1", "mean_matched_iou"} <= set(scores)
