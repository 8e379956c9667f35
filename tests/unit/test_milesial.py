"""milesial/Pytorch-UNet checkpoints, both ways, against a network in its layout written in
tests/helpers/milesial_layout.py (shares no code with unet_torch or the port's table).

Tolerances, measured on a 2-core AMD EPYC CPU (jax 0.10.2, torch 2.13 CPU), features 8, depth 4,
32x32 inputs, eval-mode BatchNorm with random running statistics: in float64 Flax and torch
agree to 8e-16 of the output's largest value; in float32 (Flax at "highest" matmul precision)
each is within 3.7e-7 of the float64 reference, and they are within 4.5e-7 of each other.
"""

import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from tests.helpers.milesial_layout import MilesialLayoutUNet, randomize_batch_norm
from unet_jax import UNet
from unet_jax.cli import main
from unet_jax.config import ConfigError, UNetConfig
from unet_jax.inference.predictor import Predictor, predict_probabilities
from unet_jax.weights.convert import convert
from unet_jax.weights.io import load_variables, read_weights_file
from unet_jax.weights.namings import UnsupportedCheckpointError, milesial_layer_names
from unet_jax.weights.port import flax_to_torch, torch_to_flax

torch = pytest.importorskip("torch")

FLOAT32_TOLERANCE = 2e-6  # relative to max|float64 output|; measured up to 4.5e-7 (module docstring)
FLOAT64_TOLERANCE = 1e-13  # measured 8e-16
MASK_VALUES = [0, 255]  # milesial's train.py stores the mask pixel value of each class


def milesial_config(**fields):
    return UNetConfig(**{"in_channels": 3, "num_classes": 2, "padding": "same", "norm": "batch", "upsample": "transpose", **fields})


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    """(path, network): a milesial-layout network (features 8, depth 4) saved as its train.py does."""
    torch.manual_seed(0)
    net = randomize_batch_norm(MilesialLayoutUNet(3, 2, features=8, depth=4)).eval()
    state_dict = net.state_dict()
    state_dict["mask_values"] = MASK_VALUES
    path = tmp_path_factory.mktemp("milesial") / "checkpoint_epoch5.pth"
    torch.save(state_dict, path)
    return path, net


def relative_error(a, reference) -> float:
    return float(np.abs(np.asarray(a, np.float64) - reference).max() / np.abs(reference).max())


@pytest.mark.parametrize("depth", [2, 4])
def test_milesial_names_are_exactly_the_layouts_keys_and_shapes(depth, make_state_dict):
    cfg = milesial_config(features=4, depth=depth)
    written = flax_to_torch(torch_to_flax(make_state_dict(cfg), cfg), cfg, naming="milesial")
    layout = MilesialLayoutUNet(3, 2, features=4, depth=depth).state_dict()
    assert list(written) == [k for k in layout]  # same keys, and in the layout's own order
    for key, value in layout.items():
        assert written[key].shape == tuple(value.shape), key


def test_the_file_alone_gives_the_architecture_and_its_mask_values(checkpoint):
    path, _ = checkpoint
    weights = read_weights_file(path)
    assert weights.config == milesial_config(features=8, depth=4)  # no options: milesial's shapes say it all
    assert weights.extras == {"mask_values": MASK_VALUES}
    assert "kept its non-tensor entry mask_values=[0, 255]" in weights.notes


@pytest.mark.slow
@pytest.mark.parametrize("precision", ["float32", "float64"])
def test_ported_checkpoint_reproduces_the_milesial_network(checkpoint, precision):
    path, net = checkpoint
    variables, cfg = load_variables(path)
    images = np.random.default_rng(1).normal(size=(2, 3, 32, 32))  # NCHW
    with torch.no_grad():
        reference = net.double()(torch.from_numpy(images)).numpy()  # [N, 2, 32, 32], float64
        torch32 = net.float()(torch.from_numpy(images).float()).numpy()
    nhwc = images.transpose(0, 2, 3, 1)
    if precision == "float64":
        with jax.enable_x64(True):
            params = jax.tree.map(lambda a: jnp.asarray(a, jnp.float64) if a.dtype == np.float32 else a, variables)
            flax = np.asarray(UNet(cfg, dtype=jnp.float64).apply(params, jnp.asarray(nhwc))).transpose(0, 3, 1, 2)
        assert relative_error(flax, reference) <= FLOAT64_TOLERANCE
    else:
        with jax.default_matmul_precision("highest"):
            flax = np.asarray(UNet(cfg).apply(variables, jnp.asarray(nhwc, jnp.float32))).transpose(0, 3, 1, 2)
        assert flax.dtype == np.float32
        assert relative_error(flax, reference) <= FLOAT32_TOLERANCE
        assert relative_error(torch32, reference) <= FLOAT32_TOLERANCE
        assert relative_error(flax, torch32.astype(np.float64)) <= FLOAT32_TOLERANCE


