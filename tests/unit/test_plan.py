"""The run plan: every choice settled once, before any work, recorded in config.json; a resume
reads config.json of either form; `due` decides the loop's periodic actions."""

from __future__ import annotations

import json

import numpy as np
import pytest
from PIL import Image

from tests.helpers.cell_folders import write_cells_folder
from unet_jax.cli import main
from unet_jax.config import ConfigError, UNetConfig
from unet_jax.data import make_cells
from unet_jax.model.compute import Compute
from unet_jax.model.unet import UNet
from unet_jax.runtime.mesh import DataParallel
from unet_jax.training import loop
from unet_jax.training import resume as resume_module
from unet_jax.training.loop import due, nest
from unet_jax.training.plan import plan_from_options, plan_new_run, plan_resumed_run, small_images, unused_options
from unet_jax.training.presets import resolve
from unet_jax.training.run_dir import RunDir
from unet_jax.training.step import create_train_state, make_optax_optimizer
from unet_jax.weights import start_from
from unet_jax.weights.io import save_flax_weights
from unet_jax.weights.port import torch_to_flax

TINY = {"features": 4, "depth": 2, "tile_size": 60, "batch_size": 2, "cells_train_images": 4, "cells_val_images": 2,
        "cells_image_size": 64, "val_tiles_per_image": 1, "steps": 2}


def test_due_on_every_multiple_and_on_the_last_step():
    assert [s for s in range(1, 26) if due(s, 10, 25)] == [10, 20, 25]
    assert [s for s in range(1, 21) if due(s, 10, 20)] == [10, 20]
    assert [s for s in range(1, 4) if due(s, 100, 3)] == [3]


def test_a_plan_settles_shards_and_batch_groups_and_config_json_records_them(tmp_path):
    plan = plan_new_run(resolve("demo", TINY), parallel=DataParallel.create(1))
    assert plan.train.data_shards == 1 and plan.batch_groups == 1 and plan.compute == Compute()
    assert len(plan.sources[0]) == 4 and len(plan.sources[1]) == 2  # listed once, here
    run = RunDir(tmp_path)
    run.save_config(plan.train, plan.compute, plan.settled())
    stored = json.loads((tmp_path / "config.json").read_text())
    assert stored["compute"] == {"remat": "none", "pin_relu_output": False, "batch_groups": 0}
    assert stored["settled"] == {"batch_groups": 1, "devices": 1, "fsdp": False, "processes": 1, "loss_from_masks": False}
    assert run.load_config() == (plan.train, plan.compute)


@pytest.mark.parametrize("preset, given, masks, loss, from_masks", [
    ("demo", {}, "instances", "weighted-ce", True),  # nobody chose: the paper's recipe
    ("demo", {"loss": "ce"}, "instances", "ce", False),  # the user's --loss wins
    ("demo", {"loss": "dice"}, "instances", "dice", False),
    ("demo", {}, "classes", "ce", False),  # class masks: no weight map possible
    ("paper", {}, "instances", "weighted-ce", True),
])
def test_instance_masks_get_the_papers_loss_when_nobody_chose_one(tmp_path, preset, given, masks, loss, from_masks):
    data = write_cells_folder(tmp_path / "data", instance_masks=masks == "instances", size=48)
    tiny = {k: v for k, v in TINY.items() if not k.startswith("cells_")}
    options = nest({**tiny, "data": str(data), "val_fraction": 0.34, **given})
    plan = plan_from_options(preset, options, DataParallel.create(1))
    assert (plan.train.loss, plan.loss_from_masks, plan.settled()["loss_from_masks"]) == (loss, from_masks, from_masks)
    assert ("every training mask holds instance labels" in plan.loss_note()) == from_masks


def test_the_built_in_cells_keep_the_presets_loss():
    assert plan_from_options("demo", nest(TINY), DataParallel.create(1)).train.loss == "ce"  # `--preset instances` is theirs


def test_a_config_json_from_before_the_plan_is_read_with_its_compute_options(tmp_path):
    cfg = resolve("demo", TINY)
    old = {**cfg.to_dict(), "remat": "blocks", "batch_groups": 0}  # remat and batch_groups among TrainConfig's fields
    (tmp_path / "config.json").write_text(json.dumps(old))
    assert RunDir(tmp_path).load_config() == (cfg, Compute(remat="blocks"))


