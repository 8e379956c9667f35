"""Weight files: safe .pt reading, clear errors on bad files, atomic and non-clobbering writes."""

import dataclasses
import os
import types

import numpy as np
import pytest

from unet_jax.config import ConfigError, UNetConfig
from unet_jax.runtime import safe_files as files
from unet_jax.runtime.safe_files import OutputError
from unet_jax.weights.io import (
    WeightsFileError,
    config_to_json,
    load_variables,
    read_weights,
    read_weights_file,
    save_flax_weights,
    save_torch_state_dict,
)
from unet_jax.weights.port import PortError, flatten_variables, torch_to_flax

CFG = UNetConfig(features=4, depth=2, norm="batch")


def _torch():
    return pytest.importorskip("torch")


@pytest.fixture
def torch_state_dict(make_state_dict):
    """`torch_state_dict(cfg=CFG)` -> a random state_dict of torch tensors (skips without torch)."""
    torch = _torch()
    return lambda cfg=CFG: {k: torch.from_numpy(v) for k, v in make_state_dict(cfg).items()}


@pytest.fixture
def variables(make_state_dict):
    """Flax variables (numpy leaves) for CFG."""
    return torch_to_flax(make_state_dict(CFG), CFG)


def write_marker(path):
    """What a malicious checkpoint would run on load; here it only creates a file."""
    with open(path, "w") as f:
        f.write("code ran")


class CodeCarrier:
    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):  # unpickling calls write_marker(marker)
        return write_marker, (self.marker,)


def _files_in(directory):
    return sorted(p.name for p in directory.iterdir())


# ------------------------------------------------------------------ reading .pt
def test_torch_state_dict_is_read_as_numpy(tmp_path, torch_state_dict):
    torch = _torch()
    sd = torch_state_dict()
    torch.save(sd, tmp_path / "w.pth")
    kind, tensors, config = read_weights(tmp_path / "w.pth")
    assert (kind, config) == ("torch", None)
    assert tensors.keys() == sd.keys()
    for key, value in sd.items():
        assert isinstance(tensors[key], np.ndarray)
        np.testing.assert_array_equal(tensors[key], value.numpy())
    assert tensors["down1.norm1.num_batches_tracked"].dtype == np.int64


def test_pickle_that_carries_code_is_refused_and_never_runs(tmp_path, torch_state_dict):
    torch = _torch()
    marker = tmp_path / "marker"
    sd = torch_state_dict()
    sd["evil"] = CodeCarrier(str(marker))
    torch.save(sd, tmp_path / "evil.pt")
    assert not marker.exists()  # saving does not run it
    with pytest.raises(WeightsFileError) as info:
        read_weights(tmp_path / "evil.pt")
    assert "refused" in str(info.value) and "evil.pt" in str(info.value)
    assert not marker.exists()
    with pytest.raises(WeightsFileError, match="refused"):
        load_variables(tmp_path / "evil.pt", CFG)
    assert not marker.exists()
    # The payload is real: an unsafe load would have run it (proves the test is not vacuous).
    torch.load(tmp_path / "evil.pt", weights_only=False)
    assert marker.read_text() == "code ran"


def test_os_system_payload_is_refused(tmp_path):
    torch = _torch()
    marker = tmp_path / "system-marker"

    class SystemCall:
        def __reduce__(self):
            return os.system, (f"touch {marker}",)

    torch.save({"w": torch.zeros(2), "x": SystemCall()}, tmp_path / "system.pt")
    with pytest.raises(WeightsFileError, match="refused"):
        read_weights(tmp_path / "system.pt")
    assert not marker.exists()


