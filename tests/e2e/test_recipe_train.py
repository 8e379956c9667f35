"""The paper's recipe in a training run: weighted-ce and elastic deformation train end to end and
leave the weight map picture and the object scores; class masks are refused, naming the kind of
mask weighted-ce needs, before anything is written; instance masks from a folder work."""

import json

import numpy as np
import pytest

from tests.helpers.cell_folders import write_cells_folder
from unet_jax.cli import main

TINY = ["--features", "4", "--depth", "2", "--tile-size", "60", "--batch-size", "2", "--eval-every", "2", "--log-every", "1",
        "--checkpoint-every", "2", "--no-progress"]
CELLS = ["--cells-train-images", "2", "--cells-val-images", "1", "--cells-image-size", "64", "--val-tiles-per-image", "1"]


def test_weighted_ce_on_class_masks_names_the_mask_it_needs_and_writes_nothing(tmp_path, capsys):
    data = write_cells_folder(tmp_path / "data", instance_masks=False)
    run = tmp_path / "run"
    assert main(["train", "--data", str(data), "--loss", "weighted-ce", "--run-dir", str(run), *TINY]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "--loss weighted-ce needs instance masks" in err
    assert "16-bit" in err and "c0.png" in err and "Fix:" in err
    assert not run.exists()
    # The same class masks still train with plain cross-entropy.
    assert main(["train", "--data", str(data), "--val-fraction", "0.34", "--steps", "1", "--run-dir", str(run), *TINY]) == 0
    summary = json.loads((run / "summary.json").read_text())
    assert "instances" not in summary["validation_whole_images"]
    assert "class indices" in summary["validation_whole_images"]["instances_absent"]


@pytest.mark.parametrize("extra", [["--loss", "weighted-ce"], ["--loss", "ce", "--target-gap"]])
def test_instance_masks_from_a_folder_train_with_the_gap(tmp_path, extra):
    data = write_cells_folder(tmp_path / "data", instance_masks=True)
    run = tmp_path / "run"
    assert main(["train", "--data", str(data), "--val-fraction", "0.34", "--steps", "1", "--run-dir", str(run), *extra, *TINY]) == 0
    assert (run / "weight_map.png").is_file() == ("weighted-ce" in extra)
    assert "instances" in json.loads((run / "summary.json").read_text())["validation_whole_images"]


def test_instance_masks_get_the_recipe_unless_a_loss_is_chosen(tmp_path, capsys):
    data = write_cells_folder(tmp_path / "data", instance_masks=True)
    common = ["--data", str(data), "--val-fraction", "0.34", "--steps", "1", *TINY]
    assert main(["train", *common, "--run-dir", str(tmp_path / "default")]) == 0
    out = capsys.readouterr().out
    [preset_line] = [line for line in out.splitlines() if line.startswith("preset 'demo'")]
    assert "loss weighted-ce (the paper's weight map: every training mask holds instance labels" in preset_line
    config = json.loads((tmp_path / "default" / "config.json").read_text())
    assert config["loss"] == "weighted-ce" and config["settled"]["loss_from_masks"] is True
    assert (tmp_path / "default" / "weight_map.png").is_file()
    assert "Object scores need" not in out.splitlines()[-1]
    grown = json.loads((tmp_path / "default" / "summary.json").read_text())["validation_whole_images"]["grown"]
    assert {"dice", "iou", "instances", "growth_distance"} <= set(grown) and "mean_matched_iou" in grown["instances"]

    assert main(["train", *common, "--loss", "ce", "--run-dir", str(tmp_path / "ce")]) == 0  # the user's --loss wins
    lines = capsys.readouterr().out.splitlines()
    assert any(line.startswith("preset 'demo'") and "loss ce," in line for line in lines)
    assert lines[-1].startswith("done:") and "Object scores need the paper's weight map" in lines[-1]
    assert "--loss weighted-ce" in lines[-1]


def test_class_masks_keep_cross_entropy(tmp_path, capsys):
    data = write_cells_folder(tmp_path / "data", instance_masks=False)
    assert main(["train", "--data", str(data), "--val-fraction", "0.34", "--steps", "1", "--run-dir", str(tmp_path / "run"),
                 *TINY]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert any(line.startswith("preset 'demo'") and "loss ce," in line for line in lines)
    assert "Object scores need" not in lines[-1]  # no object scores without instance labels


def test_the_instances_preset_is_the_demo_with_the_weight_map():
    """The README's `weighted` run is this preset: the demo's network and schedule, weighted-ce, touching cells."""
    import dataclasses

    from unet_jax.training.presets import PRESETS, resolve

    demo_with_recipe = resolve("demo", {"loss": "weighted-ce", "cells_layout": "touching"})
    assert dataclasses.replace(PRESETS["instances"], preset="demo") == demo_with_recipe


def test_the_train_step_scores_the_centre_of_input_sized_weights_and_masks():
    """Weights reach the loss, cropped like the masks: doubling them doubles the loss, and
    input-sized masks and weights (elastic deformation's) score the same centre as label-sized ones."""
    import jax.numpy as jnp

    from unet_jax.config import UNetConfig
    from unet_jax.model.unet import UNet
    from unet_jax.training.losses import make_loss
    from unet_jax.training.step import create_train_state, make_eval_step, make_optax_optimizer

    config = UNetConfig(features=4, depth=2)
    size, out = 60, config.output_size(60)
    margin = (size - out) // 2
    state = create_train_state(UNet(config), make_optax_optimizer("adam", 1e-3), 0, size)
    rng = np.random.default_rng(0)
    images = jnp.asarray(rng.normal(size=(2, size, size, 1)).astype(np.float32))
    masks = rng.integers(0, 2, (2, size, size)).astype(np.int32)
    weights = rng.uniform(0.5, 10, (2, size, size)).astype(np.float32)
    step = make_eval_step(make_loss("weighted-ce"))
    centre = (slice(None), slice(margin, margin + out), slice(margin, margin + out))
    full = float(step(state, images, jnp.asarray(masks), jnp.asarray(weights))["loss"])
    cropped = float(step(state, images, jnp.asarray(masks[centre]), jnp.asarray(weights[centre]))["loss"])
    doubled = float(step(state, images, jnp.asarray(masks[centre]), jnp.asarray(2 * weights[centre]))["loss"])
    assert full == pytest.approx(cropped, rel=1e-6) and doubled == pytest.approx(2 * cropped, rel=1e-6)
    plain = float(make_eval_step(make_loss("ce"))(state, images, jnp.asarray(masks[centre]))["loss"])
    assert not np.isclose(plain, cropped)  # the weights changed the loss


def test_weighted_ce_with_elastic_deformation_trains_reports_objects_and_resumes_exactly(tmp_path):
    """The run leaves the weight map picture and object scores; on resume the targets and weight
    maps are recomputed, not stored, and must come out the same: the losses match step for step."""
    args = ["--loss", "weighted-ce", "--elastic", "--cells-layout", "touching", *TINY, *CELLS]
    straight, resumed = tmp_path / "straight", tmp_path / "resumed"
    assert main(["train", "--steps", "4", "--run-dir", str(straight), *args]) == 0
    assert main(["train", "--steps", "2", "--run-dir", str(resumed), *args]) == 0
    assert main(["train", "--resume", str(resumed), "--steps", "4", "--no-progress"]) == 0

    def losses(run):
        return [(r["step"], r["split"], r["loss"]) for r in map(json.loads, (run / "metrics.jsonl").read_text().splitlines())]

    assert losses(resumed) == losses(straight)
    assert (straight / "weight_map.png").is_file()
    objects = json.loads((straight / "summary.json").read_text())["validation_whole_images"]["instances"]
    assert objects["touching_pairs"] > 0 and 0 <= objects["f1"] <= 1
    config = json.loads((straight / "config.json").read_text())
    assert (config["loss"], config["elastic"], config["cells_layout"]) == ("weighted-ce", True, "touching")
