#!/usr/bin/env bash
# Kept for habit: the GPU benchmark run is `bash scripts/gpu_check.sh bench` (read its header:
# time budget, what comes back under $OUT, how to carry it into benchmarks/results/<device>/).
exec bash "$(dirname "$0")/../scripts/gpu_check.sh" bench
