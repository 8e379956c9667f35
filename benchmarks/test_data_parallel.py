"""The all-reduce note's arithmetic, against figures computed by hand."""

import json

import pytest

from benchmarks.data_parallel import allreduce, main
from unet_jax import UNetConfig


def test_the_seed_networks_allreduce_by_hand():
    note = allreduce(UNetConfig())
    assert note["parameters"] == 31_030_658  # the seed network's count, also unet_torch's (tests/unit/test_model.py)
    assert note["gradient_bytes"] == 124_122_632  # 4 bytes each
    # Ring all-reduce on 8 devices: 2 * 7/8 * 124,122,632 B = 217,214,606 B through each link.
    assert note["ring_allreduce_ms"]["NVLink 4 (H100 SXM, per direction)"][8] == pytest.approx(217_214_606 / 450e9 * 1e3)
    assert note["ring_allreduce_ms"]["100 Gb/s Ethernet"][2] == pytest.approx(124_122_632 / 12.5e9 * 1e3)  # 2 * 1/2 = 1


def test_the_note_is_written_with_device_and_versions(tmp_path):
    assert main(["--out", str(tmp_path)]) == 0
    report = json.loads((tmp_path / "data_parallel.json").read_text())
    assert report["versions"]["jax"] and report["result"]["allreduce"]["parameters"] == 31_030_658
    assert "124.1 MB of float32 gradients" in (tmp_path / "data_parallel.md").read_text()
