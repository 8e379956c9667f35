"""The `parity` fixture (record every measured error, then assert) and the session report.

Set PARITY_REPORT_DIR to a folder to get parity_report.json / .md, rewritten after every test
and at the end of the session (`python -m parity_tests.run_report` does this).
JAX's GPU memory preallocation is turned off by the repository's root conftest.py, which pytest
loads before this file.
"""

from __future__ import annotations

import contextlib
import math
import os
import shutil
import tempfile
import time
from pathlib import Path

import pytest

from parity_tests import report as parity_report


class Parity:
    """Records a comparison into the session report, then asserts it against its tolerance."""

    def __init__(self, test: str):
        self.test = test
        self._failures: list[str] | None = None  # inside all_recorded(): the misses so far

    def check(self, config: str, mode: str, quantity: str, tolerance: float | None, *,
              flax: float | None = None, torch: float | None = None, between: float | None = None,
              note: str = "", assert_torch: bool = True) -> None:
        """Each given error (Flax vs float64, torch vs float64, Flax vs torch) must be <= tolerance.

        tolerance=None records a figure without asserting it (e.g. a spread only a GPU shows).
        assert_torch=False records torch's own error without asserting it: the bounds made from
        it (parity_tests.bounds) hold Flax and the Flax-torch difference only.
        """
        measured = [v for v in (flax, torch, between) if v is not None]
        assert measured, "check() needs at least one measured error"
        asserted = [v for v in (flax, torch if assert_torch else None, between) if v is not None]
        passed = None if tolerance is None else all(v <= tolerance for v in asserted)  # NaN compares False
        parity_report.ROWS.append(
            parity_report.Row(self.test, config, mode, quantity, flax, torch, between, tolerance, passed, note)
        )
        failure = None
        if any(math.isnan(v) for v in measured):
            failure = f"{config} [{mode}] {quantity}: NaN"
        elif passed is False:
            failure = (f"{config} [{mode}] {quantity}: flax vs f64 {flax}, torch vs f64 {torch}, flax vs torch "
                       f"{between}: {'a figure' if assert_torch else 'Flax or the difference'} exceeds the tolerance "
                       f"{tolerance}" + (f" ({note})" if note else ""))
        if failure and self._failures is not None:
            self._failures.append(failure)
        else:
            assert failure is None, failure

    @contextlib.contextmanager
    def all_recorded(self):
        """Checks inside record their figures and fail together at the end, not at the first
        miss: a run on a lent GPU must bring back every figure it measured."""
        self._failures = []
        try:
            yield
        finally:
            failures, self._failures = self._failures, None
        assert not failures, "; ".join(failures)


@pytest.fixture
def parity(request) -> Parity:
    return Parity(request.node.nodeid.split("::", 1)[-1])


def pytest_runtest_logreport(report):
    """Remember every test's outcome, a skip's reason and a failure's message, for the session
    report: written after every test, it is what a run killed by its time cap leaves (pytest
    prints tracebacks only at the end)."""
    if report.when == "call" or report.outcome != "passed":
        seconds = parity_report.OUTCOMES.get(report.nodeid, {}).get("seconds", 0.0)
        parity_report.OUTCOMES[report.nodeid] = {"outcome": report.outcome, "reason": _reason(report), "seconds": seconds}
    # Setup, call and teardown together: a test's duration as the GPU-time estimate counts it.
    entry = parity_report.OUTCOMES.setdefault(report.nodeid, {"outcome": "passed", "reason": "", "seconds": 0.0})
    entry["seconds"] = round(entry.get("seconds", 0.0) + report.duration, 3)


def _reason(report) -> str:
    if report.skipped and isinstance(report.longrepr, tuple):
        return report.longrepr[2].removeprefix("Skipped: ")
    if report.failed:
        crash = getattr(report.longrepr, "reprcrash", None)  # the exception's line and message
        message = crash.message if crash is not None else str(report.longrepr)
        return f"{report.when}: {message}"[:2000]
    return ""


_SESSION: list = []  # the running session: pytest_runtest_logfinish is not given it


