"""The GPU run's plumbing, checked where CI can: on the CPU.

- JAX's GPU memory preallocation (75% of the card) is off in every process that holds JAX
  beside torch or beside other GPU processes: each pytest entry point before jax is imported,
  each child process's environment, the determinism child run by hand;
- `scripts/gpu_check.sh parity` leaves at most a handful of files where the device tool fetches
  them ($OUT/<device>/, at most 8 files, at most 2 folders deep), with a finished report;
- a parity run killed mid-way still leaves a whole report of what it measured (it is rewritten
  after every test), the list of tests that never ran, and why each failed test failed;
- the precision modes set torch's TF32 flags so that cuDNN and cuBLAS read what is meant.
`benchmarks/test_benchmarks.py` runs `scripts/gpu_check.sh bench` the same way.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch

from benchmarks import run as bench_run
from benchmarks.variants import VARIANTS
from parity_tests import conftest as parity_conftest
from parity_tests import determinism_child, harness, run_report
from parity_tests import report as parity_report

REPO = Path(__file__).resolve().parent.parent
PREALLOCATE = "XLA_PYTHON_CLIENT_PREALLOCATE"
# Two tests of the suite, selected by name (run_report always collects the whole folder): the
# first instant, the second a few seconds long, later in collection order. The killed-run test
# stops the run while it is inside the second.
FIRST = "parity_tests/test_conv_transpose.py::test_weight_is_not_symmetric"
SECOND = "parity_tests/test_determinism.py::test_same_step_twice_in_process"


def by_name(*nodeids: str) -> list[str]:
    return ["-k", " or ".join(n.split("::")[-1] for n in nodeids)]


def clean_env(**extra) -> dict:
    """This process's environment without the setting under test (pytest's root conftest.py
    put it here), the repository on PYTHONPATH."""
    env = {k: v for k, v in os.environ.items() if k != PREALLOCATE}
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(REPO), env.get("PYTHONPATH")) if p)
    return {**env, **extra}


# Run in a fresh interpreter: when `jax` is first imported, write down the setting as it is then.
RECORD_AT_JAX_IMPORT = """
import importlib.abc, os, sys
class Record(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name == "jax" and not os.path.exists(sys.argv[1]):
            with open(sys.argv[1], "w") as f:
                f.write(os.environ.get("XLA_PYTHON_CLIENT_PREALLOCATE", "<unset>"))
        return None
sys.meta_path.insert(0, Record())
import pytest

# Plumbing checked on the CPU, or subprocess runs (`slow`): nothing a GPU call would add.
pytestmark = pytest.mark.host
sys.exit(pytest.main(sys.argv[2:]))
"""


@pytest.mark.slow  # a pytest run in a subprocess (the GPU run leaves these out)
def test_pytest_on_benchmarks_alone_imports_jax_only_with_preallocation_off(tmp_path):
    # `pytest benchmarks/` holds JAX in-process and starts JAX children on the same GPU; the
    # parity suite holds torch beside JAX. Both rely on the root conftest.py.
    record = tmp_path / "at_jax_import.txt"
    completed = subprocess.run(
        [sys.executable, "-c", RECORD_AT_JAX_IMPORT, str(record), "--collect-only", "-q", "-p", "no:cacheprovider",
         "benchmarks"], cwd=REPO, env=clean_env(), capture_output=True, text=True, timeout=300)
    assert completed.returncode == 0, completed.stdout[-3000:] + completed.stderr[-3000:]
    assert record.read_text() == "false"


def test_every_child_process_gets_preallocation_off(monkeypatch):
    monkeypatch.delenv(PREALLOCATE, raising=False)
    for deterministic in (True, False):
        assert determinism_child.child_env(deterministic)[PREALLOCATE] == "false"
    for variant in VARIANTS.values():
        env, scratch = bench_run.child_env(variant)
        for path in scratch:
            os.rmdir(path)
        assert env[PREALLOCATE] == "false", variant.name
    assert run_report.suite_env(Path("out"))[PREALLOCATE] == "false"


def test_determinism_child_turns_preallocation_off_before_any_framework_is_imported():
    # `python -m parity_tests.determinism_child` by hand holds JAX and torch in one process.
    check = ("import sys, os, parity_tests.determinism_child; "
             "sys.exit(0 if os.environ.get('XLA_PYTHON_CLIENT_PREALLOCATE') == 'false' "
             "and 'jax' not in sys.modules and 'torch' not in sys.modules else 1)")
    completed = subprocess.run([sys.executable, "-c", check], cwd=REPO, env=clean_env(), capture_output=True,
                               text=True, timeout=120)
    assert completed.returncode == 0, completed.stderr[-3000:]


def device_folder(out: Path) -> Path:
    """$OUT/<device slug>/, the one folder a gpu_check.sh call writes."""
    folders = [p for p in out.iterdir() if p.is_dir()]
    assert len(folders) == 1 and not [p for p in out.iterdir() if p.is_file()], sorted(out.iterdir())
    return folders[0]


def assert_fetchable(out: Path) -> None:
    """The device tool's limits: at most 8 files, none more than 2 folders below $OUT."""
    files = [p for p in out.rglob("*") if p.is_file()]
    assert len(files) <= 8, files
    assert all(len(p.relative_to(out).parts) <= 3 for p in files), files


@pytest.mark.slow  # a pytest run in a subprocess (the GPU run leaves these out)
def test_gpu_check_parity_leaves_four_files_and_a_finished_report(tmp_path):
    out = tmp_path / "out"
    completed = subprocess.run(
        ["bash", "scripts/gpu_check.sh", "parity", *by_name(FIRST)], cwd=REPO, capture_output=True, text=True, timeout=300,
        env=clean_env(OUT=str(out), PYTHON=sys.executable))
    assert completed.returncode == 0, completed.stdout[-3000:] + completed.stderr[-3000:]
    assert_fetchable(out)
    folder = device_folder(out)
    assert sorted(p.name for p in folder.iterdir()) == ["parity_report.json", "parity_report.md", "pytest.log",
                                                       "system.txt"]
    report = json.loads((folder / "parity_report.json").read_text())
    assert report["finished"] is True and report["exitstatus"] == 0 and report["not_run"] == []
    assert list(report["outcomes"]) == [FIRST]
    assert {k: report["outcomes"][FIRST][k] for k in ("outcome", "reason")} == {"outcome": "passed", "reason": ""}
    assert report["outcomes"][FIRST]["seconds"] >= 0  # each test's duration, for the suite's time on a GPU
    assert report["environment"]["xla_python_client_preallocate"] == "false"
    assert f"device_slug: {folder.name}\n" in (folder / "system.txt").read_text()
    assert "1 passed" in (folder / "pytest.log").read_text()


@pytest.mark.slow  # a pytest run in a subprocess (the GPU run leaves these out)
def test_a_killed_parity_run_leaves_the_report_of_the_tests_that_finished(tmp_path):
    out = tmp_path / "report"
    process = subprocess.Popen(
        [sys.executable, "-m", "parity_tests.run_report", "--out", str(out), "--", "-p", "no:cacheprovider",
         *by_name(FIRST, SECOND)], cwd=REPO, env=clean_env(), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        start_new_session=True)
    report_file = out / "parity_report.json"
    try:
        deadline = time.monotonic() + 240
        while not report_file.exists():  # first written when FIRST has finished
            assert process.poll() is None, "the run ended before writing a report"
            assert time.monotonic() < deadline, "no report after 240 s"
            time.sleep(0.05)
    finally:
        os.killpg(process.pid, signal.SIGKILL)  # as the device tool's time limit would: no clean-up
        process.wait()
    report = json.loads(report_file.read_text())
    assert report["finished"] is False and report["exitstatus"] is None
    assert report["outcomes"][FIRST]["outcome"] == "passed"
    assert SECOND in report["not_run"]
    assert "**Partial" in (out / "parity_report.md").read_text()
    assert not list(out.glob("*.tmp"))


def test_a_failed_tests_message_is_in_the_report_at_once():
    """The first GPU run was killed by its cap with four failures and no word of why: pytest
    prints tracebacks at the end. The message is kept when the test ends, and shown."""
    crash = SimpleNamespace(message="AssertionError: seed-572px-batch2 [strict] loss per step: exceed the tolerance")
    failed = SimpleNamespace(skipped=False, failed=True, when="call", longrepr=SimpleNamespace(reprcrash=crash))
    reason = parity_conftest._reason(failed)
    assert reason == "call: " + crash.message
    outcomes = {"t::x": {"outcome": "failed", "reason": reason}}
    markdown = parity_report.to_markdown(parity_report.environment(), [], outcomes, finished=False)
    assert f"- failed: `t::x`: {reason}" in markdown.splitlines()


def test_checks_inside_all_recorded_are_each_recorded_then_fail_together():
    """A test with several figures must bring back all of them from a GPU run, not stop at the
    first miss (the first run lost the seed net's weights figures that way)."""
    parity, recorded = parity_conftest.Parity("t"), len(parity_report.ROWS)
    try:
        with pytest.raises(AssertionError, match=r"\[m\] first.*; c \[m\] second"):
            with parity.all_recorded():
                parity.check("c", "m", "first", 1e-5, between=1.0)
                parity.check("c", "m", "within", 1e-5, between=0.0)
                parity.check("c", "m", "second", 1e-5, between=float("nan"))
        assert [r.quantity for r in parity_report.ROWS[recorded:]] == ["first", "within", "second"]
        parity.check("c", "m", "outside", 1e-5, between=0.0)  # plain checks assert at once again
        with pytest.raises(AssertionError):
            parity.check("c", "m", "outside", 1e-5, between=1.0)
    finally:
        del parity_report.ROWS[recorded:]  # figures of this test's own, not of the suite


@pytest.mark.skipif(not hasattr(torch.backends.cudnn, "conv"), reason="torch < 2.9 has only the allow_tf32 flags")
def test_precision_modes_set_the_tf32_flags_cudnn_and_cublas_read():
    """torch >= 2.9 decides TF32 per op from the fp32_precision settings, and raises when code
    reads the legacy allow_tf32 flags while they disagree with those (a mix of the two APIs).
    harness.precision sets the legacy flags only: both views must agree inside and after it.
    (No warning either: pytest turns warnings into errors, and torch 2.11/2.13 emit none here.)"""
    backends = torch.backends

    def view():  # (legacy conv flag, legacy matmul flag, conv uses TF32, matmul uses TF32)
        return (backends.cudnn.allow_tf32, backends.cuda.matmul.allow_tf32,
                backends.cudnn.conv.fp32_precision == "tf32", backends.cuda.matmul.fp32_precision == "tf32")

    before = view()
    with harness.precision("strict"):
        assert view() == (False, False, False, False)
    with harness.precision("default"):  # torch's defaults: TF32 convolutions, IEEE matmuls
        assert view() == (True, False, True, False)
    assert view() == before
