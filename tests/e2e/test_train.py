"""The training run end to end on tiny configs, as users drive it: outputs, exact resume, resume past
a damaged checkpoint, resume with a new learning rate, divergence with and without a checkpoint,
and bad options refused before anything is written."""

import dataclasses
import json
import shutil

import jax
import numpy as np
import pytest
import torch

import unet_jax.training.loop as train_module
import unet_torch
from unet_jax.cli import main
from unet_jax.training.loop import NonFiniteLossError, train
from unet_jax.training.presets import PRESETS, resolve
from unet_jax.training.run_dir import RunDir
from unet_jax.weights.io import load_variables
from unet_jax.weights.port import flatten_variables

# A depth-2, 4-feature U-Net on 60x60 tiles (20x20 labels) trains a step in milliseconds.
TINY = dict(features=4, depth=2, tile_size=60, batch_size=2, cells_train_images=4, cells_val_images=2,
            cells_image_size=64, val_tiles_per_image=1, log_every=1, eval_every=3, checkpoint_every=3)
QUIET = dict(progress=False, log=lambda _: None)


def tiny(**overrides):
    return resolve("demo", {**TINY, **overrides})


def losses(run_dir):
    records = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    return [(r["step"], r["split"], r["loss"]) for r in records]


def assert_same_weights(a_dir, b_dir):
    a = flatten_variables(load_variables(a_dir / "weights.safetensors")[0])
    b = flatten_variables(load_variables(b_dir / "weights.safetensors")[0])
    assert a.keys() == b.keys()
    for key in a:
        np.testing.assert_array_equal(a[key], b[key], err_msg=key)


@pytest.fixture(scope="module")
def straight(tmp_path_factory):
    """An uninterrupted 6-step run, checkpoints at 3 and 6: the reference for every resume.
    What it printed is kept in log.txt beside it."""
    run_dir = tmp_path_factory.mktemp("straight") / "run"
    lines = []
    train(tiny(steps=6), run_dir, progress=False, log=lines.append)
    (run_dir.parent / "log.txt").write_text("\n".join(lines))
    return run_dir


def copy_of(run_dir, tmp_path, drop_results=True):
    """A copy of a finished run; without its results it reads as a run stopped at its last checkpoint."""
    copy = tmp_path / "copy"
    shutil.copytree(run_dir, copy)
    if drop_results:
        for name in (RunDir.WEIGHTS, RunDir.SUMMARY, RunDir.LOSS_PLOT, RunDir.PREDICTIONS_PLOT):
            (copy / name).unlink()
    return copy


def test_presets_are_valid_and_a_run_prints_its_own(straight):
    for name, cfg in PRESETS.items():
        assert cfg.preset == name
        cfg.model.check_input_size(cfg.tile_size, cfg.tile_size)
    assert PRESETS["seed"].model == dataclasses.replace(PRESETS["seed"].model)  # the seed's network
    assert (PRESETS["paper"].optimizer, PRESETS["paper"].batch_size, PRESETS["paper"].momentum) == ("sgd", 1, 0.99)
    assert (straight.parent / "log.txt").read_text().startswith("preset 'demo': ")


def test_run_writes_everything_and_weights_port_to_torch(straight, tmp_path):
    for name in ("config.json", "normalization.json", "metrics.jsonl", "summary.json", "loss.png",
                 "predictions.png", "weights.safetensors", "run.lock"):
        assert (straight / name).is_file(), name
    summary = json.loads((straight / "summary.json").read_text())
    for split in ("validation_tiles", "validation_whole_images"):
        assert set(summary[split]) >= {"dice", "iou", "pixel_accuracy", "dice_per_class", "iou_per_class"}
    assert summary["validation_whole_images"]["num_images"] == TINY["cells_val_images"]
    assert summary["exact_continuation"] is True and summary["resumes"] == []
    assert json.loads((straight / "config.json").read_text())["model"]["features"] == 4
    assert RunDir(straight).checkpoint_steps() == [3, 6]

    # The exported weights become a PyTorch state_dict that unet_torch loads strictly.
    assert main(["convert", str(straight / "weights.safetensors"), str(tmp_path / "w.pt")]) == 0
    variables, config = load_variables(straight / "weights.safetensors")
    model = unet_torch.UNet(**dataclasses.asdict(config))
    model.load_state_dict(torch.load(tmp_path / "w.pt", weights_only=True), strict=True)


