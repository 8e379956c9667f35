"""`unet-jax export`: the exported files compute the Flax network's logits, the description
beside them says how to feed them, and bad input is one line that changes nothing on disk.

Tolerance of the ONNX comparison, 1e-5 of the largest logit (issue 28's bound): onnxruntime and
XLA sum the convolutions in different orders, so they agree only up to float32 rounding. Measured
2026-12-04 on this CPU: Flax float32 against Flax float64 differs by 5.7e-7 (features 8, depth 2,
60 px), 9.0e-8 (same padding, bilinear, BatchNorm, 48 px) and 1.1e-6 (the seed network at 572 px)
of the largest logit; onnxruntime against Flax by 3e-7 to 1.2e-6 on the same networks. The
StableHLO file is the same XLA program as Flax's on the same backend, so it must agree exactly.
"""

import json
import sys

import numpy as np
import onnx
import onnxruntime
import pytest

from tests.helpers.random_weights import random_variables
from unet_jax.cli import main
from unet_jax.config import UNetConfig
from unet_jax.data import Normalization
from unet_jax.export import export
from unet_jax.export.check import flax_logits
from unet_jax.export.source import ExportSource, valid_sizes
from unet_jax.export.stablehlo_file import load_stablehlo
from unet_jax.weights.io import save_flax_weights

ONNX_BOUND = 1e-5  # of the largest logit; see the module docstring
NETWORKS = {
    "valid-transpose": (UNetConfig(features=8, depth=2), 60),
    "same-bilinear-batchnorm": (UNetConfig(features=8, depth=2, padding="same", upsample="bilinear", norm="batch"), 48),
}
NORMALIZATION = Normalization(mean=(0.31,), std=(0.17,))


# The paper's architecture in every run; the other (its BatchNorm and resize) in the full suite.
@pytest.fixture(scope="module", params=["valid-transpose", pytest.param("same-bilinear-batchnorm", marks=pytest.mark.slow)])
def weights(request, tmp_path_factory):
    """A Flax weights file of random weights with a normalization.json beside it, as a run leaves them."""
    config, tile = NETWORKS[request.param]
    folder = tmp_path_factory.mktemp(request.param)
    path = save_flax_weights(random_variables(config, seed=1), config, folder / "weights.safetensors")
    (folder / "normalization.json").write_text(json.dumps(NORMALIZATION.to_dict()))
    return path, config, tile


def _images(config, tile, batch=3):
    return np.random.default_rng(5).normal(size=(batch, tile, tile, config.in_channels)).astype(np.float32)


def _source(path, config, tile):
    variables = random_variables(config, seed=1)  # what the file holds
    return ExportSource(path, config, variables, NORMALIZATION, tile)


def test_onnxruntime_equals_flax_on_a_batch_of_three(weights, tmp_path):
    path, config, tile = weights
    out = tmp_path / "unet.onnx"
    description = export(path, out, "onnx", tile_size=tile, check=False)
    images = _images(config, tile)
    session = onnxruntime.InferenceSession(str(out), providers=["CPUExecutionProvider"])
    logits = session.run(None, {"image": images.transpose(0, 3, 1, 2)})[0].transpose(0, 2, 3, 1)
    expected = flax_logits(_source(path, config, tile), images)
    assert logits.shape == expected.shape == (3, config.output_size(tile), config.output_size(tile), config.num_classes)
    assert np.abs(logits - expected).max() <= ONNX_BOUND * np.abs(expected).max()
    # The graph's declared shapes are the description's, the batch symbolic.
    graph = onnx.load(str(out)).graph
    declared = [[d.dim_param or d.dim_value for d in v.type.tensor_type.shape.dim] for v in (graph.input[0], graph.output[0])]
    assert declared == [description["input"]["shape"], description["output"]["shape"]]
    assert declared[0][0] == "batch" and declared[1][0] == "batch"


def test_deserialized_stablehlo_equals_flax_exactly(weights, tmp_path):
    path, config, tile = weights
    out = tmp_path / "unet.stablehlo"
    export(path, out, "stablehlo", tile_size=tile, check=False)
    exported = load_stablehlo(out)
    for batch in (3, 1):  # the batch is symbolic
        images = _images(config, tile, batch)
        np.testing.assert_array_equal(np.asarray(exported.call(images)), flax_logits(_source(path, config, tile), images))
    assert exported.platforms == ("cpu", "cuda")


