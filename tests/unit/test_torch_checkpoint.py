"""Real PyTorch checkpoints: torch.compile / DataParallel prefixes, training-script wrappers,
self-describing .pt files (sidecar), and errors that name the architecture options to pass."""

import json

import numpy as np
import pytest

from unet_jax.cli import main
from unet_jax.config import UNetConfig
from unet_jax.runtime.safe_files import OutputError
from unet_jax.weights.convert import convert
from unet_jax.weights.io import WeightsFileError, load_variables, read_weights_file
from unet_jax.weights.port import PortError, flatten_variables
from unet_jax.weights.torch_checkpoint import clean_checkpoint, strip_prefixes

torch = pytest.importorskip("torch")
unet_torch = pytest.importorskip("unet_torch")

CFG = UNetConfig(features=4, depth=2, norm="batch", num_classes=3)


@pytest.fixture(scope="module")
def net():
    torch.manual_seed(0)
    return unet_torch.UNet(features=4, depth=2, norm="batch", num_classes=3)


def assert_same_variables(a, b):
    flat_a, flat_b = flatten_variables(a), flatten_variables(b)
    assert flat_a.keys() == flat_b.keys()
    for key in flat_a:
        np.testing.assert_array_equal(flat_a[key], flat_b[key])


@pytest.mark.slow
@pytest.mark.parametrize(
    "wrap, prefix",
    [
        (lambda m: torch.compile(m), "_orig_mod."),
        (lambda m: torch.nn.DataParallel(m), "module."),
        (lambda m: torch.nn.DataParallel(torch.compile(m)), "module._orig_mod."),
    ],
    ids=["compiled", "data-parallel", "data-parallel-of-compiled"],
)
# torch.compile's first import runs torch code that warns about torch's own deprecated API.
@pytest.mark.filterwarnings("ignore:`torch.jit.script_method` is deprecated:DeprecationWarning")
def test_prefixes_of_real_wrapped_models_are_removed(net, tmp_path, wrap, prefix):
    state_dict = wrap(net).state_dict()
    assert all(k.startswith(prefix) for k in state_dict)  # what torch really writes
    torch.save(state_dict, tmp_path / "wrapped.pt")
    torch.save(net.state_dict(), tmp_path / "plain.pt")
    weights = read_weights_file(tmp_path / "wrapped.pt")
    assert f"removed the key prefix {prefix!r}" in weights.notes
    assert_same_variables(load_variables(tmp_path / "wrapped.pt", CFG)[0], load_variables(tmp_path / "plain.pt", CFG)[0])


def test_a_prefix_only_some_keys_carry_is_left_alone():
    tensors = {"module.a": np.zeros(1), "b": np.zeros(1)}
    assert strip_prefixes(tensors) == (tensors, [])


@pytest.mark.parametrize("wrapper", ["state_dict", "model", "model_state_dict"])
def test_training_checkpoint_wrappers_report_what_they_skip(net, tmp_path, wrapper, capsys):
    optimizer = torch.optim.Adam(net.parameters())
    torch.save({"epoch": 7, wrapper: net.state_dict(), "optimizer": optimizer.state_dict()}, tmp_path / "ckpt.pt")
    torch.save(net.state_dict(), tmp_path / "plain.pt")
    assert main(["convert", str(tmp_path / "ckpt.pt"), str(tmp_path / "out.safetensors"), "--features", "4", "--depth", "2",
                 "--norm", "batch", "--num-classes", "3"]) == 0
    assert f"took the weights from its {wrapper!r} entry, skipped epoch, optimizer" in capsys.readouterr().out
    assert_same_variables(load_variables(tmp_path / "out.safetensors")[0], load_variables(tmp_path / "plain.pt", CFG)[0])


