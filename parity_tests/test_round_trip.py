"""Weights survive torch -> Flax -> torch and Flax -> torch -> Flax bit for bit, in memory and
through files (.pt, PyTorch .safetensors, Flax .safetensors via `unet_jax.weights.convert.convert`).

A port is a permutation of entries (transposes and flips), so nothing short of exact equality
of values, dtypes and shapes, BatchNorm's integer `num_batches_tracked` included, is right.
"""

from __future__ import annotations

import jax
import numpy as np
import pytest
import torch

from parity_tests import harness
from unet_jax.weights.convert import convert
from unet_jax.weights.io import load_variables, read_weights, save_torch_state_dict
from unet_jax.weights.port import flatten_variables, flax_to_torch, torch_to_flax

pytestmark = pytest.mark.host  # the same on any machine: a GPU call leaves it out

CONFIG_NAMES = list(harness.CASES)


def torch_state_with_history(name: str) -> dict[str, np.ndarray]:
    """unet_torch's real state_dict, with a BatchNorm step count that is not a default."""
    state = harness.torch_state(harness.build_torch(harness.CASES[name].config, seed=3))
    return {k: (np.array(7, np.int64) if k.endswith("num_batches_tracked") else v) for k, v in state.items()}


def assert_identical(got: dict, expected: dict):
    assert sorted(got) == sorted(expected)  # Flax trees and safetensors files keep no key order
    for key, value in expected.items():
        assert got[key].dtype == value.dtype, f"{key}: {got[key].dtype} != {value.dtype}"
        assert got[key].shape == value.shape, f"{key}: {got[key].shape} != {value.shape}"
        np.testing.assert_array_equal(got[key], value, err_msg=key)


def random_flax_variables(name: str) -> dict:
    """The Flax model's own variable tree (structure and dtypes from `init`, traced only),
    filled with random values so that every entry's position is checked."""
    case = harness.CASES[name]
    sample = jax.ShapeDtypeStruct((1, case.size, case.size, case.config.in_channels), np.float32)
    shapes = jax.eval_shape(harness.flax_model(case.config).init, jax.random.key(0), sample)
    rng = np.random.default_rng(0)

    def fill(leaf):
        if np.issubdtype(leaf.dtype, np.integer):
            return np.full(leaf.shape, 7, leaf.dtype)
        return rng.standard_normal(leaf.shape).astype(leaf.dtype)

    return jax.tree.map(fill, shapes)


@pytest.mark.parametrize("name", CONFIG_NAMES)
def test_torch_flax_torch_in_memory(name):
    cfg = harness.CASES[name].config
    state = torch_state_with_history(name)
    back = flax_to_torch(torch_to_flax(state, cfg), cfg)
    assert list(back) == list(state)  # and in unet_torch's own order
    assert_identical(back, state)
    harness.build_torch(cfg).load_state_dict({k: torch.from_numpy(v) for k, v in back.items()}, strict=True)


@pytest.mark.parametrize("name", CONFIG_NAMES)
def test_flax_torch_flax_in_memory(name):
    cfg = harness.CASES[name].config
    variables = random_flax_variables(name)
    back = torch_to_flax(flax_to_torch(variables, cfg), cfg)
    assert_identical(flatten_variables(back), flatten_variables(variables))


@pytest.mark.parametrize("torch_suffix", [".pt", ".safetensors"])
@pytest.mark.parametrize("name", ["features8", "batchnorm", "bilinear"])
def test_round_trip_through_files(name, torch_suffix, tmp_path):
    cfg = harness.CASES[name].config
    state = torch_state_with_history(name)
    source = save_torch_state_dict(state, cfg, tmp_path / f"torch{torch_suffix}")

    direction, _ = convert(source, tmp_path / "flax.safetensors", config=cfg)
    assert direction == "torch-to-flax"
    variables, stored = load_variables(tmp_path / "flax.safetensors")
    assert stored == cfg  # the Flax file carries its architecture
    assert_identical(flatten_variables(variables), flatten_variables(torch_to_flax(state, cfg)))

    direction, _ = convert(tmp_path / "flax.safetensors", tmp_path / f"back{torch_suffix}")
    assert direction == "flax-to-torch"
    kind, back, _ = read_weights(tmp_path / f"back{torch_suffix}")
    assert kind == "torch"
    assert_identical(back, state)
    if torch_suffix == ".pt":  # what a PyTorch user does with the file
        loaded = torch.load(tmp_path / "back.pt", weights_only=True)
        harness.build_torch(cfg).load_state_dict(loaded, strict=True)
