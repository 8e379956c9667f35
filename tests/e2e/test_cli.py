"""The user's path through the CLI: train on a folder, evaluate, predict, convert, bad input."""

import argparse
import json
import os
import subprocess
from importlib.metadata import version
from pathlib import Path

import numpy as np
import pytest
import tifffile
import torch
from PIL import Image

import unet_torch
from unet_jax.cli import build_parser, main
from unet_jax.config import CELLS_LAYOUTS, DTYPES, LOSSES, OPTIMIZERS, PADDINGS, UPSAMPLES
from unet_jax.data import make_cells
from unet_jax.runtime.memory import BUDGET_VARIABLE
from unet_jax.training.presets import PRESETS

TINY = ["--features", "4", "--depth", "2", "--tile-size", "60", "--batch-size", "2", "--eval-every", "2",
        "--log-every", "1", "--checkpoint-every", "2", "--no-progress"]


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    """Cells saved as a user would have them: 8-bit PNG images, 0/255 masks, sizes that are no tile size."""
    root = tmp_path_factory.mktemp("data")
    (root / "images").mkdir()
    (root / "masks").mkdir()
    cells = make_cells(4, size=80, seed=3)
    for i, (image, mask) in enumerate(zip(cells.images, cells.masks)):
        crop = slice(0, 80 - 3 * i)  # 80, 77, 74, 71 pixels high
        Image.fromarray((image[crop, :, 0] * 255).astype(np.uint8)).save(root / "images" / f"cell{i}.png")
        Image.fromarray((mask[crop] * 255).astype(np.uint8)).save(root / "masks" / f"cell{i}.png")
    return root


@pytest.fixture(scope="module")
def run_dir(folder, tmp_path_factory):
    run = tmp_path_factory.mktemp("runs") / "run"
    assert main(["train", "--data", str(folder), "--val-fraction", "0.25", "--steps", "2", "--run-dir", str(run),
                 *TINY]) == 0
    return run


def test_evaluate_prints_one_json_line_and_writes_it(run_dir, folder, tmp_path, capsys):
    capsys.readouterr()
    assert main(["evaluate", "--weights", str(run_dir), "--data", str(folder), "--output", str(tmp_path / "m.json")]) == 0
    printed = capsys.readouterr().out.strip().splitlines()
    assert len(printed) == 1
    result = json.loads(printed[0])
    assert {"dice", "iou", "pixel_accuracy", "dice_per_class", "iou_per_class"} <= set(result)
    assert json.loads((tmp_path / "m.json").read_text()) == result
    # Run again: an existing output is kept unless --overwrite, and that is known before evaluating.
    (tmp_path / "m.json").write_text("earlier scores")
    assert main(["evaluate", "--weights", str(run_dir), "--data", str(folder), "--output", str(tmp_path / "m.json")]) == 2
    assert "already exists" in capsys.readouterr().err and (tmp_path / "m.json").read_text() == "earlier scores"
    assert main(["evaluate", "--weights", str(run_dir), "--data", str(folder), "--output", str(tmp_path / "m.json"),
                 "--overwrite"]) == 0
    assert json.loads((tmp_path / "m.json").read_text()) == result


def test_evaluate_accepts_pytorch_weights_in_both_namings(run_dir, folder, tmp_path, capsys):
    results = []
    for naming in ("unet_torch", "seed"):
        weights = tmp_path / f"{naming}.pt"
        assert main(["convert", str(run_dir / "weights.safetensors"), str(weights), "--naming", naming]) == 0
        capsys.readouterr()
        assert main(["evaluate", "--weights", str(weights), "--data", str(folder),
                     "--features", "4", "--depth", "2"]) == 0
        results.append(json.loads(capsys.readouterr().out))
    # A .pt carries no normalisation, so scores may differ from the run's; the two namings may not.
    assert results[0] == results[1]


def test_predict_writes_masks_of_the_image_size(run_dir, folder, tmp_path):
    images = sorted((folder / "images").iterdir())
    assert main(["predict", "--weights", str(run_dir), *map(str, images), "--output", str(tmp_path / "out"),
                 "--probabilities"]) == 0
    for image in images:
        mask = np.asarray(Image.open(tmp_path / "out" / f"{image.stem}_mask.png"))
        assert mask.shape == np.asarray(Image.open(image)).shape
        probabilities = np.load(tmp_path / "out" / f"{image.stem}_probs.npy")
        assert probabilities.shape == (*mask.shape, 2)
        np.testing.assert_array_equal(probabilities.argmax(-1), mask)


