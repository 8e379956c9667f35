"""The run plan: every choice settled once, before any work, recorded in config.json; a resume
reads config.json of either form; `due` decides the loop's periodic actions."""

from __future__ import annotations

import json

import pytest

from tests.helpers.cell_folders import write_cells_folder
from unet_jax.config import ConfigError, UNetConfig
from unet_jax.model.compute import Compute
from unet_jax.model.unet import UNet
from unet_jax.runtime.mesh import DataParallel
from unet_jax.training import resume as resume_module
from unet_jax.training.loop import due, nest
from unet_jax.training.plan import plan_from_options, plan_new_run, plan_resumed_run
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
    assert stored["compute"] == {"remat": "none", "batch_groups": 0}
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