def test_a_resume_may_change_batch_groups_but_not_remat(tmp_path):
    cfg = resolve("demo", TINY)
    RunDir(tmp_path).save_config(cfg, Compute(remat="blocks"))
    plan = plan_resumed_run(tmp_path, nest({"batch_groups": 2, "steps": 4}), DataParallel.create(1))
    assert plan.changes == {"steps": (2, 4), "batch_groups": (0, 2)} and plan.batch_groups == 2
    with pytest.raises(ConfigError, match="--remat"):
        plan_resumed_run(tmp_path, nest({"remat": "none"}), DataParallel.create(1))


def test_batch_groups_with_batchnorm_are_refused_when_planned():
    with pytest.raises(ConfigError, match="--batch-groups 2 with BatchNorm"):
        plan_new_run(resolve("demo", {**TINY, "norm": "batch"}), Compute(batch_groups=2), DataParallel.create(1))


@pytest.mark.slow
def test_the_init_weights_file_is_read_once_and_gives_the_architecture(tmp_path, make_state_dict, monkeypatch):
    model = UNetConfig(features=4, depth=2)
    save_flax_weights(torch_to_flax(make_state_dict(model), model), model, tmp_path / "w.safetensors")
    reads = []
    read = start_from.read_weights_file
    monkeypatch.setattr(start_from, "read_weights_file", lambda path: reads.append(path) or read(path))
    options = {"model": {}, "training": {k: v for k, v in TINY.items() if k not in ("features", "depth")}}
    options["training"]["init_weights"] = str(tmp_path / "w.safetensors")
    plan = plan_from_options("demo", options, DataParallel.create(1))
    assert plan.train.model == model and len(reads) == 1  # the preset's 16 features gave way to the file's 4
    def read_again(path):
        raise AssertionError(f"{path} read again")

    monkeypatch.setattr(resume_module, "read_weights_file", read_again)  # starting the run must not read it again
    template = create_train_state(UNet(model), make_optax_optimizer(), 0, plan.train.tile_size)
    state = resume_module.fresh_state(plan.parallel.place_state(template), plan, log=lambda _: None)
    assert state.params is not template.params and len(reads) == 1


def write_folder(root, seed):
    """A data folder as a user has one: 8-bit PNG images and 0/255 masks of the synthetic cells."""
    for sub in ("images", "masks"):
        (root / sub).mkdir(parents=True)
    cells = make_cells(4, size=64, seed=seed)
    for i, (image, mask) in enumerate(zip(cells.images, cells.masks)):
        Image.fromarray((image[..., 0] * 255).astype(np.uint8)).save(root / "images" / f"cell{i}.png")
        Image.fromarray((mask * 255).astype(np.uint8)).save(root / "masks" / f"cell{i}.png")
    return root


def test_a_resume_from_another_folder_reads_the_data_the_run_started_with(tmp_path, monkeypatch):
    good = write_folder(tmp_path / "A" / "d" / "good", seed=1)
    write_folder(tmp_path / "B" / "d" / "good", seed=2)  # other images under the same relative path
    on_data = {k: v for k, v in TINY.items() if not k.startswith("cells_")}
    monkeypatch.chdir(tmp_path / "A")
    plan = plan_from_options("demo", {"model": {}, "training": {**on_data, "data": "d/good"}}, DataParallel.create(1))
    assert plan.train.data == str(good.resolve())
    run = RunDir(tmp_path / "A" / "runs" / "x")
    run.save_config(plan.train, plan.compute, plan.settled())
    assert json.loads(run.file(RunDir.CONFIG).read_text())["data"] == str(good.resolve())

    monkeypatch.chdir(tmp_path / "B")
    resumed = plan_resumed_run(run.path, nest({"steps": 4}), DataParallel.create(1))
    assert resumed.train.data == str(good.resolve()) and resumed.changes == {"steps": (2, 4)}
    assert all(name.startswith(str(good.resolve())) for name in resumed.sources[0].names + resumed.sources[1].names)
    with pytest.raises(ConfigError, match="--data"):  # here d/good is the other folder: a change, refused
        plan_resumed_run(run.path, nest({"data": "d/good"}), DataParallel.create(1))

    monkeypatch.chdir(tmp_path / "A")  # the same folder, given relative and then absolute, is no change
    for given in ("d/good", str(good), "d/../d/good"):
        assert plan_resumed_run(run.path, nest({"data": given}), DataParallel.create(1)).changes == {}