def test_weights_for_another_config_are_refused_with_every_key(run_dir, folder, tmp_path, capsys):
    other = unet_torch.UNet(features=8, depth=2)
    torch.save(other.state_dict(), tmp_path / "other.pt")
    assert main(["evaluate", "--weights", str(tmp_path / "other.pt"), "--data", str(folder),
                 "--features", "4", "--depth", "2"]) == 2
    error = capsys.readouterr().err
    assert error.count("wrong shape") == len(other.state_dict()) - 1  # all but head.bias (num_classes wide)


def test_bad_data_is_named_and_nothing_is_written(folder, tmp_path, capsys):
    (folder / "images" / "orphan.png").write_bytes((folder / "images" / "cell0.png").read_bytes())
    try:
        assert main(["train", "--data", str(folder), "--run-dir", str(tmp_path / "run"), *TINY]) == 2
    finally:
        (folder / "images" / "orphan.png").unlink()
    assert "orphan.png" in capsys.readouterr().err
    assert not (tmp_path / "run").exists()  # fix the data and run the same command again


def test_channel_mismatch_is_named(folder, tmp_path, capsys):
    assert main(["train", "--data", str(folder), "--in-channels", "3", "--run-dir", str(tmp_path / "run"), *TINY]) == 2
    assert "cell0.png" in capsys.readouterr().err


def test_convert_cli_round_trip(tmp_path):
    model = unet_torch.UNet(features=4, depth=2)
    torch.save(model.state_dict(), tmp_path / "a.pt")
    assert main(["convert", str(tmp_path / "a.pt"), str(tmp_path / "f.safetensors"), "--features", "4", "--depth", "2"]) == 0
    assert main(["convert", str(tmp_path / "f.safetensors"), str(tmp_path / "b.pt")]) == 0
    back = torch.load(tmp_path / "b.pt", weights_only=True)
    for key, value in model.state_dict().items():
        assert torch.equal(back[key], value), key
    assert main(["convert", str(tmp_path / "f.safetensors"), str(tmp_path / "b.pt")]) == 2  # exists: not replaced


# ------------------------------------------------------------------ what a careful user tries
def test_predict_never_replaces_ground_truth_unless_asked(run_dir, folder, tmp_path, capsys):
    # The README's naming: images/s0.png with masks/s0_mask.png. `predict --output masks/` used to
    # replace the ground truth and return 0.
    for sub in ("images", "masks"):
        (tmp_path / sub).mkdir()
    (tmp_path / "images" / "s0.png").write_bytes((folder / "images" / "cell0.png").read_bytes())
    truth = (folder / "masks" / "cell0.png").read_bytes()
    (tmp_path / "masks" / "s0_mask.png").write_bytes(truth)
    command = ["predict", "--weights", str(run_dir), str(tmp_path / "images" / "s0.png"), "--output", str(tmp_path / "masks")]
    assert main(command) == 2
    error = capsys.readouterr().err
    assert error.count("\n") == 1 and str(tmp_path / "masks" / "s0_mask.png") in error and "--overwrite" in error
    assert (tmp_path / "masks" / "s0_mask.png").read_bytes() == truth
    assert main([*command, "--overwrite"]) == 0  # asked for: replaced
    assert (tmp_path / "masks" / "s0_mask.png").read_bytes() != truth


def test_predict_prints_one_line_per_image_or_json_lines(run_dir, folder, tmp_path, capsys):
    images = sorted((folder / "images").iterdir())[:2]
    capsys.readouterr()
    assert main(["predict", "--weights", str(run_dir), *map(str, images), "--output", str(tmp_path / "a")]) == 0
    lines = capsys.readouterr().out.splitlines()
    sizes = [np.asarray(Image.open(image)).shape for image in images]
    assert lines == [f"{image}: {h}x{w} -> {tmp_path / 'a' / (image.stem + '_mask.png')}" for image, (h, w) in zip(images, sizes)]
    assert main(["predict", "--weights", str(run_dir), *map(str, images), "--output", str(tmp_path / "b"), "--json",
                 "--probabilities"]) == 0
    records = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert [r["image"] for r in records] == list(map(str, images))
    assert all(Path(r["mask"]).is_file() and Path(r["probabilities"]).is_file() and r["pages"] == 1 for r in records)


