"""`unet-jax train --profile-steps A:B`: a jax.profiler trace of training steps A to B in the run directory.

The trace starts before step A is dispatched and stops once step B's outputs are ready, so it
holds those steps whole (host sampling, transfers, the compiled step on the device) and, with
A = 1, the compilation too. Each step is marked as a `StepTraceAnnotation` named "train", which
TensorBoard's profile plugin (XProf) uses to split the trace into steps. jax.profiler writes
`RUN_DIR/profile/plugins/profile/<time>/<host>.xplane.pb` and a `perfetto_trace.json.gz` beside it.
"""

from __future__ import annotations

import contextlib
from pathlib import Path
from typing import Optional

import jax

TRACE_NAME = "train"  # the step annotation's name


class StepProfiler:
    """Traces the steps `steps` = (first, last) of a loop that starts after step `start`; a no-op without `steps`."""

    def __init__(self, steps: Optional[tuple[int, int]], start: int, directory: Path, log):
        self.directory, self.log, self.active = directory, log, False
        self.first, self.last = steps if steps else (0, -1)
        if steps and self.last <= start:
            log(f"--profile-steps {self.first}:{self.last}: the run resumes after step {start}, so nothing is traced")
        self.first = max(self.first, start + 1)

    def step(self, step: int):
        """A context for one step: starts the trace at the first step, marks the step while tracing."""
        if step == self.first and step <= self.last:
            self.directory.mkdir(parents=True, exist_ok=True)
            jax.profiler.start_trace(str(self.directory), create_perfetto_trace=True)
            self.active = True
        if not self.active:
            return contextlib.nullcontext()
        return jax.profiler.StepTraceAnnotation(TRACE_NAME, step_num=step)

    def done(self, step: int, outputs) -> None:
        """After `step` was dispatched: at the last traced step, wait for its outputs and write the trace."""
        if self.active and step >= self.last:
            jax.block_until_ready(outputs)
            self.close()
            self.log(f"profile of steps {self.first}-{self.last} written to {self.directory} (TensorBoard/XProf: "
                     f"`tensorboard --logdir {self.directory}`; Perfetto: open its perfetto_trace.json.gz at ui.perfetto.dev)")

    def close(self) -> None:
        """Write the trace if one is running (a loop that stops early keeps what it traced)."""
        if self.active:
            self.active = False
            jax.profiler.stop_trace()
