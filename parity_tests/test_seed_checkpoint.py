"""The seed's own network, checked against figures its original PyTorch class computed.

`parity_tests.seed_network` holds the seed's keys and shapes, a numpy recipe for weights and
input, and the golden figures (row and column sums of the 388 x 388 x 2 logits, plus 300
single logits) that the original class produced in float64 with them; its docstring says how.
Here the same weights, under the seed's own key names, are loaded into `unet_torch` (by a
renaming written out in `seed_network`) and ported into `unet_jax` (by `unet_jax.weights.port`, which
detects the seed's naming), and both must reproduce the golden figures. That checks crop
offsets, concat order, up-conv kernel orientation, layer order and the port against code
that shares nothing with either model: a bug made the same way in both is caught here.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from parity_tests import harness
from parity_tests.seed_network import (
    SEED_PARAMETERS,
    golden_figures,
    load_golden,
    seed_input_image,
    seed_state_dict,
    seed_to_unet_torch,
)
from unet_config import UNetConfig
from unet_jax.weights.port import flax_to_torch, torch_to_flax

# Strict float32 against the float64 golden figures, and between the frameworks. Measured
# here at 572 x 572 (AMD EPYC, 2 cores; jax 0.10.2, torch 2.13.0+cpu): single logits 1.7e-6
# Flax, 1.6e-6 torch, 2.7e-6 between (2.4e-6 / 3.3e-6 with the earlier ConvTranspose up-conv);
# row and column sums, where rounding averages out, at most 5.5e-7. Bounds: the strict-mode
# 1e-5 for single logits (3x), 5e-6 for sums (9x). A wiring error moves these figures by tens
# of percent.
SEED_TOL_STRICT = 1e-5
SEED_SUMS_TOL_STRICT = 5e-6


@pytest.mark.host
def test_seed_key_list_is_the_seed_network():
    state = seed_state_dict()
    assert len(state) == 46
    assert sum(v.size for v in state.values()) == SEED_PARAMETERS


def test_seed_checkpoint_reproduces_the_seed_networks_golden_outputs(parity):
    cfg = UNetConfig()
    seed_state = seed_state_dict()
    model = harness.build_torch(cfg)
    model.load_state_dict({seed_to_unet_torch(k): torch.from_numpy(v) for k, v in seed_state.items()}, strict=True)
    variables = harness.port_state(seed_state, cfg)  # the seed's naming is detected by the port

    images = seed_input_image()
    with harness.precision("strict") as prec:
        got_torch = harness.torch_forward(model.to(harness.TORCH_DEVICE), images, False, prec)
        got_flax, _ = harness.flax_forward(cfg, variables, images, False, prec.flax_dtype)
    assert got_flax.shape == got_torch.shape == (1, 388, 388, 2)

    golden, _ = load_golden()
    flax_figures, torch_figures = golden_figures(got_flax), golden_figures(got_torch)
    for name, expected in golden.items():
        tolerance = SEED_TOL_STRICT if name == "samples" else SEED_SUMS_TOL_STRICT
        parity.check(
            "seed checkpoint", "strict", f"572x572 {name.replace('_', ' ')} vs golden", tolerance,
            flax=harness.rel_error(flax_figures[name], expected),
            torch=harness.rel_error(torch_figures[name], expected),
            between=harness.rel_error(flax_figures[name], torch_figures[name]),
            note="'vs f64' = vs the original class's float64 output",
        )
    parity.check("seed checkpoint", "strict", "572x572 logits, all", SEED_TOL_STRICT,
                 between=harness.rel_error(got_flax, got_torch))


@pytest.mark.host
def test_seed_naming_round_trip_is_exact():
    cfg = UNetConfig()
    seed_state = seed_state_dict(seed=1)
    back = flax_to_torch(torch_to_flax(seed_state, cfg), cfg, naming="seed")
    assert list(back) == list(seed_state)  # the same keys, in the seed's definition order
    for key, value in seed_state.items():
        assert back[key].dtype == value.dtype and back[key].shape == value.shape, key
        np.testing.assert_array_equal(back[key], value, err_msg=key)
