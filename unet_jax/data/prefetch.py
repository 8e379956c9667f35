"""Batches made ahead of the training loop, on worker threads, and already handed to the device.

The training batch of step s is a pure function of (seed, s) (`unet_jax.training.sampling.batch_at`), so
batches can be made in any order and on any thread: the loop still trains on exactly the batch
of each step, and a resumed run on exactly the ones it would have seen. `Prefetcher` keeps the
batches of the next `depth` steps in flight on `workers` threads; each is cut on the host and
placed on the device (`jax.device_put` and `make_array_from_callback` return before the copy
ends), so the training thread only dispatches steps while the host works `depth` steps ahead.

A worker's exception is raised in the training thread, by `next`, at the step whose batch
failed; closing the prefetcher cancels the batches not yet started and waits for the running
ones, so no thread outlives the loop.

On the CPU backend the "device" is the host's own cores: XLA already runs the step on its
thread pool while the training thread cuts the next batch (dispatch is asynchronous), and
worker threads would only compete with the step for the same cores. There (`workers_for`)
batches are made on the training thread as before.
"""

from __future__ import annotations

import collections
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Callable, Deque, Generic, Iterable, Optional, Sequence, TypeVar

import jax

Batch = TypeVar("Batch")

WORKERS = 2  # batches cut at once off the training thread, each on `--sampling-threads` threads


def workers_for(devices: Sequence[jax.Device]) -> int:
    """Worker threads for a run on `devices`: none (the training thread) on CPU devices, else WORKERS."""
    return 0 if all(device.platform == "cpu" for device in devices) else WORKERS


class Prefetcher(Generic[Batch]):
    """`make(step)` for each step of `steps`, in order, made up to `depth` steps ahead on `workers` threads
    (`workers` 0: made by `next` on the calling thread, nothing ahead)."""

    def __init__(self, make: Callable[[int], Batch], steps: Iterable[int], depth: int = 2, workers: int = WORKERS):
        if depth < 1 or workers < 0:
            raise ValueError(f"depth must be at least 1 and workers at least 0, got {depth} and {workers}")
        self._make, self._steps, self._depth = make, iter(steps), depth
        self._pool = ThreadPoolExecutor(workers, thread_name_prefix="unet-jax-prefetch") if workers else None
        self._pending: Deque[tuple[int, Optional[Future]]] = collections.deque()
        self._fill()

    def _fill(self) -> None:
        while len(self._pending) < (self._depth if self._pool else 1):
            step = next(self._steps, None)
            if step is None:
                return
            # Without workers the batch is made when asked for, on the calling thread: no future.
            self._pending.append((step, self._pool.submit(self._make, step) if self._pool else None))

    def next(self, step: int) -> Batch:
        """The batch of `step`, which must be the next of `steps`; the worker's exception, if it failed."""
        if not self._pending:
            raise RuntimeError(f"the batch of step {step} was asked for after the last step")
        planned, future = self._pending.popleft()
        if planned != step:
            raise RuntimeError(f"the batch of step {step} was asked for, but step {planned} is next")
        self._fill()  # the next one starts before this one is waited for
        if self._pool is None:
            return self._make(step)
        return future.result()

    def close(self) -> None:
        """Cancel what has not started and wait for what has; idempotent."""
        for _, future in self._pending:
            if future is not None:
                future.cancel()
        self._pending.clear()
        if self._pool:
            self._pool.shutdown(wait=True, cancel_futures=True)

    def __enter__(self) -> "Prefetcher[Batch]":
        return self

    def __exit__(self, *exc) -> None:
        self.close()
