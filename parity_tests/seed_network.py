"""The seed's own network, described independently of `unet_jax` and `unet_torch`: its
state_dict keys and shapes, a numpy recipe for its weights and input, and the golden figures
that the original PyTorch class computed with them.

How the golden figures (`golden/seed_572.json`) were produced, once, outside this project:

1. The original `Unet` class (the PyTorch code this project started from: `conv1_1` ...
   `conv_10`, `up_conv_1` ... `up_conv_4`, its `crop_tensor` and `torch.cat([crop, up])`)
   was instantiated as written, with no change, in torch 2.13.0+cpu.
2. Its state_dict was loaded with `seed_state_dict(GOLDEN_WEIGHTS_SEED)` (`strict=True`),
   the model and `seed_input_image()` were cast to float64, and the forward pass ran on the
   CPU: logits [1, 2, 388, 388].
3. `golden_figures` of those logits (moved to NHWC) were written with `write_golden`.

The recipe draws from `np.random.RandomState`, whose streams NumPy keeps fixed across
releases, so the weights and the image are the same on every machine. The weights are
float32 values (drawn in float64, rounded once) so that float32 models hold exactly the
weights the float64 golden run used. Nothing here imports the project's models: a test that
ports these weights through `unet_jax.weights.port` and reproduces the figures checks the port, the
wiring (crop offsets, concat order, up-conv kernel orientation) and the layers at once
against code that shares nothing with them.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np

GOLDEN_PATH = Path(__file__).parent / "golden" / "seed_572.json"
GOLDEN_WEIGHTS_SEED = 0
GOLDEN_IMAGE_SEED = 1
GOLDEN_SAMPLES_SEED = 2
GOLDEN_SAMPLES = 300  # logits read at fixed random positions, besides the row and column sums
INPUT_SIZE, OUTPUT_SIZE, CLASSES = 572, 388, 2

# (key prefix, weight shape) in the seed's definition order; every layer also has a bias.
# Written out by hand from the seed's class, not generated from `unet_jax.weights.port`.
SEED_LAYERS = [
    ("conv1_1", (64, 1, 3, 3)), ("conv1_2", (64, 64, 3, 3)),
    ("conv2_1", (128, 64, 3, 3)), ("conv2_2", (128, 128, 3, 3)),
    ("conv3_1", (256, 128, 3, 3)), ("conv3_2", (256, 256, 3, 3)),
    ("conv4_1", (512, 256, 3, 3)), ("conv4_2", (512, 512, 3, 3)),
    ("conv5_1", (1024, 512, 3, 3)), ("conv5_2", (1024, 1024, 3, 3)),
    ("up_conv_1", (1024, 512, 2, 2)),  # ConvTranspose2d: (in, out, kH, kW)
    ("conv6_1", (512, 1024, 3, 3)), ("conv6_2", (512, 512, 3, 3)),
    ("up_conv_2", (512, 256, 2, 2)),
    ("conv7_1", (256, 512, 3, 3)), ("conv7_2", (256, 256, 3, 3)),
    ("up_conv_3", (256, 128, 2, 2)),
    ("conv8_1", (128, 256, 3, 3)), ("conv8_2", (128, 128, 3, 3)),
    ("up_conv_4", (128, 64, 2, 2)),
    ("conv9_1", (64, 128, 3, 3)), ("conv9_2", (64, 64, 3, 3)),
    ("conv_10", (2, 64, 1, 1)),
]
SEED_PARAMETERS = 31_030_658  # the seed network's parameter count


def seed_state_dict(seed: int = GOLDEN_WEIGHTS_SEED) -> dict[str, np.ndarray]:
    """float32 weights under the seed's keys, in its definition order.

    For each layer in `SEED_LAYERS` order, from one `RandomState(seed)`: the weight as
    `standard_normal(shape) * sqrt(2 / fan_in)` (He normal, the paper's init; fan-in is
    in * kH * kW for a conv and `in` for the 2x2 stride-2 up-conv, whose windows don't
    overlap), then the bias as `uniform(-0.1, 0.1, out)`, so that no bias is invisible.
    """
    rng = np.random.RandomState(seed)
    state = {}
    for prefix, shape in SEED_LAYERS:
        transposed = prefix.startswith("up_conv")
        fan_in = shape[0] if transposed else int(np.prod(shape[1:]))
        state[f"{prefix}.weight"] = (rng.standard_normal(shape) * np.sqrt(2.0 / fan_in)).astype(np.float32)
        state[f"{prefix}.bias"] = rng.uniform(-0.1, 0.1, shape[1] if transposed else shape[0]).astype(np.float32)
    return state


def seed_input_image(seed: int = GOLDEN_IMAGE_SEED) -> np.ndarray:
    """The golden input [1, 572, 572, 1] (NHWC) float32: `RandomState(seed).standard_normal`
    plus a smooth ramp in each direction, so that the image is not symmetric under a flip or
    a transpose (a mirrored or transposed wiring error cannot map it onto itself)."""
    noise = np.random.RandomState(seed).standard_normal((INPUT_SIZE, INPUT_SIZE))
    ramp = np.linspace(-1.0, 1.0, INPUT_SIZE)
    image = noise + ramp[:, None] + 0.5 * ramp[None, :] ** 2
    return image.astype(np.float32)[None, :, :, None]


def sample_positions() -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(rows, columns, classes) of the sampled logits: the four corners of both classes,
    then random positions from `RandomState(GOLDEN_SAMPLES_SEED)`."""
    last = OUTPUT_SIZE - 1
    corners = [(r, c, k) for r in (0, last) for c in (0, last) for k in range(CLASSES)]
    rng = np.random.RandomState(GOLDEN_SAMPLES_SEED)
    count = GOLDEN_SAMPLES - len(corners)
    drawn = zip(rng.randint(0, OUTPUT_SIZE, count), rng.randint(0, OUTPUT_SIZE, count), rng.randint(0, CLASSES, count))
    rows, cols, classes = zip(*corners, *drawn)
    return np.array(rows), np.array(cols), np.array(classes)