def test_predict_reads_a_multi_page_tiff_as_a_stack(run_dir, tmp_path, capsys):
    tifffile.imwrite(tmp_path / "stack.tif", np.zeros((5, 30, 40), np.uint8))
    assert main(["predict", "--weights", str(run_dir), str(tmp_path / "stack.tif"), "--output", str(tmp_path / "out")]) == 0
    assert capsys.readouterr().out.strip().endswith(f"5 pages of 30x40 -> {tmp_path / 'out' / 'stack_mask.tif'}")
    assert tifffile.imread(tmp_path / "out" / "stack_mask.tif").shape == (5, 30, 40)


def test_tile_size_far_beyond_the_image_is_capped(run_dir, folder, tmp_path):
    # --tile-size 100000 on a small image used to try to allocate tens of GiB.
    image = str(folder / "images" / "cell0.png")
    assert main(["predict", "--weights", str(run_dir), image, "--output", str(tmp_path / "huge"), "--tile-size", "100000"]) == 0
    assert main(["predict", "--weights", str(run_dir), image, "--output", str(tmp_path / "default")]) == 0
    assert (tmp_path / "huge" / "cell0_mask.png").read_bytes() == (tmp_path / "default" / "cell0_mask.png").read_bytes()


def test_a_tile_size_over_the_memory_budget_is_refused_with_the_number(run_dir, tmp_path, monkeypatch, capsys):
    # UNET_JAX_MEMORY_BUDGET, the setting training's memory check reads, sets predict's budget too
    # (half of it for the activations, as of a GPU's free memory): a machine with 2 MiB to spare.
    monkeypatch.setenv(BUDGET_VARIABLE, "2MiB")
    Image.fromarray(np.zeros((300, 300), np.uint8)).save(tmp_path / "big.png")
    assert main(["predict", "--weights", str(run_dir), str(tmp_path / "big.png"), "--output", str(tmp_path / "out"),
                 "--tile-size", "240"]) == 2
    error = capsys.readouterr().err
    assert error.count("\n") == 1 and "big.png: tile size 240 needs about" in error and "budget of 0.00 GiB" in error
    assert not (tmp_path / "out" / "big_mask.png").exists()
    monkeypatch.setenv(BUDGET_VARIABLE, "8GiB")  # the same tile within a larger budget
    assert main(["predict", "--weights", str(run_dir), str(tmp_path / "big.png"), "--output", str(tmp_path / "out"),
                 "--tile-size", "240"]) == 0
    assert (tmp_path / "out" / "big_mask.png").exists()
    monkeypatch.setenv(BUDGET_VARIABLE, "lots")
    assert main(["predict", "--weights", str(run_dir), str(tmp_path / "big.png"), "--output", str(tmp_path / "again")]) == 2
    assert f"{BUDGET_VARIABLE}='lots' is not a size" in capsys.readouterr().err


def test_architecture_options_that_contradict_the_weights_are_an_error(run_dir, folder, capsys):
    # The mask error for 3 classes advised --num-classes 3, which the stored config then silently overrode.
    assert main(["evaluate", "--weights", str(run_dir), "--data", str(folder), "--num-classes", "3"]) == 2
    error = capsys.readouterr().err
    assert "num_classes=2" in error and "num_classes=3" in error and "leave out the architecture options" in error


def test_unwritable_destinations_are_one_line_in_every_command(run_dir, folder, tmp_path, capsys):
    (tmp_path / "a-file").write_text("")
    (tmp_path / "a-folder").mkdir()
    image = str(folder / "images" / "cell0.png")
    weights = str(run_dir / "weights.safetensors")
    for command in (
        ["predict", "--weights", str(run_dir), image, "--output", str(tmp_path / "a-file" / "out")],
        ["evaluate", "--weights", str(run_dir), "--data", str(folder), "--output", str(tmp_path / "a-folder")],
        ["evaluate", "--weights", str(run_dir), "--data", str(folder), "--output", str(tmp_path / "a-file" / "m.json")],
        ["convert", weights, str(tmp_path / "a-file" / "w.pt")],
        ["convert", weights, str(tmp_path / "a-folder")],
        ["convert", weights, weights, "--overwrite"],  # its own source
    ):
        assert main(command) == 2, command
        error = capsys.readouterr().err
        assert error.count("\n") == 1 and "Fix:" in error and "Traceback" not in error, command
    assert (tmp_path / "a-file").read_text() == ""


