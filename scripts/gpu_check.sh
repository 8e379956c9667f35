#!/usr/bin/env bash
# The GPU job for a lent H100/H200, as two calls of the device tool. From the repository root:
#
#   bash scripts/gpu_check.sh parity   # parity suite + report; ends within 300 s  -> device run timeout_s=360
#                                      # (PARITY_S=360: ends within 360 s instead -> timeout_s=390)
#                                      # (extra arguments go to pytest, e.g. parity -k seed572)
#   bash scripts/gpu_check.sh bench    # benchmarks, then input pipeline; ends within 420 s -> timeout_s=480
#   bash scripts/gpu_check.sh sweep    # benchmarks.sweep: JAX speed-up options vs torch.compile, with
#                                      # kernel profiles; ends within 420 s -> timeout_s=480
#                                      # (BENCH_S sets those 420 s, for bench and sweep)
#
# Each fits the tool's limits: 10 min a command, 15 min of device time a session (machine start
# 1-2 min included: 2 + 5 + 7 = 14 min for parity then bench, or parity then sweep), at most 8
# files back, at most 2 folders under $OUT.
# Make the bench call as soon as the parity call returns: the machine stays warm only 30 s, and
# a fresh start costs another 1-2 min. Each call leaves in
# $OUT/<device-slug>/ (e.g. nvidia-h100-80gb-hbm3):
#   parity: parity_report.json, parity_report.md, pytest.log, system.txt
#   bench:  results.json, results.md, img_per_s.png, system.txt, bench_logs.tar.gz
#           (the tarball: logs/<job>.log, run.log, input_pipeline.json/.md)
#   sweep:  the same files as bench (no input pipeline), in $OUT/<device-slug>-sweep/
# Reports are rewritten as the run goes (after every test / every job), so a call cut short still
# brings back what it measured. system.txt: nvidia-smi, driver, versions, environment.
#
# Carry the results back into the repository (on any machine, from the folder the tool put them in):
#   bash scripts/gpu_check.sh import <folder>   # -> parity_tests/results/<slug>/ or benchmarks/results/<slug>/
#
# Runs from source with the machine's own python3 (PYTHONPATH=., nothing installed); PYTHON
# overrides it. Try it on a CPU first with small settings (QUICK=1: the benchmarks' --quick
# plan, the input pipeline's --quick network; the parity suite is the same everywhere):
#   PYTHON=.venv/bin/python OUT=/tmp/gpu-try QUICK=1 bash scripts/gpu_check.sh bench
set -u
cd "$(dirname "$0")/.."
PY="${PYTHON:-python3}"
OUT="${OUT:-/tmp/unet-gpu-out}"
QUICK="${QUICK:-}"
export PYTHONPATH=".${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1
# JAX must never take 75% of the GPU up front: the parity processes hold torch beside it, and
# the benchmarks set the same in every job (benchmarks/run.py CHILD_ENV). Before any python runs.
export XLA_PYTHON_CLIENT_PREALLOCATE=false
START=$SECONDS

left() { echo $(( $1 - (SECONDS - START) )); }  # seconds left of a total of $1

device_slug() {
    local slug
    slug=$("$PY" -c 'from benchmarks.devices import host_device; print(host_device()["slug"])' 2>/dev/null) || slug=unknown-device
    echo "$slug${QUICK:+-quick}"
}

system_info() {  # $1: file. Device, driver, versions and settings: what every number needs beside it.
    {
        echo "device_slug: $SLUG"
        echo "date_utc: $(date -u +%Y-%m-%dT%H:%M:%SZ)"
        echo "command: bash scripts/gpu_check.sh $MODE (QUICK=${QUICK:-})"
        echo "git: $(git rev-parse HEAD 2>/dev/null || echo 'no git') $(git status --porcelain 2>/dev/null | wc -l) changed files"
        echo "uname: $(uname -a)"; echo "cpus: $(nproc)"; free -g 2>/dev/null | head -2
        echo "--- nvidia-smi"
        nvidia-smi 2>&1 || echo "no nvidia-smi: no NVIDIA GPU (a CPU try)"
        nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.max.sm,power.limit --format=csv 2>&1
        echo "--- python packages (installed metadata; nothing imported)"
        "$PY" -c 'import json; from benchmarks.devices import package_versions; print(json.dumps(package_versions(), indent=1))' 2>&1
        echo "--- environment"
        env | grep -E '^(XLA_|JAX_|TF_CPP|CUDA_|NCCL_|TORCH|TRITON|CUBLAS|PYTORCH|PYTHONPATH)' | sort
    } > "$1" 2>&1
}

check_out() {  # the device tool brings back at most 8 files, at most 2 folders under $OUT
    local files deep
    files=$(find "$OUT" -type f | wc -l)
    deep=$(find "$OUT" -mindepth 4 -type f | wc -l)
    echo "--- \$OUT: $files files"
    find "$OUT" -type f -printf '%P  %s bytes\n' | sort
    [ "$files" -le 8 ] || echo "WARNING: $files files under \$OUT: the device tool brings back 8"
    [ "$deep" -eq 0 ] || echo "WARNING: files more than 2 folders under \$OUT do not come back"
}

