"""The command line starts without JAX: `import unet_jax.cli` and every command's --help load
neither jax, flax, numpy nor torch (they cost a second or more; the commands import them when they run)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
HEAVY = ("jax", "flax", "optax", "orbax", "numpy", "torch")


def _loaded_after(code: str) -> list[str]:
    probe = code + f"\nimport sys\nprint(sorted(m for m in {HEAVY!r} if m in sys.modules))\n"
    result = subprocess.run([sys.executable, "-c", probe], cwd=REPO, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    return eval(result.stdout.strip().splitlines()[-1])  # the list printed last


@pytest.mark.slow
def test_importing_the_command_line_loads_no_heavy_module():
    assert _loaded_after("import unet_jax.cli") == []


@pytest.mark.slow
@pytest.mark.parametrize("argv", [["--help"], ["train", "--help"], ["convert", "--help"], ["evaluate", "--help"],
                                  ["predict", "--help"], ["--version"]])
def test_help_and_version_load_no_heavy_module(argv):
    code = f"import contextlib, io, unet_jax.cli\nwith contextlib.suppress(SystemExit), contextlib.redirect_stdout(io.StringIO()):\n" \
           f"    unet_jax.cli.main({argv!r})"
    assert _loaded_after(code) == []


@pytest.mark.slow
def test_the_probe_sees_a_heavy_import():
    """What the tests above assert could not hold by a probe that sees nothing."""
    assert _loaded_after("import numpy") == ["numpy"]
