"""The one-way dependency rule: unet_config imports neither framework, unet_jax never imports torch
at import time, unet_torch never imports JAX.

Checked in fresh interpreters, since this process has long since imported both.
"""

import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]


def _run(code):
    result = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    return result.stdout


def test_the_shared_configs_import_neither_torch_nor_jax():
    # Pure Python, so that unet_torch can share them.
    _run(
        "import sys\n"
        "from unet_config import TrainConfig, UNetConfig\n"
        "TrainConfig(model=UNetConfig(features=8)).label_size\n"
        "assert 'torch' not in sys.modules, 'torch'\n"
        "assert 'jax' not in sys.modules and 'flax' not in sys.modules, 'jax'\n"
    )


def test_no_unet_jax_module_imports_torch():
    _run(
        "import sys, importlib, pkgutil, unet_jax\n"
        "names = [m.name for m in pkgutil.walk_packages(unet_jax.__path__, 'unet_jax.')]\n"
        "assert 'unet_jax.cli' in names and 'unet_jax.data.pairing' in names, names\n"
        "for name in names:\n"
        "    importlib.import_module(name)\n"
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
