"""The README's "Bring your PyTorch U-Net" example, command for command (tiny widths, 2 steps):
a milesial/Pytorch-UNet checkpoint -> convert -> `train --init-weights` on the user's data ->
export back to milesial's naming -> load into the milesial network with strict=True."""

import json

import numpy as np
import pytest
from PIL import Image

from tests.helpers.milesial_layout import MilesialLayoutUNet, randomize_batch_norm
from unet_jax.cli import main
from unet_jax.weights.io import load_variables
from unet_jax.weights.port import flatten_variables

torch = pytest.importorskip("torch")
unet_torch = pytest.importorskip("unet_torch")

SMALL_RUN = ["--tile-size", "32", "--batch-size", "2", "--steps", "2", "--eval-every", "2", "--log-every", "1",
             "--checkpoint-every", "2", "--val-fraction", "0.25", "--no-progress"]


@pytest.fixture(scope="module")
def user_files(tmp_path_factory):
    """A milesial checkpoint (features 8, depth 2: 16 | 32-pixel tiles) and a folder of RGB images with 0/255 masks."""
    root = tmp_path_factory.mktemp("user")
    torch.manual_seed(0)
    net = randomize_batch_norm(MilesialLayoutUNet(3, 2, features=8, depth=2))
    torch.save({**net.state_dict(), "mask_values": [0, 255]}, root / "checkpoint_epoch5.pth")
    rng = np.random.default_rng(0)
    for sub in ("images", "masks"):
        (root / "data" / sub).mkdir(parents=True)
    for i in range(4):
        mask = np.zeros((40, 40), np.uint8)
        mask[8 + i : 28, 10 : 30 - i] = 255
        image = rng.integers(0, 120, (40, 40, 3), dtype=np.uint8) + (mask[..., None] // 2)
        Image.fromarray(image).save(root / "data" / "images" / f"car{i}.png")
        Image.fromarray(mask).save(root / "data" / "masks" / f"car{i}.png")
    return root


def test_milesial_checkpoint_fine_tuned_and_exported_back(user_files, tmp_path, capsys):
    ckpt, data = user_files / "checkpoint_epoch5.pth", user_files / "data"
    # 1. convert: no architecture options, milesial's shapes give them; mask_values is kept.
    assert main(["convert", str(ckpt), str(tmp_path / "carvana.safetensors")]) == 0
    # 2. fine-tune: a new run from those weights, its architecture taken from the file.
    #    A learning rate this small moves no weight visibly, so the run must have started from them.
    assert main(["train", "--init-weights", str(tmp_path / "carvana.safetensors"), "--data", str(data),
                 "--run-dir", str(tmp_path / "run"), "--learning-rate", "1e-9", *SMALL_RUN]) == 0
    out = capsys.readouterr().out
    assert "starting from the weights in" in out
    config = json.loads((tmp_path / "run" / "config.json").read_text())
    assert config["model"] == {"in_channels": 3, "num_classes": 2, "features": 8, "depth": 2, "padding": "same",
                               "upsample": "transpose", "norm": "batch"}
    # The weights' own input scaling, [0, 1], is kept: not refitted to the new images.
    assert json.loads((tmp_path / "run" / "normalization.json").read_text()) == {"mean": [0.0] * 3, "std": [1.0] * 3}
    records = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert records[0]["step"] == 1  # a new run: step 0, not a continuation of anything
    start = flatten_variables(load_variables(tmp_path / "carvana.safetensors")[0])
    tuned = flatten_variables(load_variables(tmp_path / "run" / "weights.safetensors")[0])
    for key in (k for k in start if k.startswith("params/")):
        np.testing.assert_allclose(tuned[key], start[key], rtol=0, atol=1e-6, err_msg=key)  # random init: ~0.1 away
    # 3. export back to milesial's naming; it loads into milesial's network with strict=True.
    assert main(["convert", str(tmp_path / "run" / "weights.safetensors"), str(tmp_path / "finetuned.pth"),
                 "--naming", "milesial"]) == 0
    net = MilesialLayoutUNet(3, 2, features=8, depth=2)
    net.load_state_dict(torch.load(tmp_path / "finetuned.pth", weights_only=True), strict=True)


def test_init_weights_of_another_architecture_name_the_options(user_files, tmp_path, capsys):
    ckpt = user_files / "checkpoint_epoch5.pth"
    command = ["train", "--init-weights", str(ckpt), "--data", str(user_files / "data"), "--run-dir", str(tmp_path / "a"),
               *SMALL_RUN]
    # A milesial file fixes its architecture: a contradicting option is refused before anything is read or written.
    assert main([*command, "--features", "16"]) == 2
    err = capsys.readouterr().err
    assert "features=8" in err and "features=16" in err and not (tmp_path / "a").exists()
    # A plain state_dict (no sidecar) is checked against the options: the error says which to pass.
    torch.save(unet_torch.UNet(in_channels=3, features=4, depth=2, padding="same").state_dict(), tmp_path / "plain.pt")
    command[2] = str(tmp_path / "plain.pt")
    assert main([*command, "--in-channels", "3", "--padding", "same"]) == 2
    err = capsys.readouterr().err
    assert "pass --features 4 --depth 2" in err
    assert not (tmp_path / "a" / "config.json").exists()
