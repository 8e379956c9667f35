"""Run the parity suite and write its report: `python -m parity_tests.run_report [--out DIR]`.

Writes DIR/parity_report.json, DIR/parity_report.md (every measured error beside its
tolerance, with device and versions; rewritten after every test, so a killed run leaves what it
measured) and DIR/pytest.log (the run, with --durations). DIR
defaults to parity_tests/results/gpu when `nvidia-smi -L` lists a GPU, else .../cpu. The
suite runs in a child process so that it starts JAX and CUDA afresh, with the report enabled.
Extra arguments after `--` go to pytest (e.g. `-- -k forward`). Exit status: pytest's.
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent


def has_nvidia_gpu() -> bool:
    if not shutil.which("nvidia-smi"):
        return False
    listed = subprocess.run(["nvidia-smi", "-L"], check=False, capture_output=True, text=True, timeout=60)
    return listed.returncode == 0 and "GPU" in listed.stdout


def suite_env(out: Path) -> dict:
    """The suite's environment: the report folder, and JAX's preallocation off (the suite holds
    JAX and torch in one process and starts more such processes: JAX must not take 75% of the
    GPU first). The root conftest.py sets the latter too; said here for this entry point."""
    return {**os.environ, "PARITY_REPORT_DIR": str(out), "XLA_PYTHON_CLIENT_PREALLOCATE": "false"}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description="Run parity_tests and write parity_report.{json,md}.")
    parser.add_argument("--out", type=Path, default=None, help="report folder (default: parity_tests/results/cpu or gpu)")
    parser.add_argument("pytest_args", nargs="*", help="extra pytest arguments, after --")
    args = parser.parse_args(argv)
    out = (args.out or HERE / "results" / ("gpu" if has_nvidia_gpu() else "cpu")).resolve()
    out.mkdir(parents=True, exist_ok=True)

    command = [sys.executable, "-m", "pytest", str(HERE), "-v", "-rs", "--tb=short", "--durations=15", *args.pytest_args]
    env = suite_env(out)
    # Line-buffered, one line per test (-v): a run killed by a time limit keeps its log up to
    # the last test that finished (with -q, a line holds ~80 tests' dots).
    with open(out / "pytest.log", "w", buffering=1) as log:
        process = subprocess.Popen(command, cwd=HERE.parent, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                   text=True)
        for line in process.stdout:  # shown live and kept
            sys.stdout.write(line)
            log.write(line)
        returncode = process.wait()
    print(f"report: {out / 'parity_report.md'} (exit status {returncode})")
    return returncode


if __name__ == "__main__":
    sys.exit(main())
