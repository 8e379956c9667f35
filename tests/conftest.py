"""Fixtures shared by the tests of the weight port, weight files and the converter; every test
that starts a process (tests/subprocess/) is marked slow here."""

import numpy as np
import pytest

from unet_jax.weights.port import PARAMS, layer_table


def random_state_dict(cfg, seed=0):
    """A random numpy state_dict in unet_torch's naming and torch's dtypes, built from the
    port table's documented rule (torch key = layer path joined with dots + tensor name);
    tests/unit/test_model.py checks that rule against unet_torch's real state_dict."""
    rng = np.random.default_rng(seed)
    sd = {}
    for layer in layer_table(cfg):
        for param in PARAMS[layer.kind]:
            key = ".".join(layer.path) + "." + param.torch_name
            shape = param.torch_shape(layer)
            if param.torch_name == "num_batches_tracked":
                sd[key] = np.array(7, np.int64)
            elif param.torch_name == "running_var":
                sd[key] = rng.uniform(0.5, 2, shape).astype(np.float32)
            else:
                sd[key] = rng.normal(size=shape).astype(np.float32)
    return sd


@pytest.fixture
def make_state_dict():
    """`make_state_dict(cfg, seed=0)` -> a random numpy state_dict for `cfg`."""
    return random_state_dict


def pytest_collection_modifyitems(items):
    """Every test under tests/subprocess/ starts a process: all of them are `slow`, so that
    `make test-fast` (tests/unit, not slow) never waits for one."""
    for item in items:
        if "subprocess" in item.path.relative_to(item.config.rootpath).parts[:2]:
            item.add_marker(pytest.mark.slow)
