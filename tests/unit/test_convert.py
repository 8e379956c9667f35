"""`convert`: torch <-> flax files, direction from the file type, seed naming."""

import numpy as np
import pytest

from unet_jax.config import UNetConfig
from unet_jax.runtime.safe_files import OutputError
from unet_jax.weights.convert import convert
from unet_jax.weights.io import WeightsFileError, load_variables, read_weights
from unet_jax.weights.namings import seed_layer_names

torch = pytest.importorskip("torch")

CFG = UNetConfig(features=4, depth=2, norm="batch", in_channels=3)


@pytest.fixture
def torch_file(tmp_path, make_state_dict):
    """A .pt file holding a random unet_torch state_dict for CFG, and that state_dict."""
    sd = {k: torch.from_numpy(v) for k, v in make_state_dict(CFG).items()}
    torch.save(sd, tmp_path / "model.pt")
    return tmp_path / "model.pt", sd


def _assert_state_dicts_equal(actual, expected):
    assert list(actual) == list(expected)
    for key in expected:
        assert actual[key].dtype == expected[key].dtype and actual[key].shape == expected[key].shape, key
        assert torch.equal(actual[key], expected[key]), key


def test_torch_to_flax_to_torch_round_trip_is_exact(tmp_path, torch_file):
    src, sd = torch_file
    assert convert(src, tmp_path / "model.safetensors", config=CFG) == ("torch-to-flax", CFG)
    kind, _, stored = read_weights(tmp_path / "model.safetensors")
    assert (kind, stored) == ("flax", CFG)  # the config travels in the file ...
    # ... so the way back needs none, and picks its direction from the file.
    assert convert(tmp_path / "model.safetensors", tmp_path / "back.pt") == ("flax-to-torch", CFG)
    _assert_state_dicts_equal(torch.load(tmp_path / "back.pt", weights_only=True), sd)


def test_flax_to_torch_safetensors_and_back(tmp_path, torch_file):
    src, sd = torch_file
    convert(src, tmp_path / "model.safetensors", config=CFG)
    assert convert(tmp_path / "model.safetensors", tmp_path / "torch.safetensors")[0] == "flax-to-torch"
    kind, tensors, stored = read_weights(tmp_path / "torch.safetensors")
    assert (kind, stored) == ("torch", CFG)  # torch-style keys, config kept in the metadata
    assert set(tensors) == set(sd)
    for key in sd:
        np.testing.assert_array_equal(tensors[key], sd[key].numpy())
    assert convert(tmp_path / "torch.safetensors", tmp_path / "again.safetensors")[0] == "torch-to-flax"
    first, _ = load_variables(tmp_path / "model.safetensors")
    again, _ = load_variables(tmp_path / "again.safetensors")
    np.testing.assert_array_equal(first["params"]["up2"]["conv1"]["kernel"], again["params"]["up2"]["conv1"]["kernel"])


def test_explicit_direction_that_contradicts_the_file_is_refused(tmp_path, torch_file):
    src, _ = torch_file
    with pytest.raises(WeightsFileError, match="holds torch weights, but the direction is flax-to-torch"):
        convert(src, tmp_path / "out.pt", direction="flax-to-torch", config=CFG)
    convert(src, tmp_path / "model.safetensors", direction="torch-to-flax", config=CFG)
    with pytest.raises(WeightsFileError, match="holds flax weights, but the direction is torch-to-flax"):
        convert(tmp_path / "model.safetensors", tmp_path / "out.safetensors", direction="torch-to-flax")
    assert not (tmp_path / "out.pt").exists() and not (tmp_path / "out.safetensors").exists()


def test_unknown_direction_is_refused(tmp_path, torch_file):
    with pytest.raises(ValueError, match="direction must be one of"):
        convert(torch_file[0], tmp_path / "out.safetensors", direction="pytorch-to-jax", config=CFG)


def test_flax_weights_are_not_written_as_pt(tmp_path, torch_file):
    with pytest.raises(WeightsFileError, match=r"\.safetensors"):
        convert(torch_file[0], tmp_path / "out.pt", config=CFG)
    assert not (tmp_path / "out.pt").exists()


