"""Checkpoints: a damaged one is found before it is restored and named with what changed; the
newest whole one is restored instead. A full disk is one message naming what was kept."""

import subprocess

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from unet_jax.config import UNetConfig
from unet_jax.model.unet import UNet
from unet_jax.training.checkpoints import Checkpointer, CheckpointWriteError
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


# What Orbax raised from its background write on a full tmpfs (jax 0.8-era orbax, 2026-12-04).
DISK_FULL = ('RESOURCE_EXHAUSTED: Error writing local file "{0}/4.orbax-checkpoint-tmp/default.orbax-checkpoint-tmp/_sharding": '
             'Failed writing: "{0}/4.orbax-checkpoint-tmp/_sharding.__lock": Failed to write 1155 bytes to file 5: '
             "No space left on device [os_error_code='28']")


@pytest.mark.parametrize("error, expected", [(DISK_FULL, CheckpointWriteError), ("INTERNAL: something else", ValueError)])
def test_a_full_disk_is_one_message_naming_the_checkpoints_kept(saved, template, monkeypatch, error, expected):
    checkpointer = Checkpointer(saved, keep=5)

    def written_in_the_background_and_failed():
        raise ValueError(error.format(saved))

    monkeypatch.setattr(checkpointer._manager, "save", lambda *_, **__: None)
    checkpointer.save(template.replace(step=jnp.asarray(4)))  # returns: the write fails in the background
    monkeypatch.setattr(checkpointer._manager, "wait_until_finished", written_in_the_background_and_failed)
    with pytest.raises(expected) as info:
        checkpointer.wait()
    monkeypatch.undo()
    checkpointer.close()
    if expected is CheckpointWriteError:
        assert str(info.value).startswith(f"the checkpoint of step 4 could not be written: no space left on the device of {saved}. "
                                          "Kept: the complete checkpoints of steps [1, 2, 3], and the run's other files. Fix: ")
        assert f"`unet-jax train --resume {saved.parent}`" in str(info.value)


@pytest.fixture
def small_disk(tmp_path):
    """A 1 MB file system (a tmpfs: needs the right to mount, as root in a container)."""
    mount = tmp_path / "small"
    mount.mkdir()
    if subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", str(mount)], capture_output=True).returncode:
        pytest.skip("no right to mount a small file system here")
    yield mount
    subprocess.run(["umount", str(mount)], check=True)


def test_a_disk_that_fills_up_mid_run_keeps_the_checkpoints_before(small_disk, template, caplog):
    checkpointer = Checkpointer(small_disk / "checkpoints", keep=5)
    checkpointer.save(template.replace(step=jnp.asarray(1)))
    checkpointer.wait()
    filler = small_disk / "filler"
    with pytest.raises(OSError, match="No space left"), open(filler, "wb", buffering=0) as f:  # other files fill the disk
        while True:
            f.write(b"x" * 4096)
    checkpointer.save(template.replace(step=jnp.asarray(2)))
    with pytest.raises(CheckpointWriteError, match=r"step 2 could not be written: .* steps \[1\], and"):
        checkpointer.wait()
    with pytest.raises(CheckpointWriteError, match="step 2 could not be written"):  # the end of the run, disk still full
        checkpointer.close()
    assert not [r for r in caplog.records if r.exc_info]  # Orbax's traceback of its background thread, dropped
    filler.unlink()
    assert restore(small_disk / "checkpoints", template) == (1, [])