@pytest.fixture
def read_only_folder(tmp_path):
    """A folder no one may write into: its mode where permissions bind, a read-only tmpfs for root."""
    folder = tmp_path / "read-only"
    folder.mkdir()
    if os.geteuid() != 0:
        folder.chmod(0o555)
        yield folder
        folder.chmod(0o755)
        return
    if subprocess.run(["mount", "-t", "tmpfs", "-o", "ro,size=64k", "tmpfs", str(folder)], capture_output=True).returncode:
        pytest.skip("root writes into read-only folders, and may not mount a read-only one here")
    yield folder
    subprocess.run(["umount", str(folder)], check=True)


def test_an_unwritable_output_folder_is_refused_before_the_work(read_only_folder, tmp_path, capsys):
    # evaluate --output into a folder that can't be written failed only after the whole evaluation.
    output = read_only_folder / "m.json"
    assert main(["evaluate", "--weights", str(tmp_path / "no-weights.safetensors"), "--data", str(tmp_path),
                 "--output", str(output)]) == 2
    assert capsys.readouterr().err == (f"unet-jax evaluate: error: {output}: permission denied. Fix: choose a location you can "
                                       f"write to ({read_only_folder} is not writable)\n")  # not the missing weights, found later


def test_a_plain_pickle_is_refused_in_one_line_without_unsafe_advice(folder, tmp_path, capsys):
    import pickle

    with open(tmp_path / "model.pt", "wb") as f:
        pickle.dump({"head.weight": np.zeros((2, 4, 1, 1), np.float32)}, f)
    assert main(["evaluate", "--weights", str(tmp_path / "model.pt"), "--data", str(folder)]) == 2
    error = capsys.readouterr().err
    assert error.count("\n") == 1 and "plain Python pickle" in error and "weights_only" not in error


def test_ctrl_c_stops_a_command_cleanly(run_dir, folder, tmp_path, monkeypatch, capsys):
    import unet_jax.inference.predictor

    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(unet_jax.inference.predictor, "predict_files", interrupted)
    assert main(["predict", "--weights", str(run_dir), str(folder / "images" / "cell0.png"), "--output", str(tmp_path)]) == 130
    assert capsys.readouterr().err == "unet-jax predict: interrupted; every file written so far is complete\n"


def test_unexpected_errors_keep_their_traceback(run_dir, folder, monkeypatch):
    import unet_jax.inference.evaluate

    def bug(*args, **kwargs):
        return 1 / 0

    monkeypatch.setattr(unet_jax.inference.evaluate, "evaluate", bug)
    with pytest.raises(ZeroDivisionError):
        main(["evaluate", "--weights", str(run_dir), "--data", str(folder)])


def test_version(capsys):
    with pytest.raises(SystemExit) as info:
        main(["--version"])
    assert info.value.code == 0
    assert capsys.readouterr().out == f"unet-jax {version('unet-jax')} (jax {version('jax')}, flax {version('flax')})\n"


def test_every_option_has_help_with_its_default():
    parser = build_parser()
    [commands] = [a for a in parser._actions if isinstance(a, argparse._SubParsersAction)]
    assert set(commands.choices) == {"train", "plan", "convert", "evaluate", "predict", "export", "inspect"}
    for name, command in commands.choices.items():
        for action in command._actions:
            if isinstance(action, argparse._HelpAction) or not action.option_strings:
                continue
            help_text = command._get_formatter()._expand_help(action)
            shown = "(required)" in help_text if action.required else "default:" in help_text
            assert shown, f"{name} {action.option_strings[0]}: {help_text!r}"
    train_options = {a.dest: a for a in commands.choices["train"]._actions}
    for name, library in (("optimizer", OPTIMIZERS), ("loss", LOSSES), ("dtype", DTYPES), ("padding", PADDINGS),
                          ("upsample", UPSAMPLES), ("cells_layout", CELLS_LAYOUTS)):
        assert train_options[name].choices is library, name  # the library's own tuple, not a copy
    assert train_options["preset"].choices == sorted(PRESETS)
    [batch_size] = [a for a in commands.choices["train"]._actions if a.dest == "batch_size"]
    assert batch_size.help.endswith("(default: demo 8, instances 8, seed 16, paper 1)")  # from the presets themselves


def test_preset_with_resume_is_refused(run_dir, capsys):
    assert main(["train", "--resume", str(run_dir), "--preset", "seed"]) == 2
    assert "--preset starts a new run" in capsys.readouterr().err