def test_resume_with_more_steps_continues_exactly(straight, tmp_path):
    interrupted = tmp_path / "interrupted"
    train(tiny(steps=3), interrupted, **QUIET)
    # A kill mid-write leaves only Orbax's temporary directory (renamed when complete): never "latest".
    torn = interrupted / "checkpoints" / "4.orbax-checkpoint-tmp-1234"
    torn.mkdir()
    (torn / "_CHECKPOINT_METADATA").write_text("{trunc")
    assert main(["train", "--resume", str(interrupted), "--steps", "6", "--no-progress"]) == 0

    assert losses(interrupted) == losses(straight)  # bit-identical curve, records from 1 to 6
    assert_same_weights(straight, interrupted)
    summary = json.loads((interrupted / "summary.json").read_text())
    assert summary["exact_continuation"] is True  # more steps change no step's weights
    assert summary["resumes"][0]["from_step"] == 3 and summary["resumes"][0]["changes"] == {"steps": [3, 6]}


def test_resume_falls_back_past_a_damaged_checkpoint_and_names_it(straight, tmp_path, capsys):
    # The latest checkpoint was damaged after it was written (a bad disk, a truncated copy):
    # resuming used to end in a traceback or an unnamed JSON error, and step 3 was never tried.
    run_dir = copy_of(straight, tmp_path)
    (run_dir / "checkpoints" / "6" / "default" / "_METADATA").write_text("{trunc")
    assert main(["train", "--resume", str(run_dir), "--no-progress"]) == 0
    out = capsys.readouterr().out
    assert f"checkpoint 6 in {run_dir / 'checkpoints'} can't be restored (default/_METADATA has 6 bytes, " in out
    assert f"moved to {run_dir / 'unusable-checkpoints' / '6'}" in out and "resumed from step 3" in out
    assert (run_dir / "unusable-checkpoints" / "6" / "default").is_dir()  # set aside, not deleted
    assert losses(run_dir) == losses(straight)  # steps 4..6 recomputed, identically
    assert_same_weights(straight, run_dir)


def test_a_resume_that_can_restore_nothing_changes_nothing(straight, tmp_path, capsys):
    run_dir = copy_of(straight, tmp_path)
    for step in (3, 6):  # every array file of both checkpoints truncated
        for data in (run_dir / "checkpoints" / str(step)).rglob("d/*"):
            if data.is_file():
                data.write_bytes(data.read_bytes()[:10])
    def files():  # every file but the lock, which names its latest holder
        return {p.name: p.read_bytes() for p in run_dir.iterdir() if p.is_file() and p.name != RunDir.LOCK}

    before = files()
    assert main(["train", "--resume", str(run_dir), "--learning-rate", "1e-4", "--no-progress"]) == 2
    error = capsys.readouterr().err
    assert error.count("\n") == 1 and "step 6: " in error and "step 3: " in error
    assert f"mv {run_dir / 'checkpoints'}" in error
    assert files() == before  # config.json and the metrics untouched


def test_a_metrics_line_cut_mid_write_is_dropped_with_a_note_on_resume(straight, tmp_path, capsys):
    run_dir = copy_of(straight, tmp_path)
    with open(run_dir / "metrics.jsonl", "a") as metrics, open(run_dir / "resumes.jsonl", "a") as resumes:
        metrics.write('{"step": 7, "split": "tr')  # what a crash in the middle of an append leaves
        resumes.write('{"at": "2026-')
    assert main(["train", "--resume", str(run_dir), "--no-progress"]) == 0
    assert f"{run_dir / 'metrics.jsonl'}: dropped its last line, cut mid-write" in capsys.readouterr().out
    assert losses(run_dir) == losses(straight)
    assert [r["from_step"] for r in RunDir(run_dir).resumes()] == [6]


