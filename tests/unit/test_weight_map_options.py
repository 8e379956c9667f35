"""The weight map's options of `unet-jax train` (--weight-w0, --weight-sigma, --target-gap-width) reach
the targets and weights a run trains on: the bug caught is an option stored in config.json and
printed, but the paper's values used (e.g. w0 dropped between the config and `separation_weights`)."""

import numpy as np

from unet_config import TrainConfig, UNetConfig
from unet_jax.data import make_cells
from unet_jax.data.weight_map import separate_touching, separation_weights
from unet_jax.training.loop import _targets

SMALL = dict(model=UNetConfig(features=4, depth=2), tile_size=60, loss="weighted-ce")


def _run_targets(**options):
    train, val = make_cells(2, 64, seed=1), make_cells(1, 64, seed=2)
    got_train, train_weights, got_val, val_weights = _targets(TrainConfig(**SMALL, **options), train, val, log=lambda _: None)
    return train, got_train, train_weights, val, val_weights


def test_w0_sigma_and_the_gap_width_of_the_config_make_the_weights_and_targets():
    train, got_train, train_weights, val, val_weights = _run_targets(weight_w0=20.0, weight_sigma=3.0, target_gap_width=2)
    for ids, mask, weights in zip(train.instances, got_train.masks, train_weights):
        gapped = separate_touching(ids, 2)
        np.testing.assert_array_equal(mask, gapped > 0)
        np.testing.assert_array_equal(weights, separation_weights(gapped, 20.0, 3.0))
    np.testing.assert_array_equal(val_weights[0], separation_weights(separate_touching(val.instances[0], 2), 20.0, 3.0))


def test_the_paper_values_by_default_and_each_option_changes_what_is_trained_on():
    _, paper_train, paper_weights, _, _ = _run_targets()
    np.testing.assert_array_equal(paper_weights[0], separation_weights(separate_touching(make_cells(2, 64, seed=1).instances[0])))
    for option, value in (("weight_w0", 20.0), ("weight_sigma", 3.0)):
        assert not np.allclose(_run_targets(**{option: value})[2][0], paper_weights[0]), option
    assert not np.array_equal(_run_targets(target_gap_width=2)[1].masks[0], paper_train.masks[0])
