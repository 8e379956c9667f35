"""Data parallelism: 8 forced CPU devices against 1, sharded checkpoints 8 -> 1 and 1 -> 8, sharded
prediction, two processes joined through jax.distributed on localhost, and the errors of bad
device, batch and process settings.

The multi-device checks run in child processes (XLA_FLAGS=--xla_force_host_platform_device_count=8),
so that this test process, like the rest of the suite, keeps its one device. Every tolerance
below is a stated multiple of what the 2-core AMD EPYC CPU measured (jax 0.10.2); the README's
"Many devices and hosts" section lists them.
"""

import json
import os
import re
import socket
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from tests.helpers.ports import free_port
from unet_jax.data import split_validation
from unet_jax.data.pairing import index_folder
from unet_jax.weights.io import load_variables
from unet_jax.weights.port import flatten_variables

REPO = Path(__file__).resolve().parents[2]
CHILD = "tests.helpers.multidevice_child"  # run as a module, from the repository root
CHILD_TIMEOUT_S = 600  # far above the ~1-3 min these take on 2 busy cores; never a hang

# 8 devices against 1, 4 Adam steps of batch 8 (measured -> tolerance):
LOSS_TOLERANCE = 1e-5  # per-step loss, relative: measured 6.8e-7 (no norm), 1.1e-6 (BatchNorm)
WEIGHTS_TOLERANCE = 5e-4  # max|w - w_1| / max|w_1 - w_init| over the network: measured 6.3e-5, 3.9e-5
MOMENTS_TOLERANCE = 1e-7  # Adam's moments, relative to their largest: measured 9.3e-10, 7.5e-9
BATCH_STATS_TOLERANCE = 3e-3  # running statistics per tensor, relative: measured 6.7e-4 (they take in the up-conv biases below)
# Under BatchNorm the up-conv biases have an exact gradient of 0; Adam moves them by about the
# learning rate per step in either direction whatever the rounding noise says: 4 steps of 1e-3.
NOISE_MOVE_BOUND = 2 * 4 * 1e-3  # measured 1.2e-3
# Two processes of 2 devices against one of 4, 3 steps: max|w_2 - w_1| / max|w_1| per tensor of
# parameters and running statistics, measured 7.1e-7 (the noise-driven ones are bounded as above).
TWO_PROCESS_WEIGHTS_TOLERANCE = 1e-5


def child_env(devices: int) -> dict:
    env = dict(os.environ, XLA_FLAGS=f"--xla_force_host_platform_device_count={devices}", PYTHONPATH=str(REPO))
    env.pop("JAX_PLATFORMS", None)
    return env


@pytest.fixture(scope="module")
def measured(tmp_path_factory):
    out = tmp_path_factory.mktemp("multidevice")
    result = subprocess.run([sys.executable, "-m", CHILD, str(out), "none", "batch", "checkpoints",
                             "predict"], cwd=REPO, env=child_env(8), capture_output=True, text=True, timeout=CHILD_TIMEOUT_S)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    return json.loads((out / "measured.json").read_text())


@pytest.mark.parametrize("norm", ["None", "batch"])
def test_steps_on_8_devices_equal_steps_on_1(measured, norm):
    for layout, m in measured[f"norm_{norm}"].items():
        if not isinstance(m, dict):
            continue
        assert m["devices"] == 8
        assert m["loss"] < LOSS_TOLERANCE, (layout, m)
        assert m["weights"] < WEIGHTS_TOLERANCE, (layout, m)
        assert m["adam_moments"] < MOMENTS_TOLERANCE, (layout, m)
        assert m["batch_stats"] < BATCH_STATS_TOLERANCE, (layout, m)
        assert m["noise_moves"] < NOISE_MOVE_BOUND, (layout, m)
        assert m["rng_equal"], "the augmentation key must advance identically"


def test_fsdp_really_shards_the_parameters(measured):
    specs = measured["norm_batch"]["8_fsdp"]["param_specs"]
    assert any("data" in spec for spec in specs), specs
    assert measured["norm_batch"]["8"]["param_specs"] == ["P()"]


def test_batchnorm_statistics_are_over_the_global_batch(measured):
    """Per-device statistics (one sample each) would move the first loss by ~15%, far beyond the
    1e-5 to which 8 devices match 1: the equality above is only possible with global statistics."""
    gap = measured["norm_batch"]["per_device_statistics_loss_gap"]
    assert gap > 1000 * LOSS_TOLERANCE, gap


