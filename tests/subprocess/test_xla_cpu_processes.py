"""The XLA:CPU flags in fresh processes: set before JAX starts by the command line, refused once it
has, and parity under jaxlib's own defaults."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import jaxlib
import pytest

from unet_jax.runtime import xla_cpu

REPO = Path(__file__).resolve().parents[2]
FLAG = "--xla_cpu_experimental_ynn_fusion_type=-individual_convolution"
DEFAULTS_PARITY = (
    "parity_tests/test_forward.py::test_forward_strict_float32[seed-eval]",
    "parity_tests/test_gradients.py::test_gradients_strict_float32[features8]",
)


def _python(code: str, env: dict) -> str:
    done = subprocess.run([sys.executable, "-c", code], cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    return done.stdout


def _without_library_flags() -> dict:
    """This process's environment as it was before conftest.py called apply()."""
    ours = set(xla_cpu.flags_for(jaxlib.__version__))
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    env["XLA_FLAGS"] = " ".join(f for f in env.get("XLA_FLAGS", "").split() if f not in ours)
    return env


@pytest.mark.skipif(not xla_cpu.flags_for(jaxlib.__version__), reason=f"no flags for jaxlib {jaxlib.__version__}")
def test_the_cli_sets_the_flags_before_jax_starts_and_xla_uses_them():
    """`unet-jax convert` in a fresh process, its command replaced by a probe: the flags are in
    XLA_FLAGS before any backend starts, and the process's 3x3 convolutions then compile to XLA's
    own, not to YNNPACK fusions. Under the off switch they stay YNNPACK fusions."""
    code = (
        "import os, jax, jax.numpy as jnp\n"
        "from unet_jax import cli\nfrom unet_jax.runtime import xla_cpu\n"
        "cli.cmd_convert = lambda args: print('at the command:', os.environ.get('XLA_FLAGS', ''), "
        "'| started:', xla_cpu._backends_started()) or 0\n"
        "assert cli.main(['convert', 'in.pt', 'out.safetensors']) == 0\n"
        "conv = jax.jit(lambda x, w: jax.lax.conv_general_dilated(x, w, (1, 1), 'VALID', "
        "dimension_numbers=('NHWC', 'HWIO', 'NHWC')))\n"
        "hlo = conv.lower(jnp.zeros((8, 58, 58, 32)), jnp.zeros((3, 3, 32, 32))).compile().as_text()\n"
        "print('YNNPACK convolutions:', '__ynn_fusion' in hlo)\n"
    )
    with_flags = _python(code, _without_library_flags())
    assert FLAG in with_flags and "| started: False" in with_flags and "YNNPACK convolutions: False" in with_flags
    without = _python(code, {**_without_library_flags(), xla_cpu.OFF_SWITCH: "0"})
    assert FLAG not in without and "YNNPACK convolutions: True" in without


@pytest.mark.skipif(not xla_cpu.flags_for(jaxlib.__version__), reason=f"no flags for jaxlib {jaxlib.__version__}")
def test_parity_holds_under_jaxlibs_own_defaults():
    env = {**_without_library_flags(), xla_cpu.OFF_SWITCH: "0"}
    done = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", *DEFAULTS_PARITY],
                          cwd=REPO, env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-2000:]
    assert f"{len(DEFAULTS_PARITY)} passed" in done.stdout
