"""The input-pipeline measurement runs and reports (a smoke test: no timing is asserted)."""

import json

from benchmarks.input_pipeline import main


def test_quick_run_reports_every_quantity(tmp_path):
    assert main(["--quick", "--out", str(tmp_path)]) == 0
    report = json.loads((tmp_path / "input_pipeline.json").read_text())
    result = report["result"]
    for key in ("host_sample_ms", "augment_ms", "step_ms", "step_with_augment_ms"):
        assert result[key]["median"] > 0, key
    assert result["pipelined_step_ms"] > 0
    assert report["versions"]["jax"] and report["device"]["name"]
    assert "trainer loop per step" in (tmp_path / "input_pipeline.md").read_text()


def test_host_only_run_reports_the_sampling_time(tmp_path):
    assert main(["--quick", "--host-only", "--out", str(tmp_path)]) == 0
    report = json.loads((tmp_path / "host_sampling.json").read_text())
    assert report["result"]["host_sample_ms"]["median"] > 0 and report["result"]["batch"] == 2
    assert not (tmp_path / "input_pipeline.json").exists()
    assert "Sampling one batch" in (tmp_path / "host_sampling.md").read_text()
