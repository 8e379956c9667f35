"""Run the same train step twice from the same state, in each framework; print the spread.

`python -m parity_tests.determinism_child [--deterministic]` prints one JSON line:
{"jax": max |a - b| over the two runs' losses and final weights, "torch": likewise, ...}.
It is a separate process because XLA reads XLA_FLAGS (--xla_gpu_deterministic_ops=true) and
cuBLAS reads CUBLAS_WORKSPACE_CONFIG only once, when the backend starts: test_determinism
starts it with and without those settings (and `main` sets them itself before importing
either framework, so that it is also right when run by hand). `run_twice` is also called
in-process.

Under torch.use_deterministic_algorithms(True), F.cross_entropy on [N, C, H, W] logits raises
on CUDA: nll_loss2d has no deterministic kernel (its mean is summed with atomics). The torch
runs then use `deterministic_cross_entropy`, the same mean cross-entropy from log_softmax and a
one-hot select (no nll_loss, no scatter); test_determinism checks that it equals
F.cross_entropy to float rounding, in value and gradient.
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import sys

# This process holds JAX and torch on one GPU: JAX must not take 75% of it first. Set at import,
# before either framework is imported, for runs by hand; test_determinism's children get it
# from child_env() as well.
os.environ["XLA_PYTHON_CLIENT_PREALLOCATE"] = "false"

DETERMINISTIC_ENV = {"XLA_FLAGS": "--xla_gpu_deterministic_ops=true", "CUBLAS_WORKSPACE_CONFIG": ":4096:8"}
TORCH_LOSSES = {False: "F.cross_entropy (unet_torch.train_step)",
                True: "log_softmax + one-hot select (deterministic_cross_entropy)"}


def child_env(deterministic: bool) -> dict:
    """The environment for a child process, with or without the determinism settings."""
    env = dict(os.environ)
    env["XLA_PYTHON_CLIENT_PREALLOCATE"] = "false"
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
    from unet_config import UNetConfig

    if harness.ON_GPU:
        return training.Recipe("seed-188px-batch2-3adam", UNetConfig(), 188, 2, "adam", 1e-3, steps=3)
    return training.Recipe("features4-depth2-batchnorm-3adam", UNetConfig(features=4, depth=2, norm="batch"), 44, 2,
                           "adam", 1e-3, steps=3)


def deterministic_cross_entropy(logits, labels):
    """F.cross_entropy(logits, labels) (mean over every pixel) for [N, C, H, W] logits and
    [N, H, W] labels, from ops that are deterministic on CUDA: log_softmax over C, then each
    pixel's own class picked by a one-hot mask (a comparison, not a scatter) and averaged."""
    import torch

    log_probs = torch.nn.functional.log_softmax(logits, dim=1)
    classes = torch.arange(logits.shape[1], device=logits.device).view(1, -1, *([1] * (logits.ndim - 2)))
    picked = torch.where(labels.unsqueeze(1) == classes, log_probs, 0.0).sum(dim=1)  # one non-zero term
    return -picked.mean()


def deterministic_train_step(model, optimizer, images, masks):
    """unet_torch.train_step (float32, no autocast) with `deterministic_cross_entropy` as its loss."""
    import torch

    import unet_torch

    model.train()
    optimizer.zero_grad(set_to_none=True)
    logits = model(images)
    labels = unet_torch.center_crop(masks, logits.shape[-2], logits.shape[-1])
    loss = deterministic_cross_entropy(logits.to(torch.promote_types(logits.dtype, torch.float32)), labels)
    loss.backward()
    optimizer.step()
    return loss.detach()


def train_torch_deterministic(model, recipe, data):
    """training.train_torch's run through `deterministic_train_step` (losses and final state;
    gradient norms are not recorded)."""
    import torch

    import unet_torch
    from parity_tests import harness, training

    optimizer = unet_torch.make_torch_optimizer(model.parameters(), recipe.optimizer, recipe.learning_rate, recipe.momentum)
    device = next(model.parameters()).device
    losses = []
    for images, masks in data:
        loss = deterministic_train_step(model, optimizer, harness.torch_input(images, model),
                                        torch.from_numpy(masks).to(device))
        losses.append(float(loss))
    return training.Run(losses, [], harness.torch_state(model))


def run_twice() -> dict:
    """Spread between two identical runs: Flax through one compiled step, torch on two copies.

    Under torch.use_deterministic_algorithms(True) torch's runs use `deterministic_train_step`.
    """
    import jax
    import jax.numpy as jnp
    import numpy as np
    import torch

    from parity_tests import harness, training
    from unet_jax.training.losses import make_loss
    from unet_jax.training.step import (
        make_optax_optimizer,
        make_train_step,
        state_from_variables,
    )
    from unet_jax.weights.port import flatten_variables

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

        deterministic = torch.are_deterministic_algorithms_enabled()
        result["torch_loss"] = TORCH_LOSSES[deterministic]
        runs = []
        for _ in range(2):
            copied = copy.deepcopy(model).to(harness.TORCH_DEVICE)
            if deterministic:
                runs.append(train_torch_deterministic(copied, recipe, data))
            else:
                runs.append(training.train_torch(copied, recipe, data))
        result["torch"] = _spread(*({**r.state, "losses": np.asarray(r.losses)} for r in runs))
    return result


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--deterministic", action="store_true", help="torch.use_deterministic_algorithms(True)")
    args = parser.parse_args(argv)
    # Read once, when each backend starts: set before either framework is imported.
    wanted = child_env(args.deterministic)
    for key in ("XLA_PYTHON_CLIENT_PREALLOCATE", *DETERMINISTIC_ENV):
        if key in wanted:
            os.environ[key] = wanted[key]
        else:
            os.environ.pop(key, None)
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