def test_a_relative_data_path_in_an_old_config_is_read_where_the_run_started_or_refused(tmp_path, monkeypatch):
    good = write_folder(tmp_path / "A" / "d" / "good", seed=1)
    cfg = resolve("demo", {**{k: v for k, v in TINY.items() if not k.startswith("cells_")}, "data": "d/good"})
    config = tmp_path / "run" / "config.json"
    config.parent.mkdir()
    monkeypatch.chdir(tmp_path)
    config.write_text(json.dumps({**cfg.to_dict(), "cwd": str(tmp_path / "A")}))
    assert plan_resumed_run(config.parent, parallel=DataParallel.create(1)).train.data == str(good.resolve())
    config.write_text(json.dumps(cfg.to_dict()))  # written before the folder a run starts in was recorded
    with pytest.raises(ConfigError, match=r"records --data as the relative path 'd/good'.*Fix: write the absolute path"):
        plan_resumed_run(config.parent, parallel=DataParallel.create(1))


def test_options_the_run_will_not_use_are_noted(tmp_path, monkeypatch, capsys):
    data = str(write_folder(tmp_path / "d", seed=1))
    adam = resolve("demo", {**TINY, "data": data, "val_data": data})
    given = {"momentum": 0.9, "elastic_sigma": 5.0, "cells_image_size": 64, "val_fraction": 0.3, "data": data, "val_data": data}
    assert unused_options(given, adam) == [
        "--momentum is used by --optimizer sgd only; this run uses adam", "--elastic-sigma has no effect without --elastic",
        "--cells-image-size: options of the built-in cells, unused with --data", "--val-fraction is unused with --val-data",
        "--val-data is --data: the validation scores will measure the training images, not held-out ones"]
    sgd = resolve("demo", {**TINY, "optimizer": "sgd", "elastic": True})
    assert unused_options({"momentum": 0.9, "elastic_sigma": 5.0, "cells_image_size": 64}, sgd) == []
    weight_map = {"weight_w0": 20.0, "weight_sigma": 3.0, "target_gap_width": 2}
    assert unused_options(weight_map, resolve("demo", TINY)) == [
        "--weight-sigma, --weight-w0: options of the separation weight map, unused without --loss weighted-ce",
        "--target-gap-width has no effect without --target-gap or --loss weighted-ce"]
    assert unused_options(weight_map, resolve("instances", TINY)) == []
    assert unused_options({"target_gap_width": 2}, resolve("demo", {**TINY, "target_gap": True})) == []

    monkeypatch.setattr(loop, "run", lambda *_, **__: None)  # what the command line says before the run
    assert main(["train", "--run-dir", str(tmp_path / "run"), "--momentum", "0.5", "--no-progress"]) == 0
    assert capsys.readouterr().err == "unet-jax train: note: --momentum is used by --optimizer sgd only; this run uses adam\n"


def test_images_smaller_than_the_label_tile_are_noted(tmp_path):
    data = write_folder(tmp_path / "d", seed=1)  # 64x64 images; the label tile of TINY is 20x20
    on_data = {k: v for k, v in TINY.items() if not k.startswith("cells_")}
    assert small_images(plan_new_run(resolve("demo", {**on_data, "data": str(data)}), parallel=DataParallel.create(1))) == []
    Image.fromarray(np.zeros((1, 1), np.uint8)).save(data / "images" / "dot.png")
    Image.fromarray(np.zeros((1, 1), np.uint8)).save(data / "masks" / "dot.png")
    plan = plan_new_run(resolve("demo", {**on_data, "data": str(data)}), parallel=DataParallel.create(1))
    dot = data.resolve() / "images" / "dot.png"
    assert small_images(plan) == [f"1 image(s) are smaller than the label tile of 20x20 (the smallest: {dot}, 1x1); "
                                  "their tiles are mostly mirrored copies of them"]
