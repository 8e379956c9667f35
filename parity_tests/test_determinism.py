"""Running the same train step twice from the same state gives the same numbers.

On a CPU both frameworks must be bit-identical, with or without determinism settings. On a
GPU, atomics and autotuned kernels may reorder sums: the spread is reported without the
settings and must be 0 with them (XLA_FLAGS=--xla_gpu_deterministic_ops=true, torch
`use_deterministic_algorithms(True)` with CUBLAS_WORKSPACE_CONFIG=:4096:8), which need a
fresh process. The spread is max|run 1 - run 2| over losses and final weights (absolute).

With those settings torch's F.cross_entropy on 4-D logits raises on CUDA (nll_loss2d has no
deterministic kernel), so the deterministic torch runs compute the same loss from log_softmax
and a one-hot select (`determinism_child.deterministic_cross_entropy`). Checked here on the CPU:
it equals F.cross_entropy to rounding, its step is unet_torch.train_step's, and a whole step
calls none of the ops that torch documents as raising in deterministic mode on CUDA.
"""

from __future__ import annotations

import copy
import json
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch.utils._python_dispatch import TorchDispatchMode

import unet_torch
from parity_tests import determinism_child, harness
from unet_config import UNetConfig

CONFIG = determinism_child.determinism_recipe().name
REPO = Path(__file__).resolve().parent.parent
CHILD_TIMEOUT_S = 600


_CHILDREN: dict[bool, tuple] = {}  # (process, stdout file, stderr file), started at most once per session


def start_child(deterministic: bool) -> tuple:
    """The fresh process of `test_same_step_twice_in_a_fresh_process`, started at most once; its
    output goes to temporary files (a pipe nobody reads yet could fill up and stop it)."""
    if deterministic not in _CHILDREN:
        command = [sys.executable, "-m", "parity_tests.determinism_child"] + (["--deterministic"] if deterministic else [])
        out, err = tempfile.TemporaryFile("w+"), tempfile.TemporaryFile("w+")
        process = subprocess.Popen(command, cwd=REPO, env=determinism_child.child_env(deterministic), stdout=out, stderr=err,
                                   text=True)
        _CHILDREN[deterministic] = (process, out, err)
    return _CHILDREN[deterministic]


def start_early(item) -> None:
    """Called by conftest.py once the session's tests are collected: the children start then and
    run beside the tests before theirs (~30 s each on the H200, most of it start-up and compiling)."""
    if item.originalname == "test_same_step_twice_in_a_fresh_process":
        start_child(item.callspec.params["deterministic"])


def stop_early(*which: bool) -> None:
    """Ends the given children (all: at the end of the session, for tests that never ran) and
    forgets them; one still running is killed."""
    for deterministic in which or list(_CHILDREN):
        if deterministic not in _CHILDREN:
            continue
        process, out, err = _CHILDREN.pop(deterministic)
        if process.poll() is None:
            process.kill()
            process.wait()
        out.close()
        err.close()


def tolerance(deterministic: bool):
    """0 (bit-identical) wherever it is promised; a GPU without the settings is only reported."""
    return 0.0 if deterministic or not harness.ON_GPU else None


# On a GPU this is the default-settings fresh-process case's computation (run_twice, default
# settings, the seed network at 188 px) with nothing asserted (tolerance None there), and that case
# also checks the backend, the flags and the loss its run used: it checks strictly more, so a GPU run
# leaves this one out (~15 s on the H200). On a CPU it is the bit-identity check of default settings.
@pytest.mark.cpu_only(reason="test_same_step_twice_in_a_fresh_process[default-settings] runs the same steps with the "
                      "same settings and checks more")
def test_same_step_twice_in_process(parity):
    result = determinism_child.run_twice()
    parity.check(CONFIG, "default", "spread of two identical runs, this process", tolerance(False),
                 flax=result["jax"], torch=result["torch"], note="max|run1 - run2|, not vs float64")


@pytest.mark.parametrize("deterministic", [
    True,
    pytest.param(False, marks=pytest.mark.skipif(
        not harness.ON_GPU, reason="CPU: default settings are what test_same_step_twice_in_process runs already; "
        "a fresh process adds nothing there (a GPU run reports the spread)")),
], ids=["deterministic", "default-settings"])
def test_same_step_twice_in_a_fresh_process(deterministic, parity):
    child, out, err = start_child(deterministic)
    try:
        child.wait(timeout=CHILD_TIMEOUT_S)
        out.seek(0)
        err.seek(0)
        stdout, stderr = out.read(), err.read()
    finally:
        stop_early(deterministic)
    assert child.returncode == 0, stderr[-4000:]
    result = json.loads(stdout.strip().splitlines()[-1])
    assert "error" not in result, result["error"]
    assert result["jax_backend"] == harness.JAX_BACKEND and result["torch_device"] == harness.TORCH_DEVICE
    assert ("--xla_gpu_deterministic_ops=true" in result["xla_flags"]) == deterministic
    assert result["torch_loss"] == determinism_child.TORCH_LOSSES[deterministic]
    settings = "deterministic settings" if deterministic else "default settings"
    parity.check(CONFIG, "default", f"spread of two identical runs, fresh process, {settings}", tolerance(deterministic),
                 flax=result["jax"], torch=result["torch"],
                 note=f"max|run1 - run2|, not vs float64; torch loss: {result['torch_loss']}")