def test_a_run_directory_converts_its_weights_and_a_torch_name_lists_every_suffix(tmp_path, torch_file):
    run = tmp_path / "run"  # `convert` said a run directory "does not exist", though `predict` takes one
    run.mkdir()
    convert(torch_file[0], run / "weights.safetensors", config=CFG)
    assert convert(run, run / "model.pt") == ("flax-to-torch", CFG)
    _assert_state_dicts_equal(torch.load(run / "model.pt", weights_only=True), torch_file[1])
    with pytest.raises(WeightsFileError, match=r"a\.onnx: expected a file name ending in \.pt or \.pth or \.safetensors"):
        convert(run, tmp_path / "a.onnx")


def test_convert_does_not_overwrite_unless_asked(tmp_path, torch_file):
    dst = tmp_path / "model.safetensors"
    dst.write_bytes(b"precious")
    with pytest.raises(OutputError, match="already exists"):
        convert(torch_file[0], dst, config=CFG)
    assert dst.read_bytes() == b"precious"
    convert(torch_file[0], dst, config=CFG, overwrite=True)
    assert read_weights(dst)[0] == "flax"


def test_wrong_config_for_a_torch_file_is_a_port_error(tmp_path, torch_file):
    from unet_jax.weights.port import PortError

    with pytest.raises(PortError, match="wrong shape: down1.conv1.weight"):
        convert(torch_file[0], tmp_path / "out.safetensors", config=UNetConfig(features=4, depth=2, norm="batch"))
    assert not (tmp_path / "out.safetensors").exists()


def test_seed_naming_output_and_back(tmp_path, make_state_dict):
    cfg = UNetConfig(features=4)  # the seed's structure (depth 4, no norm), small channels
    sd = {k: torch.from_numpy(v) for k, v in make_state_dict(cfg).items()}
    torch.save(sd, tmp_path / "model.pt")
    convert(tmp_path / "model.pt", tmp_path / "model.safetensors", config=cfg)
    convert(tmp_path / "model.safetensors", tmp_path / "seed.pt", naming="seed")
    seed_sd = torch.load(tmp_path / "seed.pt", weights_only=True)
    names = seed_layer_names(cfg)
    expected = {f"{names[k.rsplit('.', 1)[0]]}.{k.rsplit('.', 1)[1]}": v for k, v in sd.items()}
    assert set(seed_sd) == set(expected)
    assert {"conv1_1.weight", "conv5_2.bias", "up_conv_4.weight", "conv9_2.weight", "conv_10.bias"} <= set(seed_sd)
    for key, value in expected.items():
        assert torch.equal(seed_sd[key], value), key
    # A seed-named .pt carries no config; with one given it converts back to the same weights.
    convert(tmp_path / "seed.pt", tmp_path / "from-seed.safetensors", config=cfg)
    a, _ = load_variables(tmp_path / "model.safetensors")
    b, _ = load_variables(tmp_path / "from-seed.safetensors")
    for block in ("down1", "bottom", "up4"):
        np.testing.assert_array_equal(a["params"][block]["conv2"]["kernel"], b["params"][block]["conv2"]["kernel"])
    np.testing.assert_array_equal(a["params"]["upconv1"]["kernel"], b["params"]["upconv1"]["kernel"])


def test_seed_naming_is_refused_for_batch_norm(tmp_path, torch_file):
    convert(torch_file[0], tmp_path / "model.safetensors", config=CFG)
    with pytest.raises(ValueError, match="seed"):
        convert(tmp_path / "model.safetensors", tmp_path / "seed.pt", naming="seed")
    assert not (tmp_path / "seed.pt").exists()


def test_convert_never_replaces_its_source_even_with_overwrite(tmp_path, torch_file):
    # The user ran `unet-jax convert X X --overwrite`: X used to be replaced by its own conversion.
    src, _ = torch_file
    convert(src, tmp_path / "model.safetensors", config=CFG)
    before = (tmp_path / "model.safetensors").read_bytes()
    for path in (tmp_path / "model.safetensors", tmp_path / "." / "model.safetensors"):
        with pytest.raises(OutputError, match="is the input"):
            convert(tmp_path / "model.safetensors", path, overwrite=True)
    assert (tmp_path / "model.safetensors").read_bytes() == before