def test_metrics_damaged_in_the_middle_are_refused_before_anything_is_written(straight, tmp_path, capsys):
    run_dir = copy_of(straight, tmp_path)
    lines = (run_dir / "metrics.jsonl").read_text().splitlines()
    (run_dir / "metrics.jsonl").write_text("\n".join([lines[0], "not json", *lines[1:]]) + "\n")
    before = {p.name: p.read_bytes() for p in run_dir.iterdir() if p.is_file() and p.name != RunDir.LOCK}
    assert main(["train", "--resume", str(run_dir), "--no-progress"]) == 2
    error = capsys.readouterr().err
    assert error.count("\n") == 1 and f"{run_dir / 'metrics.jsonl'}, line 2, is not a JSON record" in error
    assert f"mv {run_dir / 'metrics.jsonl'} " in error
    assert {p.name: p.read_bytes() for p in run_dir.iterdir() if p.is_file() and p.name != RunDir.LOCK} == before

    new = tmp_path / "new"  # a non-JSON metrics.jsonl in a new --run-dir: refused, nothing written
    new.mkdir()
    (new / "metrics.jsonl").write_text("not json\n")
    assert main(["train", "--run-dir", str(new), "--steps", "1", "--no-progress"]) == 2
    assert "metrics.jsonl" in capsys.readouterr().err and [p.name for p in new.iterdir()] == ["metrics.jsonl"]


@pytest.mark.parametrize("error", [
    MemoryError("Unable to allocate 1.46 TiB for an array with shape (1000000, 1, 604, 604) and data type float32"),
    jax.errors.JaxRuntimeError("RESOURCE_EXHAUSTED: Out of memory while trying to allocate 76444053760 bytes."),
])
def test_running_out_of_memory_is_one_message_naming_what_was_kept(straight, tmp_path, monkeypatch, capsys, error):
    def out_of_memory(*_, **__):
        raise error

    monkeypatch.setattr(train_module, "run", out_of_memory)
    run_dir = copy_of(straight, tmp_path)
    assert main(["train", "--resume", str(run_dir), "--steps", "8", "--no-progress"]) == 2
    message = capsys.readouterr().err
    assert message.count("\n") == 1 and f"training ran out of memory ({str(error)[:40]}" in message
    assert f"Kept: the checkpoints up to step 6 in {run_dir / 'checkpoints'}" in message and "smaller --batch-size" in message
    assert "`unet-jax plan` with the new options" in message  # the estimate before compiling, as a run over budget is told
    assert main(["train", "--run-dir", str(tmp_path / "new"), "--steps", "2", "--no-progress"]) == 2
    assert f"Kept: nothing trained ({tmp_path / 'new'} holds no checkpoint)" in capsys.readouterr().err
    monkeypatch.setattr(train_module, "run", lambda *_, **__: (_ for _ in ()).throw(RuntimeError("a bug")))
    with pytest.raises(RuntimeError, match="a bug"):  # any other error keeps its traceback
        main(["train", "--resume", str(run_dir), "--no-progress"])


def test_resume_refuses_changes_to_the_network_and_writes_nothing(straight, tmp_path, capsys):
    run_dir = copy_of(straight, tmp_path, drop_results=False)
    before = (run_dir / "config.json").read_bytes()
    assert main(["train", "--resume", str(run_dir), "--features", "8", "--optimizer", "sgd"]) == 2
    error = capsys.readouterr().err
    assert "--features (4 -> 8)" in error and "--optimizer ('adam' -> 'sgd')" in error
    assert (run_dir / "config.json").read_bytes() == before


def test_existing_run_is_never_overwritten(straight, capsys):
    before = (straight / "weights.safetensors").read_bytes()
    assert main(["train", "--run-dir", str(straight), "--steps", "1"]) == 2
    assert f"--resume {straight}" in capsys.readouterr().err
    assert (straight / "weights.safetensors").read_bytes() == before


def poison(monkeypatch, at_step):
    clean_batch = train_module.batch_at

    def poisoned(samples, cfg, step, weights=None, rows=None):
        images, *labels = clean_batch(samples, cfg, step, weights, rows)
        return (images * np.nan if step == at_step else images), *labels

    monkeypatch.setattr(train_module, "batch_at", poisoned)


