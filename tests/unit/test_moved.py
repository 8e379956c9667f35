"""The import paths the README documented before the packages by concern keep working, as the very modules."""

import importlib
import sys

import pytest

from unet_jax._moved import MOVED


@pytest.mark.parametrize("old", sorted(MOVED))
def test_an_old_path_is_the_module_at_its_new_one(old):
    assert importlib.import_module(old) is importlib.import_module(MOVED[old])
    assert sys.modules[old] is sys.modules[MOVED[old]]


def test_the_documented_imports_work():
    from unet_jax.hugepages import with_hugepages
    from unet_jax.port import flax_to_torch, layer_table, torch_to_flax
    from unet_jax.weights_io import load_variables, read_weights_file
    from unet_jax.xla_cpu import apply

    assert all(callable(f) for f in (with_hugepages, flax_to_torch, layer_table, torch_to_flax, load_variables, read_weights_file,
                                     apply))


def test_a_path_that_never_existed_is_still_an_import_error():
    with pytest.raises(ModuleNotFoundError):
        importlib.import_module("unet_jax.no_such_module")