@pytest.mark.parametrize("case", ["8_fsdp_to_1", "1_to_8"])
def test_checkpoints_restore_on_another_device_count_and_continue(measured, case):
    m = measured["checkpoints"][case]
    assert m["bit_identical"], "a restored checkpoint must hold the saved values exactly"
    assert m["restored_device_counts"] == [1 if case.endswith("_1") else 8], m
    assert m["step"] == 2
    assert m["same_layout_continuation_identical"], "continuing on the saving layout must reproduce the run exactly"
    assert m["continued_loss"] < LOSS_TOLERANCE and m["continued_weights"] < WEIGHTS_TOLERANCE, m


def test_sharded_prediction_equals_single_device(measured):
    m = measured["predict"]
    assert m["devices"] == 8 and m["shape"] == [100, 130, 2]
    assert m["max_abs"] == 0.0  # measured: identical (each tile's forward pass is the same computation)


@pytest.mark.slow
def test_command_line_trains_on_8_devices_and_resumes_on_1(tmp_path):
    result = subprocess.run([sys.executable, "-m", CHILD, str(tmp_path), "cli"], cwd=REPO,
                            env=child_env(8), capture_output=True, text=True, timeout=CHILD_TIMEOUT_S)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    m = json.loads((tmp_path / "measured.json").read_text())["cli"]
    assert m["codes"] == {"train_8": 0, "resume_1": 0, "devices_9": 2, "batch_6_on_4": 2}
    assert "this run sees 8 CPU device(s)" in result.stderr
    assert "--batch-size 4 or 8" in result.stderr
    assert m["never_written"] and m["first_steps_kept"] and m["resume_exact"]
    assert m["steps_resumed"] == m["steps_8"] == [1, 2, 3, 4]
    assert m["resumed_loss"] < LOSS_TOLERANCE, m


TINY = ["--features", "4", "--depth", "2", "--tile-size", "60", "--batch-size", "4", "--cells-train-images", "4",
        "--cells-val-images", "2", "--cells-image-size", "64", "--val-tiles-per-image", "2", "--log-every", "1",
        "--eval-every", "3", "--checkpoint-every", "2", "--steps", "3", "--no-progress", "--norm", "batch"]


