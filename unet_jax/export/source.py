"""What every export format shares: the network to export, the one input size it is fixed at,
and the description written beside the exported file.

An exported file takes a dynamic batch of images of one size, `tile_size` x `tile_size`: the
U-Net's crops and pools make only some sizes valid (`UNetConfig.is_valid_input_size`), and a
graph fixed at one of them is what both exporters produce reliably. The valid sizes are
`smallest + k * 2**depth`; the description lists them so a user can export again at another.
"""

from __future__ import annotations

import dataclasses
import json
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import Optional

import numpy as np

from unet_jax import __version__
from unet_jax.config import ConfigError, UNetConfig
from unet_jax.data import Normalization
from unet_jax.training.run_dir import RunDir

PAPER_TILE = 572  # the paper's tile: the default size, or the nearest valid one above it
DESCRIPTION_SUFFIX = ".json"  # model.onnx -> model.onnx.json
SIZES_LISTED = 8  # valid sizes named in the description and in messages


@dataclasses.dataclass(frozen=True)
class ExportSource:
    """A trained network ready to export: its architecture, weights, normalisation and input size."""

    weights: Path  # the run directory or weights file it came from
    config: UNetConfig
    variables: dict  # Flax variables, numpy leaves
    normalization: Optional[Normalization]
    tile_size: int  # the input side the exported file takes

    @property
    def output_size(self) -> int:
        return self.config.output_size(self.tile_size)


def load_source(weights, tile_size: Optional[int] = None, config=None) -> ExportSource:
    """The network in `weights` (a run directory or any weights file `unet-jax predict` reads) at
    `tile_size` (default: the run's training tile, else the valid size nearest the paper's 572)."""
    import jax

    from unet_jax.inference.predictor import Predictor  # the same resolution of run dirs, configs and normalisation as predict

    predictor = Predictor.from_weights(weights, config=config, devices=1)
    cfg = predictor.config
    if tile_size is None:
        tile_size = _training_tile(Path(weights)) or cfg.nearest_valid_input_sizes(PAPER_TILE)[1]
    check_tile_size(cfg, tile_size)
    variables = jax.tree_util.tree_map(np.asarray, predictor.variables)
    return ExportSource(Path(weights), cfg, variables, predictor.normalization, tile_size)


def _training_tile(path: Path) -> Optional[int]:
    run = RunDir(path)
    return run.load_config()[0].tile_size if path.is_dir() and run.file(RunDir.CONFIG).is_file() else None


def valid_sizes(config: UNetConfig, count: int = SIZES_LISTED) -> list[int]:
    """The `count` smallest input sides the network takes (they are `smallest + k * 2**depth`)."""
    smallest = config.nearest_valid_input_sizes(1)[1]
    return [smallest + k * 2**config.depth for k in range(count)]


def check_tile_size(config: UNetConfig, tile_size: int) -> None:
    if not config.is_valid_input_size(tile_size):
        lower, upper = config.nearest_valid_input_sizes(tile_size) if tile_size >= 1 else (None, valid_sizes(config, 1)[0])
        near = " or ".join(str(s) for s in dict.fromkeys((lower, upper)) if s is not None)
        raise ConfigError(
            f"--tile-size {tile_size} is not an input size this network takes (padding={config.padding!r}, "
            f"depth={config.depth}; valid: {valid_sizes(config, 4)[0]} + k * {2**config.depth}). Fix: --tile-size {near}"
        )


def description_path(out: Path) -> Path:
    return out.with_name(out.name + DESCRIPTION_SUFFIX)


def describe(source: ExportSource, fmt: str, layout: str, file: Path) -> dict:
    """What a user needs to run the exported file: input and output, sizes, normalisation, versions."""
    cfg, tile, out = source.config, source.tile_size, source.output_size
    channels_last = layout == "NHWC"
    image = ["batch", tile, tile, cfg.in_channels] if channels_last else ["batch", cfg.in_channels, tile, tile]
    logits = ["batch", out, out, cfg.num_classes] if channels_last else ["batch", cfg.num_classes, out, out]
    norm = source.normalization
    return {
        "format": fmt,
        "file": file.name,
        "input": {"name": "image", "layout": layout, "shape": image, "dtype": "float32"},
        "output": {"name": "logits", "layout": layout, "shape": logits, "dtype": "float32",
                   "meaning": "class scores before softmax; argmax over the class axis is the mask"},
        "sizes": {
            "input": tile,
            "output": out,
            "border": (tile - out) // 2,
            "note": f"the logits cover the centre {out}x{out} of the {tile}x{tile} input, {(tile - out) // 2} px in from "
                    "each side. This file takes only this size; other valid sizes need another export (--tile-size)",
            "valid_input_sizes": f"{valid_sizes(cfg, 1)[0]} + k * {2**cfg.depth}, k >= 0: {valid_sizes(cfg)} ...",
        },
        "normalization": None if norm is None else {
            **norm.to_dict(),
            "rule": "scale pixels to [0, 1] by their type's maximum (255 for 8-bit, 65535 for 16-bit, float as stored), "
                    "then per channel (x - mean) / std",
        },
        "normalization_note": "from the training run" if norm is not None else
            "none known (no normalization.json beside the weights): feed pixels scaled to [0, 1] by their type's maximum",
        "unet_config": dataclasses.asdict(cfg),
        "weights": str(source.weights),
        "exported_by": {name: _version(name) for name in ("unet-jax", "jax", "torch", "onnx")},
    }


def _version(package: str) -> Optional[str]:
    try:
        return __version__ if package == "unet-jax" else version(package)
    except PackageNotFoundError:
        return None


def description_bytes(description: dict) -> bytes:
    return (json.dumps(description, indent=2) + "\n").encode()
