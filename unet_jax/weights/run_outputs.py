"""What a finished training run leaves for those who use its weights: `weights.safetensors`, and
`normalization.json` beside it. Read here, below both training (which writes them, `RunDir`) and
inference (which reads them, `Predictor.from_weights`), so that inference needs nothing of training.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Optional

from unet_jax.config import ConfigError, MissingFileError
from unet_jax.data import Normalization

WEIGHTS = "weights.safetensors"
NORMALIZATION = "normalization.json"
CONFIG = "config.json"  # what makes a folder a run directory (`RunDir`)


def read_normalization(path) -> Normalization:
    """A `normalization.json` (of a run directory, or beside a weights file)."""
    try:
        return Normalization.from_dict(json.loads(Path(path).read_text()))
    except (OSError, ValueError) as error:  # json.JSONDecodeError is a ValueError
        raise ConfigError(f"{path}: not a readable normalisation ({error}). Fix: restore the file from the run") from None


def weights_path(path) -> Path:
    """The weights file of `path`: the file itself, or a run directory's `weights.safetensors`."""
    path = Path(path)
    if not path.is_dir():
        return path
    weights = path / WEIGHTS
    if not weights.is_file():
        raise MissingFileError(f"{path} is a directory without {WEIGHTS}: not a finished training run")
    return weights


def normalization_beside(weights) -> Optional[Normalization]:
    """The `normalization.json` beside a weights file (a run's weights), None where there is none.
    A run's own weights without it are refused: every run writes one, and its network was trained on
    images it normalised, so the images read as they are would be predicted wrong, without a word."""
    weights = Path(weights)
    beside = weights.parent / NORMALIZATION
    if beside.is_file():
        return read_normalization(beside)
    if weights.name == WEIGHTS and (weights.parent / CONFIG).is_file():
        raise MissingFileError(
            f"{beside} is missing: {weights.parent} is a training run, and its network was trained on images normalised "
            f"by that file, so without it every prediction would be off. Fix: restore {NORMALIZATION} from a copy of the run"
        )
    return None
