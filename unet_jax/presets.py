"""Training configs: one dataclass holding every knob, and the named presets.

Every field can be overridden on the command line (`--batch-size 4`, `--features 32`), and
the whole resolved config is written to the run directory as `config.json`, from which
`--resume` rebuilds the run.
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Optional

from unet_jax.config import UNetConfig


@dataclasses.dataclass(frozen=True)
class TrainConfig:
    preset: str = "demo"
    model: UNetConfig = UNetConfig()
    tile_size: int = 572  # input tile side; the label tile is model.output_size(tile_size)
    batch_size: int = 16
    steps: int = 1000
    optimizer: str = "adam"  # "adam" | "sgd"
    learning_rate: float = 1e-3
    momentum: float = 0.99  # SGD only
    loss: str = "ce"  # "ce" | "dice" | "ce+dice"
    dtype: str = "float32"  # compute dtype: "float32" | "bfloat16" (params stay float32)
    augment: bool = True  # random flips and 90-degree rotations, on the device
    seed: int = 0  # parameters, data order and augmentation all derive from it
    # Data: None trains on the built-in synthetic cells.
    data: Optional[str] = None
    val_data: Optional[str] = None
    val_fraction: float = 0.2  # held out from `data` when `val_data` is not given
    cells_train_images: int = 48
    cells_val_images: int = 8
    cells_image_size: int = 256
    # Bookkeeping.
    eval_every: int = 100
    val_tiles_per_image: int = 4
    log_every: int = 10
    checkpoint_every: int = 200
    keep_checkpoints: int = 3

    def __post_init__(self):
        if self.steps < 1 or self.batch_size < 1:
            raise ValueError("steps and batch_size must be positive")
        if self.dtype not in ("float32", "bfloat16"):
            raise ValueError(f"dtype must be 'float32' or 'bfloat16', got {self.dtype!r}")
        if not 0 < self.val_fraction < 1:
            raise ValueError(f"val_fraction must be between 0 and 1, got {self.val_fraction}")
        self.model.check_input_size(self.tile_size, self.tile_size)

    @property
    def label_size(self) -> int:
        return self.model.output_size(self.tile_size)

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, values: dict) -> "TrainConfig":
        values = dict(values)
        values["model"] = UNetConfig(**values["model"])
        return cls(**values)

    def save(self, path: Path) -> None:
        Path(path).write_text(json.dumps(self.to_dict(), indent=2) + "\n")

    @classmethod
    def load(cls, path: Path) -> "TrainConfig":
        return cls.from_dict(json.loads(Path(path).read_text()))


PRESETS: dict[str, TrainConfig] = {
    # Fits a 2-core CPU in under 5 minutes and reaches foreground Dice >= 0.9 on held-out
    # synthetic cells: a quarter-width, depth-3 U-Net on 124x124 tiles (36x36 labels).
    "demo": TrainConfig(
        preset="demo",
        model=UNetConfig(features=16, depth=3),
        tile_size=124,
        batch_size=8,
        steps=600,
        learning_rate=1e-3,
        eval_every=100,
        checkpoint_every=200,
    ),
    # The seed document's loop: the full network, Adam 1e-3, cross-entropy, batch 16.
    "seed": TrainConfig(preset="seed", tile_size=572, batch_size=16, steps=2000, learning_rate=1e-3),
    # The paper: full network, 572x572 tiles, batch 1, SGD momentum 0.99, He initialisation
    # (the model's default). The paper gives no learning rate; 0.01 is our choice.
    "paper": TrainConfig(
        preset="paper", tile_size=572, batch_size=1, steps=10000, optimizer="sgd", learning_rate=1e-2, momentum=0.99
    ),
}


def resolve(preset: str, overrides: dict) -> TrainConfig:
    """A preset with `overrides` applied; keys of UNetConfig go to the model."""
    if preset not in PRESETS:
        raise ValueError(f"unknown preset {preset!r}; choose one of {sorted(PRESETS)}")
    base = PRESETS[preset]
    model_fields = {f.name for f in dataclasses.fields(UNetConfig)}
    model_overrides = {k: v for k, v in overrides.items() if k in model_fields}
    train_overrides = {k: v for k, v in overrides.items() if k not in model_fields}
    unknown = set(train_overrides) - {f.name for f in dataclasses.fields(TrainConfig)}
    if unknown:
        raise ValueError(f"unknown training option(s): {sorted(unknown)}")
    model = dataclasses.replace(base.model, **model_overrides)
    return dataclasses.replace(base, model=model, **train_overrides)