# ---------------------------------------------------------------- torch's deterministic loss
# deterministic_cross_entropy against F.cross_entropy on random [2, C, 37, 41] logits (20 draws,
# C in 2, 3, 5), measured here (torch 2.13.0+cpu and 2.11.0): the value differs by at most
# 2.0e-7 relative in float32 and 3.6e-16 in float64 (the mean is summed in another order), the
# gradients not at all. Bounds: a few units of rounding, far below any wrong class or scale.
CE_TOLERANCE = {torch.float32: {"value": 1e-6, "gradient": 1e-6}, torch.float64: {"value": 2e-15, "gradient": 1e-14}}


@pytest.mark.host  # torch on the CPU
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=["float32", "float64"])
@pytest.mark.parametrize("classes", [2, 5])
def test_deterministic_cross_entropy_is_f_cross_entropy(dtype, classes):
    generator = torch.Generator().manual_seed(classes)
    logits = (4 * torch.randn(2, classes, 37, 41, generator=generator)).to(dtype).requires_grad_()
    labels = torch.randint(0, classes, (2, 37, 41), generator=generator)
    expected = F.cross_entropy(logits, labels)
    (expected_grad,) = torch.autograd.grad(expected, logits)
    got = determinism_child.deterministic_cross_entropy(logits, labels)
    (got_grad,) = torch.autograd.grad(got, logits)
    assert got.dtype == dtype
    assert abs(got.item() - expected.item()) / abs(expected.item()) <= CE_TOLERANCE[dtype]["value"]
    assert harness.rel_error(got_grad.numpy(), expected_grad.numpy()) <= CE_TOLERANCE[dtype]["gradient"]


@pytest.mark.host
def test_deterministic_step_is_the_product_step():
    """One SGD step (its update is linear in the gradient, so differences are not amplified)
    through deterministic_train_step and unet_torch.train_step: the same loss and weights."""
    config = UNetConfig(features=4, depth=2)
    model = harness.build_torch(config, seed=3)
    images, masks = harness.make_batch(config, 44, 2, seed=4)
    results = []
    for step in (unet_torch.train_step, determinism_child.deterministic_train_step):
        copied = copy.deepcopy(model)
        optimizer = unet_torch.make_torch_optimizer(copied.parameters(), "sgd", 0.1, 0.9)
        loss = step(copied, optimizer, harness.torch_input(images, copied), torch.from_numpy(masks))
        results.append((float(loss), harness.torch_state(copied)))
    (product_loss, product_state), (loss, state) = results
    assert abs(loss - product_loss) / product_loss <= CE_TOLERANCE[torch.float32]["value"]
    moved = max(float(np.abs(product_state[k] - v).max()) for k, v in harness.torch_state(model).items())
    assert moved > 1e-3  # the step did train
    for key, value in product_state.items():
        assert harness.rel_error(state[key], value) <= 1e-6, key


# torch.use_deterministic_algorithms' documentation (torch 2.11 and 2.13): the ops that raise
# under it on CUDA, by their aten names (forward and backward kernels of the modules it lists).
NONDETERMINISTIC_ON_CUDA = {
    "nll_loss_forward", "nll_loss_backward", "nll_loss2d_forward", "nll_loss2d_backward",
    "avg_pool3d_backward", "_adaptive_avg_pool2d_backward", "_adaptive_avg_pool3d_backward",
    "max_pool3d_with_indices_backward", "adaptive_max_pool2d_backward", "fractional_max_pool2d_backward",
    "fractional_max_pool3d_backward", "max_unpool2d", "max_unpool3d", "upsample_linear1d_backward",
    "upsample_bilinear2d_backward", "upsample_bicubic2d_backward", "upsample_trilinear3d_backward",
    "reflection_pad1d_backward", "reflection_pad2d_backward", "reflection_pad3d_backward", "_ctc_loss_backward",
    "put", "put_", "histc", "bincount", "median", "grid_sampler_2d_backward", "grid_sampler_3d_backward",
    "cumsum", "cumsum_", "scatter_reduce", "scatter_reduce_",
}


class _RecordOps(TorchDispatchMode):
    def __init__(self):
        super().__init__()
        self.names = set()

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        self.names.add(func._schema.name.split("::")[-1])
        return func(*args, **(kwargs or {}))


def _ops_of_one_step(step) -> set[str]:
    # A small net with BatchNorm, on the CPU, wherever this runs: the ops of a step do not depend
    # on its size (on a GPU, determinism_recipe() is the seed net, which 44 px is too small for).
    config = UNetConfig(features=4, depth=2, norm="batch")
    model = harness.build_torch(config)
    images, masks = harness.make_batch(config, 44, 2)
    optimizer = unet_torch.make_torch_optimizer(model.parameters(), "adam", 1e-3)
    with _RecordOps() as recorder:
        step(model, optimizer, harness.torch_input(images, model), torch.from_numpy(masks))
    return recorder.names


@pytest.mark.host
def test_deterministic_step_avoids_the_ops_that_raise_on_cuda():
    """The GPU's deterministic torch run can't be run here; what makes it raise there can be
    seen here: the aten ops of one whole step (forward, loss, backward, Adam)."""
    product = _ops_of_one_step(unet_torch.train_step)
    assert product & {"nll_loss2d_forward", "nll_loss_forward"}  # the recording sees the culprit
    assert not _ops_of_one_step(determinism_child.deterministic_train_step) & NONDETERMINISTIC_ON_CUDA
