"""The default `unet-jax train` run keeps its promise: foreground Dice >= 0.90 on held-out cells.

This is the demo preset itself, unchanged (about a minute on the 2-core CI machine); its
wall-clock time is measured in the README, not asserted here.
"""

import pytest

from unet_jax.training.loop import train
from unet_jax.training.presets import PRESETS


@pytest.mark.slow
def test_demo_preset_reaches_dice_090_on_held_out_images(tmp_path):
    summary = train(PRESETS["demo"], tmp_path / "demo", progress=False, log=lambda _: None)
    assert summary["validation_whole_images"]["dice"] >= 0.90
    assert summary["validation_whole_images"]["num_images"] == PRESETS["demo"].cells_val_images
