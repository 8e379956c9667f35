"""`--init-weights`: which architecture a new run takes, and the state it starts from."""

import dataclasses

import jax
import numpy as np
import pytest

from unet_jax.config import ConfigError, TrainConfig, UNetConfig
from unet_jax.data import Normalization
from unet_jax.model.unet import UNet
from unet_jax.training.loop import resume
from unet_jax.training.presets import resolve
from unet_jax.training.run_dir import RunDir
from unet_jax.training.step import create_train_state, make_optax_optimizer
from unet_jax.weights.io import load_variables, read_weights_file, save_flax_weights
from unet_jax.weights.port import PortError, flatten_variables, torch_to_flax
from unet_jax.weights.start_from import init_normalization, start_from_weights, with_init_architecture

torch = pytest.importorskip("torch")

CFG = UNetConfig(features=4, depth=2, norm="batch", padding="same")


def test_a_file_that_says_its_architecture_gives_it_to_the_run(tmp_path, make_state_dict):
    save_flax_weights(torch_to_flax(make_state_dict(CFG), CFG), CFG, tmp_path / "w.safetensors")
    options, weights = with_init_architecture({"init_weights": str(tmp_path / "w.safetensors"), "steps": 5})
    assert weights.config == CFG  # the file as read, for the run to start from without reading it again
    assert options["init_weights"] == str((tmp_path / "w.safetensors").absolute()) and options["steps"] == 5
    assert UNetConfig(**{k: options[k] for k in dataclasses.asdict(CFG)}) == CFG
    with pytest.raises(ConfigError, match="depth=2.*depth=3"):
        with_init_architecture({"init_weights": str(tmp_path / "w.safetensors"), "depth": 3})
    (tmp_path / "run").mkdir()  # a run directory: its weights (it was "does not exist")
    (tmp_path / "w.safetensors").rename(tmp_path / "run" / "weights.safetensors")
    options, weights = with_init_architecture({"init_weights": str(tmp_path / "run")})
    assert options["init_weights"] == str(tmp_path / "run" / "weights.safetensors") and weights.config == CFG


def test_a_plain_state_dict_leaves_the_options_as_given(tmp_path, make_state_dict):
    torch.save({k: torch.from_numpy(v) for k, v in make_state_dict(CFG).items()}, tmp_path / "w.pt")
    options = {"init_weights": str(tmp_path / "w.pt"), "features": 4}
    assert with_init_architecture(options)[0] == {**options, "init_weights": str((tmp_path / "w.pt").absolute())}
    assert with_init_architecture({"steps": 3}) == ({"steps": 3}, None)


@pytest.mark.slow
def test_the_run_starts_at_step_0_with_the_weights_and_a_fresh_optimizer(tmp_path, make_state_dict):
    state_dict = {k: v.astype(np.float64) if v.dtype == np.float32 else v for k, v in make_state_dict(CFG, seed=3).items()}
    torch.save({k: torch.from_numpy(v) for k, v in state_dict.items()}, tmp_path / "w64.pt")  # a float64 checkpoint
    cfg = TrainConfig(model=CFG, tile_size=16, batch_size=1, init_weights=str(tmp_path / "w64.pt"))
    template = create_train_state(UNet(CFG), make_optax_optimizer("adam", 1e-3), seed=0, input_size=16)
    state = start_from_weights(template, read_weights_file(cfg.init_weights), cfg.model)
    expected = flatten_variables(torch_to_flax(state_dict, CFG))
    got = flatten_variables({"params": state.params, "batch_stats": state.batch_stats})
    assert got.keys() == expected.keys()
    for key, value in got.items():
        assert value.dtype == (np.int32 if key.endswith("num_batches_tracked") else np.float32), key
        np.testing.assert_array_equal(value, expected[key].astype(value.dtype), err_msg=key)
    assert int(state.step) == 0
    for fresh, kept in zip(jax.tree.leaves(template.opt_state), jax.tree.leaves(state.opt_state)):
        np.testing.assert_array_equal(fresh, kept)
    wrong = dataclasses.replace(cfg, model=dataclasses.replace(CFG, features=8), tile_size=16)
    with pytest.raises(PortError, match="--features 4"):
        start_from_weights(create_train_state(UNet(wrong.model), make_optax_optimizer(), 0, 16), read_weights_file(cfg.init_weights),
                           wrong.model)


def test_the_run_keeps_the_normalization_the_weights_were_trained_with(tmp_path):
    cfg = TrainConfig(model=CFG, tile_size=16, batch_size=1, init_weights=str(tmp_path / "run" / "weights.safetensors"))
    assert init_normalization(cfg) == Normalization(mean=(0.0,), std=(1.0,))  # a bare file: images in [0, 1]
    (tmp_path / "run").mkdir()
    (tmp_path / "run" / "normalization.json").write_text('{"mean": [0.25], "std": [2.0]}')  # a run's weights
    assert init_normalization(cfg) == Normalization(mean=(0.25,), std=(2.0,))
    assert init_normalization(dataclasses.replace(cfg, init_weights=None)) is None


@pytest.mark.slow
def test_a_run_resumed_before_its_first_checkpoint_starts_from_the_init_weights_again(tmp_path, make_state_dict):
    """A run that stopped before its first checkpoint left only config.json (with the init weights'
    absolute path): --resume restarts it from step 0, from those weights, not from a random draw."""
    cfg_model = UNetConfig(features=4, depth=2)
    torch.save({k: torch.from_numpy(v) for k, v in make_state_dict(cfg_model, seed=5).items()}, tmp_path / "w.pt")
    options, _ = with_init_architecture({"init_weights": str(tmp_path / "w.pt"), "features": 4, "depth": 2})
    cfg = resolve("demo", {**options, "tile_size": 60, "batch_size": 2, "cells_train_images": 4, "cells_val_images": 2,
                           "cells_image_size": 64, "val_tiles_per_image": 1, "steps": 1, "learning_rate": 1e-9})
    run = RunDir(tmp_path / "run")
    (tmp_path / "run").mkdir()
    run.save_config(cfg)  # what a run writes once it has started, before its first checkpoint
    assert run.state == "unstarted"
    resume(tmp_path / "run", progress=False, log=lambda _: None)
    start = flatten_variables(torch_to_flax(make_state_dict(cfg_model, seed=5), cfg_model))
    tuned = flatten_variables(load_variables(tmp_path / "run" / "weights.safetensors")[0])
    for key in (k for k in start if k.startswith("params/")):
        np.testing.assert_allclose(tuned[key], start[key], rtol=0, atol=1e-6, err_msg=key)  # random init: ~0.1 away
