"""Bilinear networks' tiles equal the whole-image pass in float64, in a process that enables float64."""

import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]


def test_bilinear_tiles_equal_the_whole_image_pass_in_float64():
    """The same claim computed in float64 (in a fresh interpreter: x64 is process-wide), so that
    no float32 rounding can hide a difference: what is left is the float32 output's rounding."""
    code = f"""
import sys
sys.path.insert(0, {str(REPO)!r})
import jax
jax.config.update("jax_enable_x64", True)
import jax.numpy as jnp, numpy as np
import tests.unit.test_predict as t
from unet_jax.config import UNetConfig
from unet_jax.inference.predictor import Predictor, predict_probabilities
from unet_jax.inference.tile_plan import tile_geometry
errors = []
for depth, tile_size, shape in t.BILINEAR_CASES:
    config = UNetConfig(features=4, depth=depth, upsample="bilinear")
    for seed in range(2):
        predictor = Predictor(config, t.random_variables(config, seed=seed), dtype=jnp.float64)
        image = t._image(*shape, seed=seed)
        tiled = predict_probabilities(predictor, image, tile_size, batch_size=4)
        reference = t._whole_image_reference(predictor, image, tile_geometry(config, tile_size))
        errors.append(t._relative_max_error(tiled, reference))
print(max(errors))
"""
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    # Measured <= 4.5e-8 over seeds 0-7: the float32 output canvas rounds each probability to
    # within 2**-24 = 6e-8 of its float64 value. (One pixel of margin less: 1.5e-2 and 1.0e-3.)
    assert float(result.stdout) <= 1e-7
