"""Checkpoints: a damaged one is found before it is restored and named with what changed; the
newest whole one is restored instead."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from unet_jax.config import UNetConfig
from unet_jax.model.unet import UNet
from unet_jax.training.checkpoints import Checkpointer
from unet_jax.training.manifest import MANIFEST
from unet_jax.training.step import create_train_state, make_optax_optimizer

CONFIG = UNetConfig(features=2, depth=1)


@pytest.fixture(scope="module")
def template():
    return create_train_state(UNet(CONFIG), make_optax_optimizer("adam"), 0, 20)


@pytest.fixture
def saved(tmp_path, template):
    """Checkpoints of steps 1, 2 and 3 (parameters scaled by the step, so each is recognisable)."""
    checkpointer = Checkpointer(tmp_path / "checkpoints", keep=5)
    for step in (1, 2, 3):
        params = jax.tree.map(lambda x, s=step: x * s, template.params)
        checkpointer.save(template.replace(step=jnp.asarray(step), params=params))
    checkpointer.close()
    return tmp_path / "checkpoints"


def restore(directory, template):
    checkpointer = Checkpointer(directory, keep=5)
    try:
        state, skipped = checkpointer.restore_newest_intact(template)
    finally:
        checkpointer.close()
    return (None if state is None else int(state.step)), skipped


def largest_file(folder):
    return max((p for p in folder.rglob("*") if p.is_file() and p.name != MANIFEST), key=lambda p: p.stat().st_size)


def test_every_complete_checkpoint_gets_a_manifest(saved, template):
    assert all((saved / str(step) / MANIFEST).is_file() for step in (1, 2, 3))
    assert restore(saved, template) == (3, [])


def test_a_truncated_file_is_named_with_its_sizes(saved, template):
    victim = largest_file(saved / "3")
    size = victim.stat().st_size
    victim.write_bytes(victim.read_bytes()[:10])
    step, skipped = restore(saved, template)
    assert step == 2
    assert skipped == [(3, f"{victim.relative_to(saved / '3').as_posix()} has 10 bytes, {size} when it was written")]


def test_altered_bytes_and_missing_files_are_found(saved, template):
    victim = largest_file(saved / "3")
    data = bytearray(victim.read_bytes())
    data[len(data) // 2] ^= 0xFF  # one bit pattern flipped, size unchanged: restores silently without the manifest
    victim.write_bytes(bytes(data))
    (saved / "2" / "_CHECKPOINT_METADATA").unlink()
    step, skipped = restore(saved, template)
    assert step == 1
    assert skipped[0][0] == 3 and "has changed since it was written" in skipped[0][1]
    assert skipped[1] == (2, "_CHECKPOINT_METADATA is missing")


def test_without_a_manifest_orbax_decides_and_its_error_is_one_line(saved, template):
    # A process killed between Orbax's commit and the manifest leaves a checkpoint without one.
    (saved / "3" / MANIFEST).unlink()
    (saved / "3" / "default" / "_METADATA").write_text("{trunc")
    step, skipped = restore(saved, template)
    assert step == 2 and skipped[0][0] == 3 and skipped[0][1].startswith("JSONDecodeError: ")
    assert "\n" not in skipped[0][1]


def test_non_finite_parameters_are_skipped(tmp_path, template):
    checkpointer = Checkpointer(tmp_path, keep=5)
    checkpointer.save(template.replace(step=jnp.asarray(1)))
    checkpointer.save(template.replace(step=jnp.asarray(2), params=jax.tree.map(lambda x: x * np.nan, template.params)))
    checkpointer.close()
    assert restore(tmp_path, template) == (1, [(2, "its parameters hold NaN or infinite values")])


def test_nothing_intact_and_nothing_at_all(saved, template, tmp_path):
    for step in (1, 2, 3):
        (saved / str(step) / MANIFEST).write_text("{")
    step, skipped = restore(saved, template)
    assert step is None and [s for s, _ in skipped] == [3, 2, 1]
    assert restore(tmp_path / "empty", template) == (None, [])
