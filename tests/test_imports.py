"""The one-way dependency rule: unet_jax never imports torch at import time, unet_torch never JAX.

Checked in fresh interpreters, since this process has long since imported both.
"""

import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


def _run(code):
    result = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    return result.stdout


def test_unet_jax_and_its_config_import_neither_torch_nor_jax():
    # The config is pure Python, so that unet_torch can share it.
    _run(
        "import sys, unet_jax\n"
        "from unet_jax import UNetConfig\n"
        "UNetConfig(features=8).output_size(572)\n"
        "assert 'torch' not in sys.modules, 'torch'\n"
        "assert 'jax' not in sys.modules and 'flax' not in sys.modules, 'jax'\n"
    )


def test_unet_jax_library_modules_do_not_import_torch():
    modules = ["model", "layers", "port", "weights_io", "convert", "losses", "metrics", "train_step"]
    _run(
        "import sys, importlib\n"
        f"for name in {modules!r}:\n"
        "    importlib.import_module('unet_jax.' + name)\n"
        "import unet_jax\n"
        "assert unet_jax.UNet.__name__ == 'UNet'\n"
        "assert 'torch' not in sys.modules, sorted(m for m in sys.modules if m.startswith('torch'))[:5]\n"
    )


def test_unet_torch_does_not_import_jax():
    pytest.importorskip("torch")
    _run(
        "import sys, unet_torch\n"
        "unet_torch.UNet(features=2, depth=1)\n"
        "leaked = [m for m in ('jax', 'jaxlib', 'flax', 'optax') if m in sys.modules]\n"
        "assert not leaked, leaked\n"
    )
