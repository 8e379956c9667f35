"""Run the same train step twice from the same state, in each framework; print the spread.

`python -m parity_tests.determinism_child [--deterministic]` prints one JSON line:
{"jax": max |a - b| over the two runs' losses and final weights, "torch": likewise, ...}.
It is a separate process because XLA reads XLA_FLAGS (--xla_gpu_deterministic_ops=true) and
cuBLAS reads CUBLAS_WORKSPACE_CONFIG only once, when the backend starts: test_determinism
starts it with and without those settings. `run_twice` is also called in-process.
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import sys

DETERMINISTIC_ENV = {"XLA_FLAGS": "--xla_gpu_deterministic_ops=true", "CUBLAS_WORKSPACE_CONFIG": ":4096:8"}


def child_env(deterministic: bool) -> dict:
    """The environment for a child process, with or without the determinism settings."""
    env = dict(os.environ)
    for key, value in DETERMINISTIC_ENV.items():
        if deterministic:
            env[key] = f"{env.get(key, '')} {value}".strip() if key == "XLA_FLAGS" else value
        elif key == "XLA_FLAGS":
            env[key] = env.get(key, "").replace(value, "").strip()
        else:
            env.pop(key, None)
    return env


def _spread(a: dict, b: dict) -> float:
    """Largest absolute difference between two {name: array} maps (0.0 = bit-identical)."""
    import numpy as np

    assert a.keys() == b.keys()
    return max(float(np.abs(np.asarray(a[k], np.float64) - np.asarray(b[k], np.float64)).max(initial=0.0)) for k in a)


def determinism_recipe():
    """Small on a CPU (bit-identity is cheap to show there); on a GPU the seed network, whose
    large reductions are where non-deterministic kernels (split sums, atomics) would show."""
    from parity_tests import harness, training
    from unet_jax.config import UNetConfig

    if harness.ON_GPU:
        return training.Recipe("seed-188px-batch2-3adam", UNetConfig(), 188, 2, "adam", 1e-3, steps=3)
    return training.Recipe("features4-depth2-batchnorm-3adam", UNetConfig(features=4, depth=2, norm="batch"), 44, 2,
                           "adam", 1e-3, steps=3)


def run_twice() -> dict:
    """Spread between two identical runs: Flax through one compiled step, torch on two copies."""
    import jax
    import jax.numpy as jnp
    import numpy as np

    from parity_tests import harness, training
    from unet_jax.losses import make_loss
    from unet_jax.port import flatten_variables
    from unet_jax.train_step import (
        make_optax_optimizer,
        make_train_step,
        state_from_variables,
    )

    recipe = determinism_recipe()
    data = training.batches(recipe)
    model = training.start(recipe)
    variables = harness.port_to_flax(model, recipe.config)
    result = {"recipe": recipe.name, "jax_backend": jax.default_backend(), "torch_device": harness.TORCH_DEVICE}
    with harness.precision("default"):
        step = make_train_step(make_loss("ce"))  # compiled once, used by both runs
        tx = make_optax_optimizer(recipe.optimizer, recipe.learning_rate)
        finals = []
        for _ in range(2):
            state = state_from_variables(harness.flax_model(recipe.config), tx, jax.tree.map(jnp.array, variables),
                                         jax.random.key(0))
            losses = []
            for images, masks in data:
                state, metrics = step(state, jnp.asarray(images), jnp.asarray(masks))
                losses.append(metrics["loss"])
            final = {"params": state.params} if state.batch_stats is None else {"params": state.params,
                                                                                  "batch_stats": state.batch_stats}
            leaves = flatten_variables(final)
            finals.append({**{k: np.asarray(v) for k, v in leaves.items()}, "losses": np.asarray(losses)})
        result["jax"] = _spread(*finals)

        runs = [training.train_torch(copy.deepcopy(model).to(harness.TORCH_DEVICE), recipe, data) for _ in range(2)]
        result["torch"] = _spread(*({**r.state, "losses": np.asarray(r.losses)} for r in runs))
    return result


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--deterministic", action="store_true", help="torch.use_deterministic_algorithms(True)")
    args = parser.parse_args(argv)
    import torch

    if args.deterministic:
        torch.use_deterministic_algorithms(True)
        torch.backends.cudnn.benchmark = False
    try:
        result = run_twice()
    except RuntimeError as error:  # e.g. an op torch has no deterministic kernel for
        result = {"error": f"{type(error).__name__}: {error}"}
    result["deterministic"] = args.deterministic
    result["xla_flags"] = os.environ.get("XLA_FLAGS", "")
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
