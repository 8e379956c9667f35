"""Parity tests between unet_jax (Flax) and unet_torch (PyTorch): forward, gradients,
optimizer steps, weight round trips. A package so that `python -m parity_tests.run_report`
works and the test modules share `parity_tests.harness`."""
