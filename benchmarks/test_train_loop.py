"""The training-loop benchmark's plumbing: its data folder, its reading of the CLI's log, its budget, one tiny run."""

import json

import numpy as np
import pytest

from benchmarks import train_loop
from benchmarks.loop_data import write_cells_folder
from unet_jax.data import index_folder


def test_the_written_folder_is_read_with_instance_ids_in_png_and_tiff(tmp_path):
    written = write_cells_folder(tmp_path, images=3, size=64)
    assert sorted(p.suffix for p in (tmp_path / "images").iterdir()) == [".png", ".png", ".tif"]
    samples = index_folder(tmp_path, 1, 2).read()
    assert len(samples) == written["images"] == 3
    for image, mask, ids in zip(samples.images, samples.masks, samples.instances):
        assert image.shape == (64, 64, 1) and ids is not None and ids.max() > 1  # object ids, not classes
        np.testing.assert_array_equal(mask, (ids > 0).astype(np.int32))
    # Image 1 is image 0 turned a quarter: distinct files of one drawn image.
    np.testing.assert_array_equal(samples.instances[1], np.rot90(samples.instances[0]))


def _records(steps_per_s: list[float], log_every: int, batch: int) -> list[dict]:
    return [{"split": "train", "step": log_every * (i + 1), "steps_per_s": rate, "img_per_s": rate * batch,
             "data_ms_per_step": float(i)} for i, rate in enumerate(steps_per_s)]


def test_loop_throughput_drops_the_warm_up_window_and_weighs_windows_by_time():
    records = _records([1.0, 2.0, 4.0, 100.0], log_every=10, batch=4)
    figures = train_loop.loop_throughput(records, warm_until=10, until=30, batch=4)
    # Windows 2 and 3 only: 20 steps in 10/2 + 10/4 seconds; the warm-up and the later window are left out.
    assert figures["timed_steps"] == 20 and figures["windows"] == 2
    assert figures["img_per_s"] == pytest.approx(20 * 4 / (10 / 2 + 10 / 4))
    assert figures["host_wait_ms_per_step"] == pytest.approx((1.0 + 2.0) / 2)
    assert train_loop.loop_throughput(records[:1], warm_until=10, until=30, batch=4) == {"timed_steps": 0}


def test_a_partial_last_line_of_the_log_is_left_for_later(tmp_path):
    log = tmp_path / "metrics.jsonl"
    log.write_text(json.dumps({"split": "train", "step": 5}) + "\n" + json.dumps({"split": "val", "step": 5}) + '\n{"spl')
    assert [r["step"] for r in train_loop.train_records(log)] == [5]
    assert train_loop.train_records(tmp_path / "absent.jsonl") == []


def test_a_budget_that_holds_no_job_skips_every_job_and_says_why(tmp_path):
    args = train_loop.build_parser().parse_args(["--out", str(tmp_path), "--first-job-s", "5"])
    saved = []
    result = train_loop.run_plan(args, train_loop.Network(4, 2, 60, 2), tmp_path, tmp_path, deadline=0.0, save=saved.append)
    assert [(s["job"], s["name"]) for s in result["skipped"]] == list(train_loop.JOBS)
    assert result["configs"] == {} and result["bare"] == {} and saved
    assert all("budget" in s["why"] for s in result["skipped"])


@pytest.mark.slow
def test_quick_run_reports_a_ratio_per_configuration(tmp_path):
    assert train_loop.main(["--quick", "--preset", "demo", "--out", str(tmp_path), "--budget-s", "300"]) == 0
    result = json.loads((tmp_path / "train_loop.json").read_text())["result"]
    assert set(result["configs"]) == set(train_loop.CONFIGS) and not result["skipped"]
    for entry in result["configs"].values():
        assert entry["cli"]["timed_steps"] >= 6 and entry["cli"]["first_step_s"] > 0
        assert entry["ratio"] == pytest.approx(entry["cli_img_per_s"] / entry["bare_step_img_per_s"])
        assert entry["host_batch_ms"]["median"] > 0 and entry["host_batch_ms"]["prefetched_ms_per_batch"] > 0
    assert "| bf16 |" in (tmp_path / "train_loop.md").read_text()
