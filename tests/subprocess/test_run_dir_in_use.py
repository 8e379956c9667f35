"""The run directory's lock, as users meet it: a second `train` or `--resume` while a run is going
is refused naming the process; Ctrl-C stops a run cleanly and says where to resume; a dead
holder never blocks the directory; an unwritable --run-dir fails before any work."""

import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from unet_jax.cli import main
from unet_jax.training.errors import RunDirError
from unet_jax.training.run_dir import RunDir

REPO = Path(__file__).resolve().parents[2]
TINY = ["--features", "4", "--depth", "2", "--tile-size", "60", "--batch-size", "2", "--cells-train-images", "4",
        "--cells-val-images", "2", "--cells-image-size", "64", "--val-tiles-per-image", "1", "--no-progress"]


def wait_for(condition, what, process, timeout=180):
    deadline = time.monotonic() + timeout
    while not condition():
        if process.poll() is not None:
            raise AssertionError(f"the process ended (status {process.returncode}) before {what}")
        if time.monotonic() > deadline:
            raise AssertionError(f"no {what} within {timeout} s")
        time.sleep(0.2)


def start(args, tmp_path):
    """A child process writing its output to files (a full pipe would stall it)."""
    with (tmp_path / "child.out").open("w") as out, (tmp_path / "child.err").open("w") as err:
        return subprocess.Popen([sys.executable, *args], cwd=REPO, stdout=out, stderr=err)


def stop(process):
    if process.poll() is None:
        process.kill()
    process.wait(timeout=60)


def test_a_second_run_is_refused_while_one_runs_and_ctrl_c_says_where_to_resume(tmp_path, capsys):
    run_dir = tmp_path / "run"
    child = start(["-m", "unet_jax.cli", "train", "--run-dir", str(run_dir), "--steps", "1000000", "--checkpoint-every", "2",
                   "--eval-every", "1000000", "--log-every", "1000000", *TINY], tmp_path)
    try:
        wait_for(lambda: RunDir(run_dir).checkpoint_steps(), "first checkpoint", child)
        # The user starts the same command again, then tries to resume: both used to be accepted.
        for command in (["--run-dir", str(run_dir)], ["--resume", str(run_dir)]):
            assert main(["train", *command, *TINY]) == 2
            error = capsys.readouterr().err
            assert error.count("\n") == 1 and f"in use by process {child.pid}" in error and f"kill {child.pid}" in error

        child.send_signal(signal.SIGINT)  # Ctrl-C in the terminal that runs it
        assert child.wait(timeout=120) == 130
    finally:
        stop(child)
    message = (tmp_path / "child.err").read_text()
    assert "Traceback" not in message and message.count("\n") == 1, message
    assert message.startswith("unet-jax train: interrupted at step ")
    latest = RunDir(run_dir).checkpoint_steps()[-1]
    assert f"The latest checkpoint is step {latest} ({run_dir / 'checkpoints' / str(latest)})" in message
    assert f"`unet-jax train --resume {run_dir}`" in message
    with RunDir(run_dir).lock():  # free again
        pass


def test_a_holder_that_dies_never_blocks_the_directory(tmp_path):
    holder = start(["-c", "import sys, time\nfrom unet_jax.training.run_dir import RunDir\n"
                          f"with RunDir({str(tmp_path)!r}).lock():\n    print('locked', flush=True)\n    time.sleep(300)"],
                   tmp_path)
    try:
        wait_for(lambda: "locked" in (tmp_path / "child.out").read_text(), "lock", holder)
        with pytest.raises(RunDirError, match=f"in use by process {holder.pid} on "):
            with RunDir(tmp_path).lock():
                pass
        holder.send_signal(signal.SIGKILL)  # no clean-up runs: the OS releases the lock
        holder.wait(timeout=60)
    finally:
        stop(holder)
    with RunDir(tmp_path).lock():
        pass