MODE="${1:-}"
case "$MODE" in
  parity)
    SLUG=$(device_slug); DEST="$OUT/$SLUG"; mkdir -p "$DEST"
    system_info "$DEST/system.txt"
    # PARITY_S (300) s in all: SIGTERM to the suite 20 s before the end, SIGKILL 10 s later. Left out: the
    # `host` tests (text, flags, exact copies: nothing a GPU changes) and the `slow` tests, which run the same on any device (a float64 numpy forward at 572 px, the
    # mutation checker's and test_gpu_run's subprocess runs); CI runs them. The GPU-only cases
    # (marker `gpu`) run first. The image's pytest plugins (xdist, timeout, cov, ...) are not
    # the project's: not loaded.
    PYTEST_DISABLE_PLUGIN_AUTOLOAD=1 timeout -k 10 $(( $(left "${PARITY_S:-300}") - 20 )) \
        "$PY" -m parity_tests.run_report --out "$DEST" -- -m "not slow and not host" -p no:cacheprovider "${@:2}"
    status=$?
    echo "parity exit status: $status$([ $status -ge 124 ] && echo ' (stopped by the time limit: the report holds the tests that finished)')"
    grep -E '^(\*\*Partial|Tests:|- failed:)' "$DEST/parity_report.md" 2>/dev/null
    check_out
    exit $status ;;
  bench|sweep)
    # bench: the framework comparison, then the input pipeline. sweep (benchmarks.sweep): the
    # JAX step under each speed-up option and XLA flag set against torch.compile, with a kernel
    # profile of every job; its results go to <slug>-sweep. BENCH_S (420) s each, as two device calls.
    SLUG=$(device_slug); [ "$MODE" = sweep ] && SLUG="$SLUG-sweep"
    DEST="$OUT/$SLUG"; mkdir -p "$DEST"
    WORK=$(mktemp -d /tmp/unet-bench-XXXXXX) && chmod 755 "$WORK"  # logs: into the tarball, not loose under $OUT
    trap 'rm -rf "$WORK"' EXIT
    system_info "$DEST/system.txt"
    pack() { tar -czf "$DEST/bench_logs.tar.gz" -C "$WORK" . 2>/dev/null || echo "tar failed"; }
    # Jobs start only while they fit the budget and are killed at its end, the rest recorded as
    # skipped. bench keeps 100 s for the input pipeline, sweep 45 s; 15 s are kept for packing up.
    if [ "$MODE" = bench ]; then module=benchmarks.run; budget=$(( $(left "${BENCH_S:-420}") - 100 ));
    else module=benchmarks.sweep; budget=$(( $(left "${BENCH_S:-420}") - 45 )); fi
    plan=(--budget-s "$budget"); [ -n "$QUICK" ] && plan=(--quick)  # --quick keeps its own 50 s budget
    timeout -k 10 $(( budget + 30 )) "$PY" -m $module "${plan[@]}" --out "$DEST" --log-dir "$WORK/logs" \
        --compile-timeout 150 2>&1 | tee "$WORK/run.log"
    status=${PIPESTATUS[0]}
    echo "$module exit status: $status"
    # Killed by the time-out, results.json is still whole (atomic replace): rebuild the table and plot.
    if [ "$status" -ge 124 ] && [ -f "$DEST/results.json" ]; then
        "$PY" -m benchmarks.report "$DEST" || echo "report rebuild failed"
    fi
    pack
    pipeline=$(( $(left "${BENCH_S:-420}") - 15 ))
    if [ "$MODE" = sweep ]; then
        :
    elif [ "$pipeline" -ge 40 ]; then
        timeout -k 5 $(( pipeline - 5 )) "$PY" -m benchmarks.input_pipeline ${QUICK:+--quick} --steps 20 \
            --out "$WORK" 2>&1 | tee -a "$WORK/run.log"
        echo "input pipeline exit status: ${PIPESTATUS[0]}"
    else
        echo "input pipeline skipped: ${pipeline} s left" | tee -a "$WORK/run.log"
    fi
    pack
    cat "$DEST/results.md" 2>/dev/null
    check_out
    exit $status ;;
  import)
    src="${2:-}"
    [ -d "$src" ] || { echo "usage: bash scripts/gpu_check.sh import <folder>: the folder the device tool put a call's files in (holding <slug>/system.txt)" >&2; exit 2; }
    found=0
    for info in "$src"/system.txt "$src"/*/system.txt; do
        [ -f "$info" ] || continue
        dir=$(dirname "$info")
        slug=$(sed -n 's/^device_slug: //p' "$info")
        [ -n "$slug" ] || { echo "no device_slug line in $info" >&2; exit 1; }
        if [ -f "$dir/parity_report.json" ]; then
            dest="parity_tests/results/$slug"; mkdir -p "$dest"
            cp "$dir"/parity_report.json "$dir"/parity_report.md "$dir"/system.txt "$dest"/
            [ -f "$dir/pytest.log" ] && cp "$dir/pytest.log" "$dest"/
        elif [ -f "$dir/results.json" ]; then
            dest="benchmarks/results/$slug"; mkdir -p "$dest"
            for f in results.json results.md img_per_s.png system.txt; do [ -f "$dir/$f" ] && cp "$dir/$f" "$dest"/; done
            [ -f "$dir/bench_logs.tar.gz" ] && tar -xzf "$dir/bench_logs.tar.gz" --no-overwrite-dir -C "$dest"
        else
            echo "$dir holds neither parity_report.json nor results.json" >&2; exit 1
        fi
        chmod -R u+w "$dest"  # the device tool's copies are read-only
        echo "imported $dir -> $dest:"; ls -la "$dest"; found=1
    done
    [ "$found" = 1 ] || { echo "no system.txt in $src or its subfolders: is this a gpu_check.sh call's \$OUT?" >&2; exit 1; }
    ;;
  *)
    echo "usage: bash scripts/gpu_check.sh parity|bench|sweep|import <folder>" >&2
    exit 2 ;;
esac
