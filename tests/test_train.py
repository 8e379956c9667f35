"""The training run end to end on tiny configs: outputs, exact resume, divergence handling."""

import dataclasses
import json

import numpy as np
import pytest
import torch

import unet_jax.train as train_module
import unet_torch
from unet_jax.checkpoints import Checkpointer
from unet_jax.cli import main
from unet_jax.port import flatten_variables
from unet_jax.presets import PRESETS, resolve
from unet_jax.train import NonFiniteLossError, train
from unet_jax.weights_io import load_variables

# A depth-2, 4-feature U-Net on 60x60 tiles (20x20 labels) trains a step in milliseconds.
TINY = dict(features=4, depth=2, tile_size=60, batch_size=2, cells_train_images=4, cells_val_images=2,
            cells_image_size=64, val_tiles_per_image=1, log_every=1, eval_every=3, checkpoint_every=3)


def tiny(**overrides):
    return resolve("demo", {**TINY, **overrides})


def losses(run_dir):
    records = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    return [(r["step"], r["split"], r["loss"]) for r in records]


def test_presets_are_valid_and_print_their_name(tmp_path, capsys):
    for name, cfg in PRESETS.items():
        assert cfg.preset == name
        cfg.model.check_input_size(cfg.tile_size, cfg.tile_size)
    assert PRESETS["seed"].model == dataclasses.replace(PRESETS["seed"].model)  # the seed's network
    assert (PRESETS["paper"].optimizer, PRESETS["paper"].batch_size, PRESETS["paper"].momentum) == ("sgd", 1, 0.99)
    main(["train", "--run-dir", str(tmp_path / "run"), "--steps", "1", "--no-progress",
          *[f"--{k.replace('_', '-')}={v}" for k, v in TINY.items()]])
    assert "preset 'demo'" in capsys.readouterr().out


def test_run_writes_everything_and_weights_port_to_torch(tmp_path):
    run_dir = tmp_path / "run"
    summary = train(tiny(steps=3), run_dir, progress=False, log=lambda _: None)
    for name in ("config.json", "normalization.json", "metrics.jsonl", "summary.json", "loss.png",
                 "predictions.png", "weights.safetensors"):
        assert (run_dir / name).is_file(), name
    for split in ("validation_tiles", "validation_whole_images"):
        assert set(summary[split]) >= {"dice", "iou", "pixel_accuracy", "dice_per_class", "iou_per_class"}
    assert summary["validation_whole_images"]["num_images"] == TINY["cells_val_images"]
    assert json.loads((run_dir / "config.json").read_text())["model"]["features"] == 4

    # The exported weights become a PyTorch state_dict that unet_torch loads strictly.
    assert main(["convert", str(run_dir / "weights.safetensors"), str(tmp_path / "w.pt")]) == 0
    variables, config = load_variables(run_dir / "weights.safetensors")
    model = unet_torch.UNet(**dataclasses.asdict(config))
    model.load_state_dict(torch.load(tmp_path / "w.pt", weights_only=True), strict=True)


def test_resume_continues_exactly(tmp_path):
    straight, interrupted = tmp_path / "straight", tmp_path / "interrupted"
    train(tiny(steps=6), straight, progress=False, log=lambda _: None)
    train(tiny(steps=3), interrupted, progress=False, log=lambda _: None)
    # A kill mid-write leaves only Orbax's temporary directory (renamed when complete): never "latest".
    torn = interrupted / "checkpoints" / "4.orbax-checkpoint-tmp-1234"
    torn.mkdir()
    (torn / "_CHECKPOINT_METADATA").write_text("{trunc")
    assert main(["train", "--resume", str(interrupted), "--steps", "6", "--no-progress"]) == 0

    assert losses(interrupted) == losses(straight)  # bit-identical curve, records from 1 to 6
    a = flatten_variables(load_variables(straight / "weights.safetensors")[0])
    b = flatten_variables(load_variables(interrupted / "weights.safetensors")[0])
    assert a.keys() == b.keys()
    for key in a:
        np.testing.assert_array_equal(a[key], b[key], err_msg=key)


def test_resume_refuses_changes_to_the_network(tmp_path, capsys):
    train(tiny(steps=1), tmp_path / "run", progress=False, log=lambda _: None)
    assert main(["train", "--resume", str(tmp_path / "run"), "--features", "8"]) == 2
    assert "only" in capsys.readouterr().err


def test_existing_run_is_never_overwritten(tmp_path, capsys):
    train(tiny(steps=1), tmp_path / "run", progress=False, log=lambda _: None)
    before = (tmp_path / "run" / "weights.safetensors").read_bytes()
    assert main(["train", "--run-dir", str(tmp_path / "run"), "--steps", "1"]) == 2
    assert "--resume" in capsys.readouterr().err
    assert (tmp_path / "run" / "weights.safetensors").read_bytes() == before


def test_non_finite_loss_stops_and_keeps_the_last_good_checkpoint(tmp_path, monkeypatch):
    clean_batch = train_module.batch_at

    def poisoned(samples, cfg, step):
        images, masks = clean_batch(samples, cfg, step)
        return (images * np.nan if step == 5 else images), masks

    monkeypatch.setattr(train_module, "batch_at", poisoned)
    run_dir = tmp_path / "run"
    with pytest.raises(NonFiniteLossError, match="last good checkpoint"):
        train(tiny(steps=9), run_dir, progress=False, log=lambda _: None)
    checkpoints = Checkpointer(run_dir / "checkpoints", keep=3)
    assert checkpoints.latest_step() == 3
    checkpoints.close()
    assert not (run_dir / "weights.safetensors").exists()
