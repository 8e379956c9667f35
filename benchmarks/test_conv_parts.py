"""benchmarks.conv_parts end to end at a tiny size: one row per 3×3 convolution of the network,
every part timed in every framework (a smoke test: it asserts that each part ran, never a timing)."""

from __future__ import annotations

import os
import subprocess
import sys

from benchmarks import conv_parts, flops
from unet_jax.config import UNetConfig

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_every_3x3_convolution_gets_a_row_with_all_three_parts_in_every_framework():
    proc = subprocess.run([sys.executable, "-m", "benchmarks.conv_parts", "--features=2", "--depth=1", "--size=20",
                           "--batch=1", "--reps=1"], cwd=REPO_ROOT, capture_output=True, text=True, timeout=300,
                          env={**os.environ, "PYTHONPATH": REPO_ROOT})
    assert proc.returncode == 0, proc.stderr[-3000:]
    names = [c.name for c in flops.conv_layers(UNetConfig(features=2, depth=1), 20) if c.taps == 9]
    rows = [line for line in proc.stdout.splitlines() if line.startswith("| ") and not line.startswith(("| conv", "| ---"))]
    assert [row.split(" | ")[0][2:] for row in rows] == names + ["sum"]
    for row in rows[:-1]:
        cells = row.strip(" |").split(" | ")[1:]
        assert len(cells) == len(conv_parts.PARTS) * len(conv_parts.FRAMEWORKS) and all(float(c) > 0 for c in cells)
