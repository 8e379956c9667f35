"""Images that change after a run started, and a data error met while the run is under way.

The trainer reads every image of its share before the first step, so a file deleted or cut
short afterwards changes nothing; a batch that cannot be made (an error in the prefetcher's
worker thread) stops the run with one message naming the file and the checkpoint kept.
"""

import json
import threading

import numpy as np
from PIL import Image

import unet_jax.training.loop as train_module
from unet_jax.cli import main
from unet_jax.data import make_cells, prefetch
from unet_jax.training.loop import train
from unet_jax.training.presets import resolve

TINY = dict(features=4, depth=2, tile_size=60, batch_size=2, val_tiles_per_image=1, log_every=1, eval_every=3,
            checkpoint_every=3, steps=6)
TINY_OPTIONS = [x for k, v in TINY.items() for x in ("--" + k.replace("_", "-"), str(v))]


def write_folder(root):
    cells = make_cells(5, 64, seed=3)
    for sub in ("images", "masks"):
        (root / sub).mkdir(parents=True)
    for i, (image, mask) in enumerate(zip(cells.images, cells.masks)):
        Image.fromarray(np.round(image[..., 0] * 255).astype(np.uint8)).save(root / "images" / f"c{i}.png")
        Image.fromarray((mask * 255).astype(np.uint8)).save(root / "masks" / f"c{i}.png")
    return root


def train_losses(run_dir):
    return [(r["step"], r["split"], r["loss"]) for r in map(json.loads, (run_dir / "metrics.jsonl").read_text().splitlines())]


def test_files_deleted_or_cut_short_after_the_start_change_nothing(tmp_path, monkeypatch):
    data = write_folder(tmp_path / "data")
    train(resolve("demo", {**TINY, "data": str(data)}), tmp_path / "untouched", progress=False, log=lambda _: None)
    read = train_module.load_data

    def read_then_damage(*args):
        loaded = read(*args)
        (data / "images" / "c0.png").unlink()
        path = data / "masks" / "c1.png"
        path.write_bytes(path.read_bytes()[:40])
        return loaded

    monkeypatch.setattr(train_module, "load_data", read_then_damage)
    train(resolve("demo", {**TINY, "data": str(data)}), tmp_path / "damaged", progress=False, log=lambda _: None)
    assert not (data / "images" / "c0.png").exists()
    assert train_losses(tmp_path / "damaged") == train_losses(tmp_path / "untouched")


def test_a_batch_that_cannot_be_made_stops_the_run_with_one_message_and_the_checkpoint_kept(tmp_path, monkeypatch, capsys):
    made = train_module.batch_at

    def failing(samples, cfg, step, *args, **kwargs):
        if step == 5:  # made on a prefetcher's worker thread while steps 3-4 run
            raise OSError(2, "No such file or directory", "/data/images/c4.png")
        return made(samples, cfg, step, *args, **kwargs)

    monkeypatch.setattr(train_module, "batch_at", failing)
    monkeypatch.setattr(prefetch, "workers_for", lambda devices: 2)  # worker threads, as on an accelerator
    run_dir = tmp_path / "run"
    assert main(["train", "--run-dir", str(run_dir), "--no-progress", "--cells-train-images", "4", "--cells-val-images", "2",
                 "--cells-image-size", "64", *TINY_OPTIONS]) == 2
    error = capsys.readouterr().err
    assert error.count("\n") == 1 and "Traceback" not in error, error
    assert "the batch of step 5 could not be made" in error and "/data/images/c4.png" in error
    assert f"The latest checkpoint is step 3 ({run_dir / 'checkpoints' / '3'})" in error
    assert f"unet-jax train --resume {run_dir}" in error
    assert not [t for t in threading.enumerate() if t.name.startswith("unet-jax-prefetch")]  # no worker left behind
