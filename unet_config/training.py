"""The training config: every knob of a run in one frozen dataclass that checks itself.

A run directory stores it as `config.json`, from which `--resume` rebuilds the run. Bad
values are refused when the config is built, so nothing is written for a run that could
never have worked.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any, Mapping, Optional

from unet_config.architecture import UNetConfig, described, is_integer
from unet_config.errors import ConfigError

OPTIMIZERS = ("adam", "sgd")
LOSSES = ("ce", "dice", "ce+dice", "weighted-ce")
WEIGHT_MAP_LOSSES = ("weighted-ce",)  # losses that take the separation weight map, so need instance masks
CELLS_LAYOUTS = ("mixed", "touching")  # the built-in synthetic cells: see unet_jax.data.cells
DTYPES = ("float32", "bfloat16")

# What a resumed run may change. Bookkeeping never changes the trained weights; a new
# learning rate does, so a run resumed with one is no longer an exact continuation.
BOOKKEEPING_FIELDS = ("steps", "eval_every", "log_every", "checkpoint_every", "keep_checkpoints", "sampling_threads",
                      "profile_steps")
TRAJECTORY_FIELDS = ("learning_rate",)
RESUMABLE_FIELDS = BOOKKEEPING_FIELDS + TRAJECTORY_FIELDS

_POSITIVE_INTEGERS = (
    "tile_size", "batch_size", "steps", "cells_train_images", "cells_val_images", "cells_image_size",
    "eval_every", "val_tiles_per_image", "log_every", "checkpoint_every", "keep_checkpoints", "sampling_threads",
    "target_gap_width",
)
_MIN_CELLS_IMAGE_SIZE = 8  # the synthetic cells need room for one cell
MAX_SEED = 2**63 - 1  # JAX's random keys take a signed 64-bit seed; a larger one failed mid-run with an OverflowError


@dataclasses.dataclass(frozen=True)
class TrainConfig:
    preset: str = described("demo", "the preset this config started from (a label)")
    model: UNetConfig = UNetConfig()
    tile_size: int = described(572, "input tile side; the label tile is the network's output size for it")
    batch_size: int = described(16, "tiles per training step")
    steps: int = described(1000, "training steps in all (a resumed run may raise it)")
    optimizer: str = described("adam", "adam, or sgd with momentum")
    learning_rate: float = described(1e-3, "step size, in (0, 1] (a resumed run may change it)")
    momentum: float = described(0.99, "SGD momentum, in [0, 1); unused by adam")
    loss: str = described(
        "ce",
        "ce: cross-entropy; dice: soft Dice of the foreground classes; ce+dice: their sum; weighted-ce: cross-entropy "
        "weighted by the paper's separation weight map (needs instance masks; implies --target-gap)",
    )
    target_gap: bool = described(
        False, "instance masks: train on targets with a background gap between touching objects, as the paper"
    )
    target_gap_width: int = described(
        1, "pixels of background the target puts between touching objects, with --target-gap or --loss weighted-ce "
        "(the paper's: 1)"
    )
    weight_w0: float = described(
        10.0, "--loss weighted-ce: the separation weight map's w0, the extra weight on the gap between two cells (the paper's: 10)"
    )
    weight_sigma: float = described(
        5.0, "--loss weighted-ce: the separation weight map's sigma, pixels: how fast the extra weight falls off away from "
        "the gap (the paper's: 5)"
    )
    dtype: str = described("float32", "compute dtype; parameters stay float32")
    augment: bool = described(True, "random flips and 90-degree rotations, on the device")
    elastic: bool = described(False, "the paper's elastic deformation (3x3 grid of random displacements), on the device")
    elastic_sigma: float = described(10.0, "standard deviation of the elastic displacements, pixels (the paper's: 10)")
    seed: int = described(0, "parameters, data order and augmentation all derive from it")
    sampling_threads: int = described(
        4, "host threads that cut each batch's tiles while the device runs earlier steps (on an accelerator two batches "
        "are made ahead at once); the batch is the same for any number (1: one thread per batch)"
    )
    data_shards: int = described(
        0, "deal the training images into this many shards; each process of a multi-host run reads only the shard its "
        "rows of the batch draw from. The batch depends on this number, never on the process count, and a run keeps it "
        "when resumed. 0: one per process (at most one per image); 1: every tile draws from all images"
    )
    init_weights: Optional[str] = described(
        None, "start the new run from these weights (Flax or PyTorch file, any naming; its architecture is taken); none: random"
    )
    data: Optional[str] = described(None, "DIR with images/ and masks/, or an ISBI *-volume.tif; none: built-in cells")
    val_data: Optional[str] = described(None, "validation data, laid out as --data; none: hold out --val-fraction")
    val_fraction: float = described(0.2, "share of --data held out for validation when --val-data is not given")
    cells_train_images: int = described(48, "built-in synthetic cells: training images")
    cells_val_images: int = described(8, "built-in synthetic cells: validation images")
    cells_image_size: int = described(256, "built-in synthetic cells: image side")
    cells_layout: str = described("mixed", "built-in synthetic cells: mixed (some touch) or touching (most cells touch)")
    eval_every: int = described(100, "steps between validations")
    val_tiles_per_image: int = described(4, "validation tiles cut from each held-out image")
    log_every: int = described(10, "steps between records in metrics.jsonl")
    checkpoint_every: int = described(200, "steps between checkpoints")
    keep_checkpoints: int = described(3, "checkpoints kept (the newest); at least 1, so the run can be resumed")
    profile_steps: Optional[str] = described(
        None, "A:B: write a jax.profiler trace of training steps A to B (inclusive) into RUN_DIR/profile, for "
        "TensorBoard/XProf or Perfetto; none: no trace"
    )

    def __post_init__(self):
        if not isinstance(self.model, UNetConfig):
            raise ConfigError(f"TrainConfig.model must be a UNetConfig, got {type(self.model).__name__}")
        for name in _POSITIVE_INTEGERS:
            value = getattr(self, name)
            if not is_integer(value) or value < 1:
                raise ConfigError(f"{_name(name)} must be a positive integer, got {value!r}")
        if self.cells_image_size < _MIN_CELLS_IMAGE_SIZE:
            raise ConfigError(f"{_name('cells_image_size')} must be at least {_MIN_CELLS_IMAGE_SIZE}, got {self.cells_image_size}")
        for name in ("seed", "data_shards"):
            if not is_integer(getattr(self, name)) or getattr(self, name) < 0:
                raise ConfigError(f"{_name(name)} must be a non-negative integer, got {getattr(self, name)!r}")
        if self.seed > MAX_SEED:
            raise ConfigError(f"{_name('seed')} must be at most 2**63 - 1 = {MAX_SEED} (JAX's random keys take a signed "
                              f"64-bit seed), got {self.seed}. Fix: choose a smaller seed")
        for name, allowed in (("optimizer", OPTIMIZERS), ("loss", LOSSES), ("dtype", DTYPES), ("cells_layout", CELLS_LAYOUTS)):
            if getattr(self, name) not in allowed:
                raise ConfigError(f"{_name(name)} must be one of {allowed}, got {getattr(self, name)!r}")
        _check_range("learning_rate", self.learning_rate, 0, 1, low_open=True, high_open=False)
        _check_range("momentum", self.momentum, 0, 1, low_open=False, high_open=True)
        _check_range("val_fraction", self.val_fraction, 0, 1, low_open=True, high_open=True)
        for name in ("augment", "elastic", "target_gap"):
            if not isinstance(getattr(self, name), bool):
                raise ConfigError(f"{_name(name)} must be true or false, got {getattr(self, name)!r}")
        _check_range("elastic_sigma", self.elastic_sigma, 0, math.inf, low_open=False, high_open=True)
        _check_range("weight_w0", self.weight_w0, 0, math.inf, low_open=False, high_open=True)
        _check_range("weight_sigma", self.weight_sigma, 0, math.inf, low_open=True, high_open=True)
        for name in ("preset", "data", "val_data", "init_weights", "profile_steps"):
            value = getattr(self, name)
            if not (isinstance(value, str) or (value is None and name != "preset")):
                raise ConfigError(f"{_name(name)} must be a string, got {value!r}")
        self.profile_range  # noqa: B018 (parses the range: a bad one is refused here)
        self.model.check_input_size(self.tile_size, self.tile_size)

    @property
    def profile_range(self) -> Optional[tuple[int, int]]:
        """(first, last) training step to trace, from `profile_steps` "A:B"; None without one."""
        if self.profile_steps is None:
            return None
        first, _, last = str(self.profile_steps).partition(":")
        try:
            first, last = int(first), int(last)
        except ValueError:
            first = last = 0
        if not 1 <= first <= last:
            raise ConfigError(f"{_name('profile_steps')} must be A:B with 1 <= A <= B (e.g. 20:25), got {self.profile_steps!r}")
        return first, last

    @property
    def label_size(self) -> int:
        return self.model.output_size(self.tile_size)

    @property
    def separates_touching(self) -> bool:
        """Whether training targets get the gap between touching objects (needs instance masks)."""
        return self.target_gap or self.loss in WEIGHT_MAP_LOSSES

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, values: Mapping[str, Any]) -> "TrainConfig":
        """The inverse of `to_dict`; ConfigError naming any unknown or missing field."""
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(values) - known)
        if unknown:
            raise ConfigError(f"unknown TrainConfig field(s) {unknown}")
        values = dict(values)
        values.setdefault("data_shards", 1)  # a config saved before shards existed drew every tile from all images
        if isinstance(values.get("model"), Mapping):
            try:
                values["model"] = UNetConfig(**values["model"])
            except TypeError as error:  # an unknown field name
                raise ConfigError(f"model: {error}") from None
        return cls(**values)

    def resumed_with(self, requested: Mapping[str, Any]) -> tuple["TrainConfig", dict[str, tuple]]:
        """This (stored) config with the `requested` field values a resumed run may take.

        Returns the new config and the changes as {field: (old, new)}; a requested value equal
        to the stored one is no change. Keys of `UNetConfig` are the model's fields. Anything
        outside `RESUMABLE_FIELDS` would make the checkpoint describe another run, so it is refused.
        """
        model_fields = {f.name for f in dataclasses.fields(UNetConfig)}
        current = {**dataclasses.asdict(self.model), **{f.name: getattr(self, f.name) for f in dataclasses.fields(self)}}
        changes = {k: (current[k], v) for k, v in requested.items() if current.get(k) != v}
        refused = sorted(k for k in changes if k not in RESUMABLE_FIELDS or k in model_fields)
        if refused:
            listed = ", ".join(f"{_flag(k)} ({changes[k][0]!r} -> {changes[k][1]!r})" for k in refused)
            raise ConfigError(
                f"a resumed run keeps its network, data and optimizer, so {listed} can't change. "
                f"A resumed run may change only {', '.join(map(_flag, RESUMABLE_FIELDS))}; start a new run "
                "(another --run-dir) for the rest"
            )
        return dataclasses.replace(self, **{k: new for k, (_, new) in changes.items()}), changes


def _flag(name: str) -> str:
    return "--" + name.replace("_", "-")


def _name(name: str) -> str:
    """How messages name a field: the config's name and the command line's."""
    return f"TrainConfig.{name} ({_flag(name)})"


def _check_range(name: str, value, low: float, high: float, low_open: bool, high_open: bool) -> None:
    ok = isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
    ok = ok and (value > low if low_open else value >= low) and (value < high if high_open else value <= high)
    if not ok:
        interval = f"{'(' if low_open else '['}{low}, {high}{')' if high_open else ']'}"
        raise ConfigError(f"{_name(name)} must be a number in {interval}, got {value!r}")