def test_divergence_names_the_checkpoint_and_its_advice_works(straight, tmp_path, monkeypatch, capsys):
    poison(monkeypatch, at_step=5)
    run_dir = tmp_path / "run"
    with pytest.raises(NonFiniteLossError) as info:
        train(tiny(steps=6), run_dir, **QUIET)
    message = str(info.value)
    assert "became nan at step 5" in message
    assert f"step 3 ({run_dir / 'checkpoints' / '3'})" in message
    assert RunDir(run_dir).checkpoint_steps() == [3] and not (run_dir / "weights.safetensors").exists()

    # Do what it says (the data is fine again, as a lower learning rate would make it).
    monkeypatch.undo()
    command = message.split("`")[1].split()
    assert command[:4] == ["unet-jax", "train", "--resume", str(run_dir)] and command[4] == "--learning-rate"
    assert main([*command[1:], "--no-progress"]) == 0
    assert "learning_rate 0.001 -> 0.0001: from here on the run is no longer an exact continuation" in capsys.readouterr().out
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["exact_continuation"] is False and summary["steps"] == 6
    assert summary["resumes"][0]["changes"] == {"learning_rate": [0.001, 0.0001]}
    assert json.loads((run_dir / "config.json").read_text())["learning_rate"] == 0.0001
    first_three = [r for r in losses(straight) if r[0] <= 3]
    assert [r for r in losses(run_dir) if r[0] <= 3] == first_three  # the records before the resume are kept
    assert losses(run_dir)[-1] != losses(straight)[-1]  # and the new learning rate took effect


def test_divergence_before_the_first_checkpoint_can_be_restarted_in_place(tmp_path, monkeypatch, capsys):
    # Used to say "the last good checkpoint is intact" over an empty folder, and then both a new
    # run ("already holds a run") and --resume ("no checkpoint") were refused.
    poison(monkeypatch, at_step=2)
    run_dir = tmp_path / "run"
    cfg = tiny(steps=2, checkpoint_every=4, eval_every=4)
    with pytest.raises(NonFiniteLossError) as info:
        train(cfg, run_dir, **QUIET)
    assert "No checkpoint was saved yet (the first is due at step 4), so nothing is lost" in str(info.value)
    assert RunDir(run_dir).state == "unstarted"
    monkeypatch.undo()
    again = shutil.copytree(run_dir, tmp_path / "again")

    # --resume starts it again from step 0 ...
    assert main(["train", "--resume", str(run_dir), "--no-progress"]) == 0
    assert "has no checkpoint yet: starting the run again from step 0" in capsys.readouterr().out
    assert [r["from_step"] for r in RunDir(run_dir).resumes()] == [0]
    # ... and a new run may replace it in place, since nothing trained is there.
    lines = []
    train(cfg, again, progress=False, log=lines.append)
    assert lines[0] == f"{again} holds a run that stopped before its first checkpoint: starting over in place"
    assert losses(run_dir) == losses(again)  # both ran the same two steps from scratch


@pytest.mark.parametrize(
    "option, value",
    [("--checkpoint-every", "0"), ("--log-every", "0"), ("--eval-every", "0"), ("--val-tiles-per-image", "0"),
     ("--keep-checkpoints", "0"), ("--learning-rate", "-1"), ("--momentum", "5"), ("--learning-rate", "nan"),
     ("--seed", str(2**63)), ("--depth", "30")],
)
def test_bad_options_are_refused_before_anything_is_written(tmp_path, capsys, option, value):
    run_dir = tmp_path / "run"
    assert main(["train", "--run-dir", str(run_dir), option, value, "--no-progress"]) == 2
    error = capsys.readouterr().err
    assert error.count("\n") == 1 and option in error
    assert not run_dir.exists()


@pytest.mark.parametrize("option, value", [("--optimizer", "rmsprop"), ("--loss", "focal"), ("--dtype", "float16")])
def test_unknown_names_are_refused_by_the_parser(tmp_path, capsys, option, value):
    with pytest.raises(SystemExit) as info:
        main(["train", "--run-dir", str(tmp_path / "run"), option, value])
    assert info.value.code == 2 and "invalid choice" in capsys.readouterr().err
    assert not (tmp_path / "run").exists()
