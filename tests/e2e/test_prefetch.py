"""The prefetcher hands each step its own batch, in order, ahead of time, and a worker's error to the caller."""

import json
import threading
import time

import pytest

from unet_jax.data import prefetch
from unet_jax.data.prefetch import WORKERS, Prefetcher, workers_for
from unet_jax.training.loop import train
from unet_jax.training.presets import resolve


def test_every_step_gets_the_batch_made_for_it_in_order():
    made = []
    with Prefetcher(lambda s: made.append(s) or ("batch", s), range(3, 9), depth=2, workers=2) as feed:
        assert [feed.next(s) for s in range(3, 9)] == [("batch", s) for s in range(3, 9)]
    assert sorted(made) == list(range(3, 9))  # each made once


def test_batches_are_made_ahead_while_the_caller_waits_for_none():
    started = {s: threading.Event() for s in range(1, 6)}

    def make(step):
        started[step].set()
        return step

    with Prefetcher(make, range(1, 6), depth=2, workers=1) as feed:
        assert started[1].wait(5) and started[2].wait(5)  # before any is asked for
        assert not started[3].is_set()  # no further than `depth` ahead
        assert feed.next(1) == 1
        assert started[3].wait(5)  # asking for one starts the next


def test_a_workers_error_reaches_the_caller_at_its_step_and_later_batches_are_dropped():
    made = []

    def make(step):
        if step == 2:
            raise OSError("images/a.png: truncated")
        time.sleep(0.01)
        made.append(step)
        return step

    feed = Prefetcher(make, range(1, 100), depth=2, workers=2)
    assert feed.next(1) == 1
    with pytest.raises(OSError, match="a.png"):
        feed.next(2)
    feed.close()
    assert max(made) <= 5  # closing stopped the rest: at most the few in flight were made
    feed.close()  # idempotent


def test_asking_out_of_order_or_past_the_end_is_a_bug_caught_at_once():
    with Prefetcher(lambda s: s, range(1, 3)) as feed:
        with pytest.raises(RuntimeError, match="step 1 is next"):
            feed.next(2)
    with Prefetcher(lambda s: s, range(1, 2)) as feed:
        feed.next(1)
        with pytest.raises(RuntimeError, match="after the last step"):
            feed.next(2)
    with pytest.raises(ValueError):
        Prefetcher(lambda s: s, range(3), depth=0)


def test_without_workers_each_batch_is_made_when_asked_for_on_the_calling_thread():
    threads = []
    with Prefetcher(lambda s: threads.append(threading.current_thread()) or s, range(1, 4), workers=0) as feed:
        assert threads == []  # nothing made ahead
        assert [feed.next(s) for s in range(1, 4)] == [1, 2, 3]
        with pytest.raises(RuntimeError, match="after the last step"):
            feed.next(4)
    assert threads == [threading.main_thread()] * 3


def test_cpu_devices_get_no_workers_and_accelerators_do():
    class Device:
        def __init__(self, platform):
            self.platform = platform

    assert workers_for([Device("cpu"), Device("cpu")]) == 0
    assert workers_for([Device("gpu")]) == WORKERS >= 1


def test_a_run_fed_by_worker_threads_trains_on_exactly_the_batches_of_one_fed_inline(tmp_path, monkeypatch):
    cfg = resolve("demo", dict(features=4, depth=2, tile_size=60, batch_size=2, cells_train_images=4, cells_val_images=2,
                               cells_image_size=64, val_tiles_per_image=1, log_every=1, eval_every=5, checkpoint_every=5,
                               steps=5))

    def losses(run_dir):
        return [(r["step"], r["split"], r["loss"]) for r in map(json.loads, (run_dir / "metrics.jsonl").read_text().splitlines())]

    train(cfg, tmp_path / "inline", progress=False, log=lambda _: None)  # the CPU backend: no workers
    monkeypatch.setattr(prefetch, "workers_for", lambda devices: 2)  # as on an accelerator
    train(cfg, tmp_path / "workers", progress=False, log=lambda _: None)
    assert losses(tmp_path / "workers") == losses(tmp_path / "inline")
