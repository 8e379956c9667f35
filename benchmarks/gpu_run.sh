#!/usr/bin/env bash
# The one prepared command for the GPU machine: the full benchmark in at most 8 minutes.
#
#   bash benchmarks/gpu_run.sh            # from the repository root; OUT is set by the device tool
#
# Runs from source (PYTHONPATH=., the machine's own python3, nothing installed). Results land
# in "$OUT/benchmarks/<device-slug>/" (results.json, results.md, img_per_s.png, logs/, run.log);
# commit them as benchmarks/results/<device-slug>/. Robustness:
#   - every job is its own process with a compile bound and a job time-out (benchmarks/run.py);
#   - jobs start only while they fit the 420 s budget, the rest are recorded as skipped;
#   - results.json/.md are rewritten after every job, and this script's hard stop (SIGTERM at
#     465 s, SIGKILL 10 s later) is followed by a rebuild of the report from whatever exists.
set -u
cd "$(dirname "$0")/.."
OUT="${OUT:-/tmp/unet-bench-out}"
ROOT="$OUT/benchmarks"
mkdir -p "$ROOT"
export PYTHONPATH=".${PYTHONPATH:+:$PYTHONPATH}"
export PYTHONUNBUFFERED=1

nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.max.sm --format=csv 2>&1 | tee "$ROOT/nvidia-smi.txt"
python3 -m benchmarks.run --dry-run --out-root "$ROOT" --compile-timeout 150 --budget-s 420

timeout -k 10 465 python3 -m benchmarks.run --out-root "$ROOT" --compile-timeout 150 --budget-s 420 \
    2>&1 | tee "$ROOT/run.log"
status=${PIPESTATUS[0]}
echo "benchmarks.run exit status: $status"

# If the run was killed between two writes, results.json is still whole (atomic replace):
# rebuild the markdown and the plot from it.
for dir in "$ROOT"/*/; do
    if [ -f "$dir/results.json" ]; then
        python3 -m benchmarks.report "$dir" || echo "report rebuild failed for $dir"
        mv -f "$ROOT/run.log" "$dir/run.log" 2>/dev/null
        cat "$dir/results.md"
    fi
done
exit 0
