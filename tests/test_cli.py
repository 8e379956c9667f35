"""The user's path through the CLI: train on a folder, evaluate, predict, convert, bad input."""

import json

import numpy as np
import pytest
import torch
from PIL import Image

import unet_torch
from unet_jax.cli import main
from unet_jax.data import make_cells

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
