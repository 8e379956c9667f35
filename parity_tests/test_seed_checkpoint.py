"""A checkpoint of the seed's own `Unet` class ports to Flax and back.

The key list below is written out by hand from the seed document (conv1_1 .. conv_10), not
generated from `unet_jax.port.seed_layer_names`, so that it checks that table independently;
the seed -> unet_torch renaming is likewise spelled out here as plain rules.
"""

from __future__ import annotations

import re

import numpy as np
import torch

from parity_tests import harness
from unet_jax.config import UNetConfig
from unet_jax.port import flax_to_torch, torch_to_flax

# The bound for strict float32 (as in test_forward). Measured here at 572 x 572
# (AMD EPYC, 2 cores; jax 0.10.2, torch 2.13.0+cpu): 4.9e-6 between the frameworks with these
# weights (7.0e-6 with other random weights, where torch was 6.1e-6 and Flax 2.5e-6 from a
# float64 run). A thin margin: it is the worst of 388 * 388 * 2 logits, and torch's CPU
# convolutions are the noisier of the two.
SEED_TOL_STRICT = 1e-5

# (key prefix, weight shape) in the seed's definition order; every layer also has a bias.
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
SEED_PARAMETERS = 31_030_658  # the seed network's count (DESIGN.md)


def seed_state_dict(seed: int = 0) -> dict[str, np.ndarray]:
    """Random float32 weights under the seed's keys; He-scaled so the logits stay informative."""
    rng = np.random.default_rng(seed)
    state = {}
    for prefix, shape in SEED_LAYERS:
        transposed = prefix.startswith("up_conv")
        fan_in = shape[0] if transposed else int(np.prod(shape[1:]))
        state[f"{prefix}.weight"] = (rng.standard_normal(shape) * np.sqrt(2.0 / fan_in)).astype(np.float32)
        state[f"{prefix}.bias"] = rng.uniform(-0.1, 0.1, shape[1] if transposed else shape[0]).astype(np.float32)
    return state


def seed_to_unet_torch(key: str) -> str:
    """conv{L}_{i}: L 1-4 encoder, 5 bottleneck, 6-9 decoder; up_conv_{j}; conv_10 the head."""
    if match := re.fullmatch(r"conv(\d+)_(\d)\.(weight|bias)", key):
        level, i, tensor = int(match[1]), match[2], match[3]
        block = f"down{level}" if level <= 4 else "bottom" if level == 5 else f"up{level - 5}"
        return f"{block}.conv{i}.{tensor}"
    if match := re.fullmatch(r"up_conv_(\d)\.(weight|bias)", key):
        return f"upconv{match[1]}.{match[2]}"
    if match := re.fullmatch(r"conv_10\.(weight|bias)", key):
        return f"head.{match[1]}"
    raise KeyError(key)


def test_seed_key_list_is_the_seed_network():
    state = seed_state_dict()
    assert len(state) == 46
    assert sum(v.size for v in state.values()) == SEED_PARAMETERS


def test_seed_checkpoint_ports_and_runs_at_572(parity):
    cfg = UNetConfig()
    seed_state = seed_state_dict()
    model = harness.build_torch(cfg)
    model.load_state_dict({seed_to_unet_torch(k): torch.from_numpy(v) for k, v in seed_state.items()}, strict=True)
    variables = harness.port_state(seed_state, cfg)  # the seed's naming is detected by the port

    images, _ = harness.make_batch(cfg, 572, 1)
    with harness.precision("strict") as prec:
        got_torch = harness.torch_forward(model.to(harness.TORCH_DEVICE), images, False, prec)
        got_flax, _ = harness.flax_forward(cfg, variables, images, False, prec.flax_dtype)
    assert got_flax.shape == (1, 388, 388, 2)
    parity.check("seed checkpoint", "strict", "logits at 572x572", SEED_TOL_STRICT,
                 between=harness.rel_error(got_flax, got_torch))


def test_seed_naming_round_trip_is_exact():
    cfg = UNetConfig()
    seed_state = seed_state_dict(seed=1)
    back = flax_to_torch(torch_to_flax(seed_state, cfg), cfg, naming="seed")
    assert list(back) == list(seed_state)  # the same keys, in the seed's definition order
    for key, value in seed_state.items():
        assert back[key].dtype == value.dtype and back[key].shape == value.shape, key
        np.testing.assert_array_equal(back[key], value, err_msg=key)