@pytest.mark.parametrize("name", ["random.pt", "truncated.pt", "text.pt", "empty.pth"])
def test_corrupt_torch_file_names_the_file(tmp_path, torch_state_dict, name):
    torch = _torch()
    torch.save(torch_state_dict(), tmp_path / "good.pt")
    good = (tmp_path / "good.pt").read_bytes()
    content = {
        "random.pt": np.random.default_rng(0).bytes(4096),
        "truncated.pt": good[: len(good) // 2],
        "text.pt": b"this is a text file, not a checkpoint\n",
        "empty.pth": b"",
    }[name]
    path = tmp_path / name
    path.write_bytes(content)
    with pytest.raises(WeightsFileError) as info:
        read_weights(path)
    assert str(path) in str(info.value)


def test_random_bytes_are_reported_as_unreadable_not_as_unsafe(tmp_path):
    _torch()
    path = tmp_path / "random.pt"
    path.write_bytes(np.random.default_rng(0).bytes(4096))
    with pytest.raises(WeightsFileError) as info:
        read_weights(path)
    assert "refused" not in str(info.value) and "not a readable" in str(info.value)


def test_corrupt_safetensors_names_the_file(tmp_path, make_state_dict):
    save_flax_weights(torch_to_flax(make_state_dict(CFG), CFG), CFG, tmp_path / "good.safetensors")
    data = (tmp_path / "good.safetensors").read_bytes()
    for name, content in [
        ("truncated.safetensors", data[: len(data) // 2]),
        ("header-only.safetensors", data[:8]),
        ("random.safetensors", np.random.default_rng(1).bytes(1000)),
    ]:
        path = tmp_path / name
        path.write_bytes(content)
        with pytest.raises(WeightsFileError) as info:
            read_weights(path)
        assert str(path) in str(info.value)


def test_missing_file_is_file_not_found_naming_it(tmp_path):
    for name in ("nope.pt", "nope.safetensors"):
        with pytest.raises(FileNotFoundError, match=name):
            read_weights(tmp_path / name)
    with pytest.raises(FileNotFoundError, match="a-directory.pt"):
        (tmp_path / "a-directory.pt").mkdir()
        read_weights(tmp_path / "a-directory.pt")


@pytest.mark.parametrize("name", ["weights.ckpt", "weights.npz", "weights"])
def test_unknown_suffix_lists_the_supported_ones(tmp_path, name):
    path = tmp_path / name
    path.write_bytes(b"\0" * 16)
    with pytest.raises(WeightsFileError) as info:
        read_weights(path)
    message = str(info.value)
    assert ".safetensors" in message and ".pt" in message and ".pth" in message and name in message


@pytest.mark.parametrize("wrapper_key", ["state_dict", "model_state_dict", "model"])
def test_training_checkpoint_wrappers_are_unwrapped(tmp_path, wrapper_key, torch_state_dict):
    torch = _torch()
    sd = torch_state_dict()
    torch.save({wrapper_key: sd, "epoch": 3, "optimizer": {"lr": 1e-3}}, tmp_path / "ckpt.pt")
    _, tensors, _ = read_weights(tmp_path / "ckpt.pt")
    assert tensors.keys() == sd.keys()
    variables, config = load_variables(tmp_path / "ckpt.pt", CFG)
    assert config == CFG and variables["params"]["head"]["kernel"].shape == (1, 1, 4, 2)


@pytest.mark.parametrize("payload", [[1, 2, 3], {"epoch": 3, "lr": 0.1}, 42])
def test_non_state_dict_pickle_is_a_clear_error(tmp_path, payload):
    torch = _torch()
    torch.save(payload, tmp_path / "other.pt")
    with pytest.raises(WeightsFileError, match="does not hold a state_dict") as info:
        read_weights(tmp_path / "other.pt")
    assert "other.pt" in str(info.value)


def test_bfloat16_tensors_are_read_as_float32(tmp_path, torch_state_dict):
    torch = _torch()
    sd = torch_state_dict()
    bf16 = {k: v.to(torch.bfloat16) if v.is_floating_point() else v for k, v in sd.items()}
    torch.save(bf16, tmp_path / "bf16.pt")
    _, tensors, _ = read_weights(tmp_path / "bf16.pt")
    for key, value in bf16.items():
        if value.dtype == torch.bfloat16:
            assert tensors[key].dtype == np.float32
            np.testing.assert_array_equal(tensors[key], value.float().numpy())  # bf16 -> f32 is exact
    variables, _ = load_variables(tmp_path / "bf16.pt", CFG)
    assert variables["params"]["down1"]["conv1"]["kernel"].dtype == np.float32


def test_torch_file_for_another_config_is_a_port_error(tmp_path, torch_state_dict):
    torch = _torch()
    torch.save(torch_state_dict(UNetConfig(features=8, depth=2, norm="batch")), tmp_path / "w.pt")
    with pytest.raises(PortError, match="wrong shape: down1.conv1.weight"):
        load_variables(tmp_path / "w.pt", CFG)


# ------------------------------------------------------------------- writing
def test_flax_safetensors_round_trip_keeps_the_config(tmp_path, variables):
    path = save_flax_weights(variables, CFG, tmp_path / "w.safetensors")
    kind, _, stored = read_weights(path)
    assert (kind, stored) == ("flax", CFG)
    loaded, config = load_variables(path)  # the stored config, not the seed default
    assert config == CFG
    expected, actual = flatten_variables(variables), flatten_variables(loaded)
    assert expected.keys() == actual.keys()
    for key in expected:
        assert actual[key].dtype == expected[key].dtype and actual[key].shape == expected[key].shape
        np.testing.assert_array_equal(actual[key], expected[key])


def test_save_keeps_only_params_and_batch_stats(tmp_path, variables):
    variables = dict(variables, intermediates={"x": np.zeros(3)})
    save_flax_weights(variables, CFG, tmp_path / "w.safetensors")
    loaded, _ = load_variables(tmp_path / "w.safetensors")
    assert set(loaded) == {"params", "batch_stats"}


def test_save_refuses_to_overwrite_and_leaves_the_file_alone(tmp_path, variables):
    path = tmp_path / "w.safetensors"
    path.write_bytes(b"precious")
    with pytest.raises(OutputError, match="already exists") as info:
        save_flax_weights(variables, CFG, path)
    assert "overwrite" in str(info.value)
    assert path.read_bytes() == b"precious"
    assert _files_in(tmp_path) == ["w.safetensors"]  # no temporary left behind
    save_flax_weights(variables, CFG, path, overwrite=True)
    assert load_variables(path)[1] == CFG


def test_torch_save_refuses_to_overwrite(tmp_path, make_state_dict):
    _torch()
    path = tmp_path / "w.pt"
    path.write_bytes(b"precious")
    with pytest.raises(OutputError, match="already exists"):
        save_torch_state_dict(make_state_dict(CFG), CFG, path)
    assert path.read_bytes() == b"precious"
    save_torch_state_dict(make_state_dict(CFG), CFG, path, overwrite=True)
    assert read_weights(path)[1].keys() == make_state_dict(CFG).keys()


def test_failed_write_leaves_no_partial_file(tmp_path, monkeypatch, variables):
    def crash(src, dst):
        raise OSError("disk full")

    fake_os = types.SimpleNamespace(fdopen=os.fdopen, replace=crash, access=os.access, W_OK=os.W_OK, X_OK=os.X_OK)
    monkeypatch.setattr(files, "os", fake_os)
    existing = tmp_path / "old.safetensors"
    existing.write_bytes(b"precious")
    for path, overwrite in ((tmp_path / "new.safetensors", False), (existing, True)):
        with pytest.raises(OSError, match="disk full"):
            save_flax_weights(variables, CFG, path, overwrite=overwrite)
    assert _files_in(tmp_path) == ["old.safetensors"]
    assert existing.read_bytes() == b"precious"


def test_save_checks_the_suffix(tmp_path, variables):
    with pytest.raises(WeightsFileError, match=r"\.safetensors"):
        save_flax_weights(variables, CFG, tmp_path / "w.pt")
    assert _files_in(tmp_path) == []


def test_stored_config_that_is_not_valid_is_reported(tmp_path):
    from safetensors.numpy import save_file

    path = tmp_path / "bad.safetensors"
    save_file({"params/head/bias": np.zeros(2, np.float32)}, str(path), metadata={"unet_config": '{"depth": 0}'})
    with pytest.raises(WeightsFileError, match="unet_config") as info:
        read_weights(path)
    assert "bad.safetensors" in str(info.value)


def test_flax_file_that_does_not_fit_its_config_is_a_port_error(tmp_path, variables):
    del variables["params"]["head"]
    save_flax_weights(variables, CFG, tmp_path / "w.safetensors")
    with pytest.raises(PortError, match="missing: params/head/kernel"):
        load_variables(tmp_path / "w.safetensors")


# ------------------------------------------------------------------- what users pass
def test_architecture_options_that_contradict_the_stored_config_are_an_error(tmp_path, variables):
    # The user ran `evaluate --weights w.safetensors --num-classes 3` after a mask error: the flag
    # used to be ignored silently.
    path = save_flax_weights(variables, CFG, tmp_path / "w.safetensors")
    with pytest.raises(ConfigError) as info:
        load_variables(path, {"num_classes": 3, "features": 4})
    message = str(info.value)
    assert "w.safetensors" in message and "num_classes=2" in message and "num_classes=3" in message
    assert "features" not in message  # an agreeing option is no conflict
    with pytest.raises(ConfigError, match="depth=2"):
        load_variables(path, UNetConfig())  # a whole config counts field by field
    assert load_variables(path, {"depth": 2, "norm": "batch"})[1] == CFG


def test_options_describe_a_file_without_a_config(tmp_path, torch_state_dict):
    torch = _torch()
    torch.save(torch_state_dict(), tmp_path / "w.pt")
    assert load_variables(tmp_path / "w.pt", {"features": 4, "depth": 2, "norm": "batch"})[1] == CFG


def test_a_plain_pickle_is_refused_without_torch_advice(tmp_path):
    import pickle

    _torch()
    with open(tmp_path / "model.pt", "wb") as f:
        pickle.dump({"down1.conv1.weight": np.zeros((4, 1, 3, 3), np.float32)}, f)
    with pytest.raises(WeightsFileError) as info:
        read_weights(tmp_path / "model.pt")
    message = str(info.value)
    assert "model.pt is a plain Python pickle" in message and "torch.save(model.state_dict()" in message
    assert "weights_only" not in message and "\n" not in message


def test_weights_with_nan_values_are_refused(tmp_path, variables):
    variables["params"]["up1"]["conv2"]["kernel"][0, 0, 0, 0] = np.nan
    path = save_flax_weights(variables, CFG, tmp_path / "diverged.safetensors")
    with pytest.raises(WeightsFileError, match=r"diverged.safetensors: 1 tensor\(s\) hold NaN.*params/up1/conv2/kernel"):
        load_variables(path)


def test_integer_tensors_in_a_flax_file_are_refused_and_float64_ones_noted(tmp_path, variables):
    # Both were accepted without a word.
    head = variables["params"]["head"]
    wide = {**variables, "params": {**variables["params"], "head": {k: v.astype(np.float64) for k, v in head.items()}}}
    notes = read_weights_file(save_flax_weights(wide, CFG, tmp_path / "wide.safetensors")).notes
    assert notes[0].startswith("2 float64 tensor(s) (params/head/") and notes[0].endswith("read as float32")
    variables["params"]["up1"]["conv2"]["kernel"] = variables["params"]["up1"]["conv2"]["kernel"].astype(np.int8)
    path = save_flax_weights(variables, CFG, tmp_path / "quantised.safetensors")
    with pytest.raises(WeightsFileError, match=r"1 tensor\(s\) are not floating point \(params/up1/conv2/kernel \(int8\)\)"):
        load_variables(path)


def test_a_flax_file_without_or_with_lying_metadata_gets_what_its_shapes_say(tmp_path, variables):
    from safetensors.numpy import save_file

    flat = flatten_variables(variables)
    save_file(flat, str(tmp_path / "bare.safetensors"), metadata={"format": "flax"})  # no architecture: the seed's is assumed
    said = r"The weights' shapes say features=4, depth=2, norm='batch' .* Fix: pass --features 4 --depth 2 --norm batch"
    with pytest.raises(PortError, match=said):
        load_variables(tmp_path / "bare.safetensors")
    lying = dataclasses.replace(CFG, features=8)
    save_file(flat, str(tmp_path / "lying.safetensors"), metadata={"format": "flax", "unet_config": config_to_json(lying)})
    with pytest.raises(PortError, match=r"(?s)shapes say features=4 .*the metadata is wrong\. Fix: save the weights again"):
        load_variables(tmp_path / "lying.safetensors")
