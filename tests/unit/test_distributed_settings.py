"""Device and process settings checked in this process: the names and fixes of what does not fit together."""

import re
import socket

import numpy as np
import pytest

from tests.helpers.ports import free_port
from unet_jax.cli import main
from unet_jax.data import make_cells, sample_tiles
from unet_jax.data.tiles import TileRequest
from unet_jax.runtime import processes
from unet_jax.runtime.mesh import check_batch_size, select_devices
from unet_jax.runtime.processes import DistributedError, _wait_for_coordinator, initialize

TINY = ["--features", "4", "--depth", "2", "--tile-size", "60", "--batch-size", "4", "--cells-train-images", "4",
        "--cells-val-images", "2", "--cells-image-size", "64", "--val-tiles-per-image", "2", "--log-every", "1",
        "--eval-every", "3", "--checkpoint-every", "2", "--steps", "3", "--no-progress", "--norm", "batch"]
GLOO_NOTE = re.compile(r"\[Gloo\] Rank \d+ is connected to |\d+ peer ranks\. Expected number of connected peer ranks is : \d+")


def test_gloos_interleaved_notes_are_cut_out_and_nothing_else():
    seen = ("[Gloo] Rank 2 is connected to [Gloo] Rank 3 is connected to 3 peer ranks. Expected number of connected "
            "peer ranks is : 3\n3 peer ranks. Expected number of connected peer ranks is : 3\nunet-jax: joining x\n")
    assert GLOO_NOTE.sub("", seen).split("\n") == ["", "", "unet-jax: joining x", ""]
    assert GLOO_NOTE.sub("", "step 10: loss 0.3\n") == "step 10: loss 0.3\n"


# ------------------------------------------------------------------ errors, in this process
def test_more_devices_than_visible_names_the_visible_count():
    with pytest.raises(DistributedError, match=r"--devices 3: this run sees 1 CPU device\(s\)\. Fix: pass --devices between 1 and 1"):
        select_devices(3)


@pytest.mark.parametrize(("batch", "devices", "nearest"), [(10, 4, "8 or 12"), (3, 8, "8"), (17, 2, "16 or 18")])
def test_a_batch_the_devices_do_not_divide_names_the_nearest_valid_sizes(batch, devices, nearest):
    message = f"--batch-size {batch} does not divide evenly over {devices} devices. Fix: --batch-size {nearest} "
    with pytest.raises(DistributedError, match=message):
        check_batch_size(batch, devices)
    check_batch_size(batch * devices, devices)  # a multiple passes


def test_a_process_cuts_only_its_rows_and_they_are_the_global_batch_rows():
    cells = make_cells(3, 64, seed=5)
    whole = sample_tiles(cells.images, cells.masks, np.random.default_rng(7), TileRequest(8, 60, 20))
    part = sample_tiles(cells.images, cells.masks, np.random.default_rng(7), TileRequest(8, 60, 20, rows=range(2, 6)))
    for w, p in zip(whole, part):
        assert p.shape[0] == 4
        np.testing.assert_array_equal(p, w[2:6])


def test_an_unreachable_coordinator_is_named_within_the_timeout():
    port = free_port()  # nobody listens on it
    with pytest.raises(DistributedError, match=f"the coordinator 127.0.0.1:{port} could not be reached within 1 s"):
        _wait_for_coordinator(f"127.0.0.1:{port}", 1)


@pytest.mark.parametrize(("options", "message"), [
    (dict(num_processes=2, process_id=2), "--process-id 2 is outside 0..1"),
    (dict(num_processes=0, process_id=0), "--num-processes must be at least 1"),
    (dict(coordinator_address="no-port", num_processes=2, process_id=1), "is not HOST:PORT"),
])
def test_inconsistent_process_settings_are_refused_before_joining(options, message):
    with pytest.raises(DistributedError, match=message):
        initialize(timeout_s=1, **options)


def test_the_cli_reports_an_unreachable_coordinator_in_one_line(tmp_path, capsys):
    code = main(["train", *TINY, "--run-dir", str(tmp_path / "run"), "--coordinator-address", f"127.0.0.1:{free_port()}",
                 "--num-processes", "2", "--process-id", "1", "--coordinator-timeout", "1"])
    assert code == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("unet-jax train: error: the coordinator 127.0.0.1:") and "start process 0" in err and "\n" not in err
    assert not (tmp_path / "run").exists()


def test_a_taken_coordinator_port_is_named_before_jax_serves_it(monkeypatch):
    # JAX's coordination service ended process 0 with a segfault ("Failed to add port to server").
    def never(*_, **__):
        raise AssertionError("jax.distributed.initialize reached")

    monkeypatch.setattr(processes.jax.distributed, "initialize", never)
    with socket.socket() as holder:
        holder.bind(("127.0.0.1", 0))
        holder.listen()
        port = holder.getsockname()[1]
        with pytest.raises(DistributedError, match=f"the coordinator's port {port} .* is taken on this host.*Fix: give every"):
            initialize(f"127.0.0.1:{port}", 2, 0, timeout_s=1)
    with pytest.raises(DistributedError, match="--coordinator-timeout must be a positive number of seconds, got 0"):
        initialize(f"127.0.0.1:{free_port()}", 2, 0, timeout_s=0)


@pytest.mark.parametrize("seconds", ["0", "-5"])
def test_a_coordinator_timeout_that_would_wait_for_ever_is_refused_by_the_parser(tmp_path, capsys, seconds):
    with pytest.raises(SystemExit) as info:  # it was accepted, and the run hung
        main(["train", "--run-dir", str(tmp_path / "run"), "--coordinator-timeout", seconds, "--num-processes", "2"])
    assert info.value.code == 2 and f"--coordinator-timeout: must be a positive integer, got {seconds}" in capsys.readouterr().err
    assert not (tmp_path / "run").exists()