@pytest.mark.parametrize("fmt", ["onnx", "stablehlo"])
def test_the_description_beside_says_how_to_feed_the_file(weights, tmp_path, fmt):
    path, config, tile = weights
    out = tmp_path / f"unet.{fmt}"
    lines = []
    description = export(path, out, fmt, tile_size=tile, report=lines.append)
    assert json.loads((tmp_path / f"unet.{fmt}.json").read_text()) == description
    assert Normalization.from_dict(description["normalization"]) == NORMALIZATION
    assert UNetConfig(**description["unet_config"]) == config
    sizes = description["sizes"]
    out_size = config.output_size(tile)
    assert (sizes["input"], sizes["output"], sizes["border"]) == (tile, out_size, (tile - out_size) // 2)
    assert len(lines) == 1 and "of the largest logit" in lines[0]
    assert float(lines[0].split("= ")[1].split()[0]) <= (ONNX_BOUND if fmt == "onnx" else 0.0)
    if fmt == "onnx":  # the ONNX file carries the description in its own metadata too
        props = {p.key: p.value for p in onnx.load(str(out)).metadata_props}
        assert json.loads(props["unet_jax"])["normalization"] == description["normalization"]


@pytest.mark.parametrize("config", [UNetConfig(), UNetConfig(depth=2), UNetConfig(depth=3, padding="same"), UNetConfig(depth=1)])
def test_the_valid_sizes_named_are_exactly_the_valid_ones(config):
    listed = valid_sizes(config)
    assert listed == [s for s in range(1, listed[-1] + 1) if config.is_valid_input_size(s)]


def test_bad_input_is_one_line_and_changes_nothing(weights, tmp_path, capsys, monkeypatch):
    path, config, tile = weights
    (tmp_path / "a-file").write_text("")
    (tmp_path / "taken.onnx").write_text("the user's file")
    bad_tile = tile + 1
    cases = {
        "unknown export format 'tflite'": [str(path), str(tmp_path / "u.tflite"), "--format", "tflite"],
        f"--tile-size {bad_tile} is not an input size": [str(path), str(tmp_path / "u.onnx"), "--format", "onnx",
                                                         "--tile-size", str(bad_tile)],
        "a part of this path is a file": [str(path), str(tmp_path / "a-file" / "u.onnx"), "--format", "onnx"],
        "taken.onnx already exists": [str(path), str(tmp_path / "taken.onnx"), "--format", "onnx"],
        "is the input": [str(path), str(path), "--format", "stablehlo", "--overwrite"],
    }
    for expected, argv in cases.items():
        assert main(["export", *argv]) == 2, argv
        error = capsys.readouterr().err
        assert expected in error and "Fix:" in error and error.count("\n") == 1, error
    monkeypatch.setitem(sys.modules, "onnxscript", None)  # as if the [export] extra were not installed
    assert main(["export", str(path), str(tmp_path / "u.onnx"), "--format", "onnx"]) == 2
    error = capsys.readouterr().err
    assert 'pip install "unet-jax[export]"' in error and "onnxscript" in error and error.count("\n") == 1, error
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a-file", "taken.onnx"]
    assert (tmp_path / "taken.onnx").read_text() == "the user's file"


def test_the_command_line_exports_and_replaces_only_with_overwrite(weights, tmp_path, capsys):
    path, config, tile = weights
    out = tmp_path / "unet.stablehlo"
    argv = ["export", str(path), str(out), "--format", "stablehlo", "--tile-size", str(tile), "--no-check"]
    assert main(argv) == 0
    assert "described in" in capsys.readouterr().out
    first = out.read_bytes()
    (tmp_path / "unet.stablehlo.json").write_text("edited")
    assert main(argv) == 2 and "already exists" in capsys.readouterr().err
    assert out.read_bytes() == first and (tmp_path / "unet.stablehlo.json").read_text() == "edited"
    assert main([*argv, "--overwrite"]) == 0
    assert json.loads((tmp_path / "unet.stablehlo.json").read_text())["sizes"]["input"] == tile


def test_the_size_defaults_to_the_runs_training_tile_else_the_valid_size_nearest_572(weights, tmp_path):
    from unet_jax.config import TrainConfig
    from unet_jax.export.source import load_source

    path, config, tile = weights
    assert load_source(path).tile_size == config.nearest_valid_input_sizes(572)[1]
    run = tmp_path / "run"
    run.mkdir()
    (run / "weights.safetensors").write_bytes(path.read_bytes())
    (run / "config.json").write_text(json.dumps(TrainConfig(model=config, tile_size=tile).to_dict()))
    normalization = Normalization(mean=(0.25,) * config.in_channels, std=(0.5,) * config.in_channels)
    (run / "normalization.json").write_text(json.dumps(normalization.to_dict()))  # a run without it is refused
    source = load_source(run)
    assert (source.tile_size, source.config, source.normalization) == (tile, config, normalization)