def golden_figures(logits: np.ndarray) -> dict[str, np.ndarray]:
    """The figures kept of logits [1, 388, 388, 2] (NHWC), in float64.

    Per class, the sum of every row and of every column: a shifted crop, a swapped concat or
    a flipped kernel moves every one of them. Plus `GOLDEN_SAMPLES` single logits.
    """
    logits = np.asarray(logits, np.float64)
    if logits.shape != (1, OUTPUT_SIZE, OUTPUT_SIZE, CLASSES):
        raise ValueError(f"expected logits [1, {OUTPUT_SIZE}, {OUTPUT_SIZE}, {CLASSES}] (NHWC), got {logits.shape}")
    x = logits[0]  # [388, 388, 2]
    rows, cols, classes = sample_positions()
    return {
        "row_sums": x.sum(axis=1),  # [388, 2]
        "column_sums": x.sum(axis=0),  # [388, 2]
        "samples": x[rows, cols, classes],  # [300]
    }


def write_golden(figures: dict[str, np.ndarray], provenance: dict, path: Path = GOLDEN_PATH) -> None:
    # Ten significant digits: far below float32's ~1e-7, and half the file size of full float64.
    rounded = {k: [float(f"{v:.10g}") for v in np.asarray(a).ravel()] for k, a in figures.items()}
    shapes = {k: list(np.shape(a)) for k, a in figures.items()}
    record = {"provenance": provenance, "shapes": shapes, **rounded}
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(record, separators=(",", ":")) + "\n")


def load_golden(path: Path = GOLDEN_PATH) -> tuple[dict[str, np.ndarray], dict]:
    """(figures as float64 arrays, provenance)."""
    record = json.loads(path.read_text())
    provenance, shapes = record.pop("provenance"), record.pop("shapes")
    return {k: np.asarray(v, np.float64).reshape(shapes[k]) for k, v in record.items()}, provenance


def seed_to_unet_torch(key: str) -> str:
    """conv{L}_{i}: L 1-4 encoder, 5 bottleneck, 6-9 decoder; up_conv_{j}; conv_10 the head.

    Spelled out as plain rules here, not taken from `unet_jax.weights.port`, so that the port's own
    seed table is checked independently."""
    if match := re.fullmatch(r"conv(\d+)_(\d)\.(weight|bias)", key):
        level, i, tensor = int(match[1]), match[2], match[3]
        block = f"down{level}" if level <= 4 else "bottom" if level == 5 else f"up{level - 5}"
        return f"{block}.conv{i}.{tensor}"
    if match := re.fullmatch(r"up_conv_(\d)\.(weight|bias)", key):
        return f"upconv{match[1]}.{match[2]}"
    if match := re.fullmatch(r"conv_10\.(weight|bias)", key):
        return f"head.{match[1]}"
    raise KeyError(key)
