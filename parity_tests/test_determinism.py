"""Running the same train step twice from the same state gives the same numbers.

On a CPU both frameworks must be bit-identical, with or without determinism settings. On a
GPU, atomics and autotuned kernels may reorder sums: the spread is reported without the
settings and must be 0 with them (XLA_FLAGS=--xla_gpu_deterministic_ops=true, torch
`use_deterministic_algorithms(True)` with CUBLAS_WORKSPACE_CONFIG=:4096:8), which need a
fresh process. The spread is max|run 1 - run 2| over losses and final weights (absolute).
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from parity_tests import determinism_child, harness

CONFIG = determinism_child.determinism_recipe().name
REPO = Path(__file__).resolve().parent.parent
CHILD_TIMEOUT_S = 600


def tolerance(deterministic: bool):
    """0 (bit-identical) wherever it is promised; a GPU without the settings is only reported."""
    return 0.0 if deterministic or not harness.ON_GPU else None


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
    command = [sys.executable, "-m", "parity_tests.determinism_child"] + (["--deterministic"] if deterministic else [])
    completed = subprocess.run(command, check=False, cwd=REPO, env=determinism_child.child_env(deterministic),
                               capture_output=True, text=True, timeout=CHILD_TIMEOUT_S)
    assert completed.returncode == 0, completed.stderr[-4000:]
    result = json.loads(completed.stdout.strip().splitlines()[-1])
    assert "error" not in result, result["error"]
    assert result["jax_backend"] == harness.JAX_BACKEND and result["torch_device"] == harness.TORCH_DEVICE
    assert ("--xla_gpu_deterministic_ops=true" in result["xla_flags"]) == deterministic
    settings = "deterministic settings" if deterministic else "default settings"
    parity.check(CONFIG, "default", f"spread of two identical runs, fresh process, {settings}", tolerance(deterministic),
                 flax=result["jax"], torch=result["torch"], note="max|run1 - run2|, not vs float64")
