#!/usr/bin/env bash
# The whole GPU job for a lent H100/H200, in two calls that each fit the device tool's 10-minute limit:
#
#   bash scripts/gpu_check.sh parity   # parity suite + report (<= 5 min)  -> $OUT/parity/
#   bash scripts/gpu_check.sh bench    # input pipeline + benchmarks (<= 8 min) -> $OUT/benchmarks/
#
# Runs from source with the machine's own python3 (PYTHONPATH=., nothing installed). Commit
# $OUT/parity as parity_tests/results/<device-slug>/ and $OUT/benchmarks/<slug>/ as
# benchmarks/results/<slug>/. Try it on a CPU first: it runs there too (slowly, on tiny sizes
# only via `make parity-report` / `make bench-quick`).
set -u
cd "$(dirname "$0")/.."
OUT="${OUT:-/tmp/unet-gpu-out}"
export PYTHONPATH=".${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1
mkdir -p "$OUT"
nvidia-smi > "$OUT/nvidia-smi.txt" 2>&1 || echo "no nvidia-smi: running on CPU"

case "${1:-}" in
  parity)
    timeout -k 10 300 python3 -m parity_tests.run_report --out "$OUT/parity"
    echo "parity exit status: $?" ;;
  bench)
    timeout -k 10 60 python3 -m benchmarks.input_pipeline --out "$OUT/benchmarks/input_pipeline" --steps 20
    echo "input pipeline exit status: $?"
    bash benchmarks/gpu_run.sh ;;
  *)
    echo "usage: bash scripts/gpu_check.sh parity|bench" >&2
    exit 2 ;;
esac