def test_export_loads_strictly_into_the_milesial_network_and_keeps_mask_values(checkpoint, tmp_path, capsys):
    path, net = checkpoint
    assert main(["convert", str(path), str(tmp_path / "flax.safetensors")]) == 0
    out = capsys.readouterr().out
    assert "mask_values=[0, 255]" in out and "key naming: milesial" in out
    assert main(["convert", str(tmp_path / "flax.safetensors"), str(tmp_path / "back.pth"), "--naming", "milesial"]) == 0
    state_dict = torch.load(tmp_path / "back.pth", weights_only=True)
    fresh = MilesialLayoutUNet(3, 2, features=8, depth=4)
    fresh.load_state_dict(state_dict, strict=True)  # a plain state_dict: no mask_values among the tensors
    original = net.float().state_dict()
    for key, value in fresh.state_dict().items():
        assert value.dtype == original[key].dtype and torch.equal(value, original[key]), key
    sidecar = json.loads((tmp_path / "back.pth.json").read_text())
    assert sidecar["extras"] == {"mask_values": MASK_VALUES} and sidecar["naming"] == "milesial"
    # The exported file describes itself: back to Flax with no options, same weights.
    assert convert(tmp_path / "back.pth", tmp_path / "again.safetensors")[1] == milesial_config(features=8, depth=4)
    assert read_weights_file(tmp_path / "again.safetensors").extras == {"mask_values": MASK_VALUES}


def test_milesial_naming_is_refused_for_configs_milesial_does_not_have(make_state_dict):
    cfg = UNetConfig(features=4, depth=2, norm="batch")  # valid padding: milesial's convs are padded
    with pytest.raises(ConfigError, match="padding='valid'"):
        flax_to_torch(torch_to_flax(make_state_dict(cfg), cfg), cfg, naming="milesial")
    with pytest.raises(ConfigError, match="norm=None"):
        milesial_layer_names(UNetConfig(padding="same"))


def test_contradicting_options_for_a_milesial_file_are_refused(checkpoint):
    path, _ = checkpoint
    with pytest.raises(ConfigError, match="milesial/Pytorch-UNet state_dict.*features=8.*features=16"):
        load_variables(path, {"features": 16})


def test_bilinear_checkpoint_is_refused_with_the_reason(tmp_path, capsys):
    net = MilesialLayoutUNet(3, 2, bilinear=True, features=8, depth=4)
    torch.save({**net.state_dict(), "mask_values": [0, 1]}, tmp_path / "bilinear.pth")
    with pytest.raises(UnsupportedCheckpointError, match="bilinear=True") as info:
        load_variables(tmp_path / "bilinear.pth")
    assert "bilinear=False" in str(info.value) and "bilinear.pth" in str(info.value)
    assert main(["convert", str(tmp_path / "bilinear.pth"), str(tmp_path / "out.safetensors")]) == 2
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1 and "bilinear=True" in err
    assert not (tmp_path / "out.safetensors").exists()


@pytest.mark.slow
def test_size_rule_milesial_pads_any_size_this_port_takes_multiples_of_2_to_the_depth(checkpoint):
    """milesial pads the upsampled map to the skip's size, so it runs any size; our network needs
    sides divisible by 2**depth and says so, and prediction reaches any size through tiling."""
    path, net = checkpoint
    with torch.no_grad():
        assert net.float()(torch.zeros(1, 3, 36, 44)).shape == (1, 2, 36, 44)
    variables, cfg = load_variables(path)
    with pytest.raises(ConfigError, match="32.*48"):
        UNet(cfg).apply(variables, jnp.zeros((1, 36, 44, 3)))
    image = np.random.default_rng(2).uniform(size=(36, 44, 3)).astype(np.float32)
    probabilities = predict_probabilities(Predictor.from_weights(path), image)
    assert probabilities.shape == (36, 44, 2) and np.allclose(probabilities.sum(-1), 1, atol=1e-5)
