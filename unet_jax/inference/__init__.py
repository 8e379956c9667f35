"""Using trained weights: the predictor, the overlap-tile plan, output files, evaluation and its
metrics. Never imports `unet_jax.training` (tests/unit/test_layering.py)."""