def pytest_configure(config):
    """A persistent compilation cache for the run (this process and the children it starts, which
    inherit the environment): a fresh process that compiles what another already has reads it
    back instead. Removed at the end of the session unless JAX_COMPILATION_CACHE_DIR was given."""
    if not os.environ.get("JAX_COMPILATION_CACHE_DIR"):
        _OWN_CACHE.append(tempfile.mkdtemp(prefix="parity-xla-cache-"))
        os.environ["JAX_COMPILATION_CACHE_DIR"] = _OWN_CACHE[-1]
    os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS", "1")  # only what is worth a file
    import jax

    jax.config.update("jax_compilation_cache_dir", os.environ["JAX_COMPILATION_CACHE_DIR"])
    jax.config.update("jax_persistent_cache_min_compile_time_secs", float(os.environ["JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS"]))


_OWN_CACHE: list[str] = []  # the cache folder this session made (and removes)


def pytest_unconfigure(config):
    for folder in _OWN_CACHE:
        shutil.rmtree(folder, ignore_errors=True)
        if os.environ.get("JAX_COMPILATION_CACHE_DIR") == folder:
            del os.environ["JAX_COMPILATION_CACHE_DIR"]


def pytest_sessionstart(session):
    session.parity_started = time.perf_counter()
    _SESSION[:] = [session]


def pytest_collection_modifyitems(config, items):
    """Cases marked `gpu` (GPU-only, the most informative of a GPU run) run first: a run cut
    off by its time cap has then measured them. Elsewhere they are skips; their place is moot.
    Cases marked `cpu_only` are skipped on a GPU."""
    items[:] = [i for i in items if i.get_closest_marker("gpu")] + [i for i in items if not i.get_closest_marker("gpu")]
    from parity_tests import harness

    for item in items:  # `cpu_only(reason=...)`: the reason names the test that checks more on a GPU
        marker = item.get_closest_marker("cpu_only")
        if marker is not None and harness.ON_GPU:
            item.add_marker(pytest.mark.skip(reason=f"on a GPU: {marker.kwargs['reason']}"))


def pytest_collection_finish(session):
    """The tests the report expects (this folder's: a whole-repository run collects others too)."""
    here = Path(__file__).resolve().parent
    ours = [item for item in session.items if here in Path(item.path).resolve().parents]
    parity_report.COLLECTED[:] = [item.nodeid for item in ours]
    left_out = ("slow", "host", "cpu_only")  # what a GPU call does not run (cpu_only: skipped there)
    parity_report.GPU_RUN[:] = [i.nodeid for i in ours if not any(i.get_closest_marker(m) for m in left_out)]
    parity_report.HOST[:] = [i.nodeid for i in ours if i.get_closest_marker("host") and not i.get_closest_marker("slow")]
    # Tests whose module can start slow work early (test_determinism's child processes) start it
    # now, to run beside the tests before them; skipped ones are left alone.
    for item in ours:
        start_early = getattr(item.module, "start_early", None)
        skipped = any(mark.args and mark.args[0] for mark in item.iter_markers("skipif"))
        if start_early is not None and not skipped:
            start_early(item)


def _write_report(session, exitstatus, finished: bool):
    directory = os.environ.get(parity_report.REPORT_DIR_ENV)
    if not directory:
        return None
    seconds = time.perf_counter() - getattr(session, "parity_started", time.perf_counter())
    return parity_report.write(directory, exitstatus, seconds, finished=finished)


def pytest_runtest_logfinish(nodeid, location):
    """After every test: a run killed by a time limit still leaves all it measured so far."""
    if _SESSION:
        _write_report(_SESSION[0], None, finished=False)


def pytest_sessionfinish(session, exitstatus):
    for module in {item.module for item in session.items if hasattr(getattr(item, "module", None), "stop_early")}:
        module.stop_early()  # children of tests that never ran (a -x stop, a deselection)
    path = _write_report(session, exitstatus, finished=True)
    if path:
        print(f"\nparity report written to {path / 'parity_report.md'}")