def launch(args, devices, **environment):
    return subprocess.Popen([sys.executable, "-m", "unet_jax.cli", "train", *TINY, *args], cwd=REPO,
                            env={**child_env(devices), **environment}, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def finish(process, timeout=CHILD_TIMEOUT_S):
    try:
        out, err = process.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        process.kill()
        out, err = process.communicate()
    return process.returncode, out + err


GLOO_NOTE = re.compile(r"\[Gloo\] Rank \d+ is connected to |\d+ peer ranks\. Expected number of connected peer ranks is : \d+")


@pytest.mark.slow
@pytest.mark.parametrize("fsdp", [False, True], ids=["replicated", "fsdp"])
def test_two_processes_on_localhost_train_as_one(tmp_path, fsdp):
    """Two processes of 2 devices each, joined on 127.0.0.1, against one process of 4 devices
    (replicated); with --fsdp the two processes hold each parameter sharded across both. Each of
    the two reads its own half of the training images (2 shards, one per process, by default);
    the single process, given the same 2 shards, reads both and draws the same batches."""
    together, alone = tmp_path / "two-processes", tmp_path / "one-process"
    address = f"127.0.0.1:{free_port()}"
    processes = [launch(["--run-dir", str(together), "--coordinator-address", address, "--num-processes", "2",
                         "--process-id", str(i), "--coordinator-timeout", "60", *(["--fsdp"] if fsdp else [])],
                        devices=2) for i in range(2)]
    single = launch(["--run-dir", str(alone), "--data-shards", "2"], devices=4)
    results = [finish(p) for p in processes] + [finish(single)]
    for code, text in results:
        assert code == 0, text[-3000:]
    assert f"over 4 device(s){' (FSDP)' if fsdp else ''}," in results[0][1] and "over 4 device(s)," in results[2][1]
    # Besides gloo's own C++ notes, process 1 says only that it joins (distributed.initialize).
    # Gloo writes each note in two pieces from several threads, which can interleave mid-line
    # ("[Gloo] Rank 2 is connected to [Gloo] Rank 3 is connected to 3 peer ranks. ..."), so its
    # pieces are cut out wherever they stand; any other whole line of gloo's is skipped as before.
    without_gloo = GLOO_NOTE.sub("", results[1][1])
    spoken = [line for line in without_gloo.splitlines()
              if line.strip() and not line.startswith(("[Gloo]", "unet-jax: joining"))]
    assert spoken == [], f"only process 0 speaks for the run: {results[1][1]!r}"
    assert sorted(p.name for p in together.iterdir()) == sorted(p.name for p in alone.iterdir())
    shares = [json.loads((run / "summary.json").read_text())["training_data"] for run in (together, alone)]
    assert shares == [{"images": 4, "shards": 2, "read_per_process": [2, 2]}, {"images": 4, "shards": 2, "read_per_process": [4]}]

    def train_losses(run):
        return [r["loss"] for r in map(json.loads, (run / "metrics.jsonl").read_text().splitlines()) if r["split"] == "train"]

    a, b = train_losses(together), train_losses(alone)
    assert len(a) == len(b) == 3
    assert max(abs(x - y) / abs(y) for x, y in zip(a, b)) < LOSS_TOLERANCE, (a, b)
    one = flatten_variables(load_variables(alone / "weights.safetensors")[0])
    two = flatten_variables(load_variables(together / "weights.safetensors")[0])
    assert one.keys() == two.keys()

    def gap(key):
        return float(np.max(np.abs(two[key] - one[key]))) / max(float(np.max(np.abs(one[key]))), 1e-30)

    # The up-conv biases (exact gradient 0 under BatchNorm, see above) and the running means of the
    # BatchNorm right after them, which take them in, are noise-driven; everything else is held tightly.
    noise_driven = {k for k in one if k.startswith("params/upconv") and k.endswith("bias")}
    takes_them_in = {k for k in one if k.startswith("batch_stats/up") and k.endswith("norm1/mean")}
    held = max((gap(k), k) for k in one.keys() - noise_driven - takes_them_in)
    assert held[0] < TWO_PROCESS_WEIGHTS_TOLERANCE, held
    moved = max((float(np.max(np.abs(two[k] - one[k]))), k) for k in noise_driven)
    assert moved[0] < NOISE_MOVE_BOUND, moved
    statistics = max((gap(k), k) for k in takes_them_in)
    assert statistics[0] < BATCH_STATS_TOLERANCE, statistics
    if not fsdp:
        _resume_past_a_damaged_checkpoint(together, train_losses)


def _resume_past_a_damaged_checkpoint(run, train_losses):
    """Both processes find the newest checkpoint damaged, process 0 alone sets it aside, and the
    two continue from the one before it to the same losses and weights as the run they resume."""
    losses, weights = train_losses(run), flatten_variables(load_variables(run / "weights.safetensors")[0])
    newest = run / "checkpoints" / "3"
    damaged = max((p for p in newest.rglob("*") if p.is_file() and p.name != "unet_jax_manifest.json"),
                  key=lambda p: p.stat().st_size)
    damaged.write_bytes(damaged.read_bytes()[:10])
    address = f"127.0.0.1:{free_port()}"
    processes = [launch(["--resume", str(run), "--coordinator-address", address, "--num-processes", "2",
                         "--process-id", str(i), "--coordinator-timeout", "60"], devices=2) for i in range(2)]
    results = [finish(p) for p in processes]
    for code, text in results:
        assert code == 0, text[-3000:]
    assert "can't be restored" in results[0][1] and "resumed from step 2" in results[0][1], results[0][1][-3000:]
    assert sorted(p.name for p in (run / "unusable-checkpoints").iterdir()) == ["3"]  # moved once, by process 0
    assert train_losses(run) == losses
    again = flatten_variables(load_variables(run / "weights.safetensors")[0])
    assert max(float(np.max(np.abs(again[k] - weights[k]))) for k in weights) == 0.0


@pytest.mark.slow
def test_a_bad_file_in_one_process_share_stops_both_naming_it(tmp_path):
    """Process 1 alone reads the damaged image (its shard); both stop with its name, nothing is written."""
    data = tmp_path / "data"
    for sub in ("images", "masks"):
        (data / sub).mkdir(parents=True)
    for i in range(8):
        Image.fromarray(np.random.default_rng(i).integers(0, 256, (64, 64), dtype=np.uint8)).save(data / "images" / f"{i}.png")
        Image.fromarray(np.full((64, 64), 255 * (i % 2), np.uint8)).save(data / "masks" / f"{i}.png")
    training = split_validation(index_folder(data, 1, 2), 0.25, seed=0)[0]
    damaged = Path(training.names[1])  # in shard 1 (training images 1, 3, 5), which only process 1 reads
    damaged.write_bytes(damaged.read_bytes()[:-40])  # the header, which every process reads, survives
    address = f"127.0.0.1:{free_port()}"
    processes = [launch(["--run-dir", str(tmp_path / "run"), "--data", str(data), "--val-fraction", "0.25",
                         "--coordinator-address", address, "--num-processes", "2", "--process-id", str(i),
                         "--coordinator-timeout", "60"], devices=1) for i in range(2)]
    results = [finish(p, timeout=180) for p in processes]
    for code, text in results:
        assert code == 2, text[-3000:]
        assert f"error: process 1 of 2: {damaged}: cannot be read" in text, text[-3000:]
    assert not (tmp_path / "run").exists()


@pytest.mark.slow
def test_a_process_whose_budget_is_too_small_stops_every_process_with_the_same_refusal(tmp_path):
    """Each host measures its own memory budget; the run is refused in every process, naming the
    process whose budget is the smallest, instead of that one leaving and the others waiting."""
    address = f"127.0.0.1:{free_port()}"
    common = ["--run-dir", str(tmp_path / "run"), "--coordinator-address", address, "--num-processes", "2",
              "--coordinator-timeout", "60"]
    processes = [launch([*common, "--process-id", "0"], devices=1),
                 launch([*common, "--process-id", "1"], devices=1, UNET_JAX_MEMORY_BUDGET="1MiB")]
    results = [finish(p, timeout=180) for p in processes]
    for code, text in results:
        assert code == 2, text[-3000:]
        assert "over the budget of 1.0 MiB ($UNET_JAX_MEMORY_BUDGET, process 1 of 2: the smallest" in text, text[-3000:]
    assert not (tmp_path / "run").exists()


@pytest.mark.slow
def test_processes_that_disagree_on_their_number_are_told_so(tmp_path):
    address = f"127.0.0.1:{free_port()}"
    common = ["--run-dir", str(tmp_path / "run"), "--coordinator-address", address, "--coordinator-timeout", "10"]
    coordinator = launch([*common, "--num-processes", "2", "--process-id", "0"], devices=1)
    other = launch([*common, "--num-processes", "3", "--process-id", "1"], devices=1)
    code, text = finish(other, timeout=120)
    finish(coordinator, timeout=120)  # left waiting for a partner that quit, it ends (aborts) when its timeout runs out
    assert code == 2, text[-3000:]
    assert "process 1 was started with --num-processes 3, process 0 with 2" in text
    assert coordinator.returncode not in (None, -9), "the coordinator must end by itself, within its timeout"


@pytest.mark.slow
def test_a_process_id_beyond_process_0s_count_is_explained_before_jax_aborts(tmp_path):
    """JAX's C++ client ends such a process with a fatal log that Python cannot catch; the line
    printed before joining says what it means and names the fix."""
    address = f"127.0.0.1:{free_port()}"
    common = ["--run-dir", str(tmp_path / "run"), "--coordinator-address", address, "--coordinator-timeout", "10"]
    coordinator = launch([*common, "--num-processes", "2", "--process-id", "0"], devices=1)
    beyond = launch([*common, "--num-processes", "3", "--process-id", "2"], devices=1)
    code, text = finish(beyond, timeout=120)
    finish(coordinator, timeout=120)
    assert code != 0, text[-3000:]
    assert "Unexpected task registered" in text  # JAX's own words, as the hint quotes them
    assert "process 0 was started with fewer processes: start every process with the same --num-processes" in text



@pytest.mark.slow
def test_a_process_left_waiting_ends_with_a_message_within_its_timeout(tmp_path):
    """Process 0 started alone, and process 1 pointed at a port where something else listens, ended
    in JAX's C++ "Check failure" abort (exit 134) some seconds after their timeout: now one message
    at the timeout, exit status 2, and no run directory."""
    common = ["--run-dir", str(tmp_path / "run"), "--num-processes", "2", "--coordinator-timeout", "5"]
    started = time.monotonic()
    code, text = finish(launch([*common, "--coordinator-address", f"127.0.0.1:{free_port()}", "--process-id", "0"], devices=1),
                        timeout=120)
    assert code == 2 and "the other processes did not join the coordinator at 127.0.0.1:" in text, text[-3000:]
    assert "within --coordinator-timeout 5 s" in text and "Check failure" not in text and "Traceback" not in text
    with socket.socket() as stranger:  # listens, accepts, and says nothing
        stranger.bind(("127.0.0.1", 0))
        stranger.listen()
        address = f"127.0.0.1:{stranger.getsockname()[1]}"
        code, text = finish(launch([*common, "--coordinator-address", address, "--process-id", "1"], devices=1), timeout=120)
    assert code == 2 and f"this process could not join the coordinator at {address} within" in text, text[-3000:]
    assert "Check failure" not in text and "Traceback" not in text
    assert not (tmp_path / "run").exists() and time.monotonic() - started < 100
