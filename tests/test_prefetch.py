"""The prefetcher hands each step its own batch, in order, ahead of time, and a worker's error to the caller."""

import threading
import time

import pytest

from unet_jax.data.prefetch import Prefetcher


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
