"""The import paths of modules that moved into the packages by concern (issue 21), kept working:
`import unet_jax.port` gives the very module `unet_jax.weights.port`, not a copy, so monkeypatching
and `isinstance` see one module. Only paths that the README documented are kept."""

from __future__ import annotations

import importlib
import importlib.machinery
import sys

MOVED = {
    "unet_jax.port": "unet_jax.weights.port",
    "unet_jax.namings": "unet_jax.weights.namings",
    "unet_jax.weights_io": "unet_jax.weights.io",
    "unet_jax.xla_cpu": "unet_jax.runtime.xla_cpu",
    "unet_jax.hugepages": "unet_jax.runtime.hugepages",
    "unet_jax.distributed": "unet_jax.runtime.mesh",
    "unet_jax.run_dir": "unet_jax.training.run_dir",
    "unet_jax.train_step": "unet_jax.training.step",
    "unet_jax.tiling": "unet_jax.inference.tile_plan",
    "unet_jax.instance_metrics": "unet_jax.inference.instance_metrics",
    "unet_jax.layers": "unet_jax.model.layers",
}


class _Alias:
    """Finds an old path and loads it as the module at its new one (a meta path finder and loader;
    not subclassing importlib.abc, whose import costs the command line a tenth of a second)."""

    def find_spec(self, name, path=None, target=None):
        if name not in MOVED:
            return None
        return importlib.machinery.ModuleSpec(name, self)

    def create_module(self, spec):
        return importlib.import_module(MOVED[spec.name])

    def exec_module(self, module):
        """The module ran when it was imported under its new name."""


def install() -> None:
    if not any(isinstance(finder, _Alias) for finder in sys.meta_path):
        sys.meta_path.append(_Alias())
