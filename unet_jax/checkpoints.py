"""Orbax checkpoints of the whole train state, kept every N steps with the last K retained.

Orbax writes each step into a temporary directory and renames it when complete, so a kill
mid-write leaves the previous checkpoint as the latest one; `latest_step` never sees a torn
write. The data order needs no state of its own: batch `s` is drawn from a generator seeded
with (seed, s), so restoring the step restores the data order too.
"""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import jax
import orbax.checkpoint as ocp

from unet_jax.train_step import TrainState


def _savable(state: TrainState) -> dict:
    # apply_fn and tx are code, not data: they are rebuilt from config.json on resume.
    return {
        "step": state.step,
        "params": state.params,
        "opt_state": state.opt_state,
        "batch_stats": state.batch_stats,
        "rng": state.rng,
    }


class Checkpointer:
    def __init__(self, directory: Path, keep: int):
        self.directory = Path(directory).absolute()
        self._manager = ocp.CheckpointManager(
            self.directory, options=ocp.CheckpointManagerOptions(max_to_keep=keep, create=True)
        )

    def latest_step(self) -> Optional[int]:
        return self._manager.latest_step()

    def save(self, state: TrainState) -> None:
        self._manager.save(int(state.step), args=ocp.args.StandardSave(_savable(state)), force=True)

    def restore(self, template: TrainState, step: Optional[int] = None) -> TrainState:
        """`template` (a freshly initialised state) supplies the structure, shapes and code."""
        step = self.latest_step() if step is None else step
        if step is None:
            raise FileNotFoundError(f"no checkpoint in {self.directory}; nothing to resume from")
        abstract = jax.tree.map(ocp.utils.to_shape_dtype_struct, _savable(template))
        restored = self._manager.restore(step, args=ocp.args.StandardRestore(abstract))
        return template.replace(**restored)

    def close(self) -> None:
        self._manager.wait_until_finished()
        self._manager.close()