def test_non_tensor_entries_are_kept_if_json_and_skipped_otherwise():
    cleaned = clean_checkpoint({"w": np.zeros(2), "mask_values": [[0, 0, 0], [255, 255, 255]], "bad": object()}, "x.pt")
    assert cleaned.extras == {"mask_values": [[0, 0, 0], [255, 255, 255]]}
    assert list(cleaned.tensors) == ["w"] and "skipped its non-tensor entry bad (object)" in cleaned.notes


def test_mismatch_error_names_the_options_the_shapes_imply(net, tmp_path, capsys):
    torch.save(net.state_dict(), tmp_path / "model.pt")
    with pytest.raises(PortError) as info:
        load_variables(tmp_path / "model.pt", {"features": 16, "depth": 3})
    message = str(info.value)
    assert "pass --features 4 --depth 2 --num-classes 3 --norm batch" in message
    assert "--padding valid or same" in message  # the one field weights can't tell
    # On the command line, without any option: the same advice, one message, no traceback.
    assert main(["convert", str(tmp_path / "model.pt"), str(tmp_path / "out.safetensors")]) == 2
    err = capsys.readouterr().err
    assert "pass --features 4 --depth 2 --num-classes 3 --norm batch" in err and "Traceback" not in err


def test_pt_written_by_convert_describes_itself_and_stays_a_plain_state_dict(net, tmp_path, capsys):
    torch.save(net.state_dict(), tmp_path / "a.pt")
    convert(tmp_path / "a.pt", tmp_path / "flax.safetensors", config=CFG)
    assert main(["convert", str(tmp_path / "flax.safetensors"), str(tmp_path / "b.pt")]) == 0
    # Loadable as PyTorch users load weights ...
    again = unet_torch.UNet(features=4, depth=2, norm="batch", num_classes=3)
    again.load_state_dict(torch.load(tmp_path / "b.pt", weights_only=True), strict=True)
    # ... and back to Flax with no architecture options: the sidecar says it.
    described = json.loads((tmp_path / "b.pt.json").read_text())
    assert UNetConfig(**described["unet_config"]) == CFG and described["naming"] == "unet_torch"
    assert main(["convert", str(tmp_path / "b.pt"), str(tmp_path / "c.safetensors")]) == 0
    assert load_variables(tmp_path / "c.safetensors")[1] == CFG
    # Without its sidecar it is an ordinary .pt: the options are needed again, and enough.
    (tmp_path / "b.pt.json").unlink()
    assert load_variables(tmp_path / "b.pt", CFG)[1] == CFG
    with pytest.raises(PortError, match="--features 4"):
        load_variables(tmp_path / "b.pt")


def test_a_sidecar_left_beside_a_replaced_pt_is_refused(net, tmp_path):
    torch.save(net.state_dict(), tmp_path / "a.pt")
    convert(tmp_path / "a.pt", tmp_path / "flax.safetensors", config=CFG)
    convert(tmp_path / "flax.safetensors", tmp_path / "b.pt")
    torch.save(unet_torch.UNet(features=8, depth=2).state_dict(), tmp_path / "b.pt")  # replaced by hand
    with pytest.raises(WeightsFileError, match="b.pt.json describes another version of b.pt.*delete"):
        load_variables(tmp_path / "b.pt")


def test_an_existing_sidecar_is_not_replaced_without_overwrite(net, tmp_path):
    torch.save(net.state_dict(), tmp_path / "a.pt")
    convert(tmp_path / "a.pt", tmp_path / "flax.safetensors", config=CFG)
    (tmp_path / "b.pt.json").write_text("{}")
    with pytest.raises(OutputError, match="b.pt.json already exists"):
        convert(tmp_path / "flax.safetensors", tmp_path / "b.pt")
    assert not (tmp_path / "b.pt").exists() and (tmp_path / "b.pt.json").read_text() == "{}"
    convert(tmp_path / "flax.safetensors", tmp_path / "b.pt", overwrite=True)
    assert load_variables(tmp_path / "b.pt")[1] == CFG
