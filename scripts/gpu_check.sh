#!/usr/bin/env bash
# The GPU job for a lent H100/H200. From the repository root, as ONE call of the device tool:
#
#   bash scripts/gpu_check.sh all      # parity (PARITY_S, 280 s: the suite's estimate is 235 s), then fair (what is left less LOOP_S),
#                                      # then loop (LOOP_S, 110 s); ends within ALL_S (540) s -> timeout_s=570
#                                      # (PARITY_ARGS: extra pytest arguments for its parity part)
#     leaves 7 files: $OUT/<slug>/ (the parity files below), bench.tar.gz (the fair and loop
#     folders, packed again after each part) and summary/{results.md,train_loop.md} to read at once;
#     `import` unpacks bench.tar.gz by itself.
#
# Or a part alone:
#   bash scripts/gpu_check.sh parity   # parity suite + report; ends within 300 s  -> device run timeout_s=360
#                                      # (PARITY_S=360: ends within 360 s instead -> timeout_s=390)
#                                      # (extra arguments go to pytest, e.g. parity -k seed572)
#   bash scripts/gpu_check.sh bench    # benchmarks, then input pipeline; ends within 420 s -> timeout_s=480
#   bash scripts/gpu_check.sh loop     # benchmarks.train_loop: `unet-jax train --data DIR` against the bare
#                                      # step, bf16 first; ends within LOOP_S (120) s -> timeout_s=LOOP_S+30
#   bash scripts/gpu_check.sh sweep    # benchmarks.sweep: JAX speed-up options vs torch.compile, with
#                                      # kernel profiles; ends within 420 s -> timeout_s=480
#                                      # (BENCH_S sets those 420 s, for bench and sweep)
#   bash scripts/gpu_check.sh fair     # the fair plan (benchmarks/variants.py FAIR_PLAN): JAX against
#                                      # PyTorch at its best, same precision, with kernel profiles and
#                                      # the minimal-step check; ends within 240 s -> timeout_s=270
#                                      # (BENCH_S sets those 240 s; extra arguments go to benchmarks.run)
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
#   fair:   the same files as sweep, in $OUT/<device-slug>-fair/
#   loop:   train_loop.json, train_loop.md, system.txt, loop_logs.tar.gz (each run's and bare step's log)
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
OUT="${OUT:-/tmp/unet-gpu-out}"; export OUT QUICK="${QUICK:-}"
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
    # (marker `gpu`) run first. The image's pytest plugins (timeout, cov, ...) are not the project's,
    # and xdist (`make test`'s two workers) would share the one GPU and its budget: none is loaded.
    PYTEST_DISABLE_PLUGIN_AUTOLOAD=1 timeout -k 10 $(( $(left "${PARITY_S:-300}") - 20 )) \
        "$PY" -m parity_tests.run_report --out "$DEST" -- -m "not slow and not host" -p no:cacheprovider "${@:2}"
    status=$?
    echo "parity exit status: $status$([ $status -ge 124 ] && echo ' (stopped by the time limit: the report holds the tests that finished)')"
    grep -E '^(\*\*Partial|Tests:|- failed:)' "$DEST/parity_report.md" 2>/dev/null
    check_out
    exit $status ;;
  bench|sweep|fair)
    # bench: the framework comparison, then the input pipeline. sweep (benchmarks.sweep): the
    # JAX step under each speed-up option and XLA flag set against torch.compile, with a kernel
    # profile of every job; its results go to <slug>-sweep. BENCH_S (420) s each, as two device calls.
    # fair: the fair plan in BENCH_S (240) s, to <slug>-fair, torch.compile jobs sharing one cache.
    SLUG=$(device_slug); [ "$MODE" != bench ] && SLUG="$SLUG-$MODE"
    DEST="$OUT/$SLUG"; mkdir -p "$DEST"
    WORK=$(mktemp -d /tmp/unet-bench-XXXXXX) && chmod 755 "$WORK"  # logs: into the tarball, not loose under $OUT
    trap 'rm -rf "$WORK"' EXIT
    system_info "$DEST/system.txt"
    pack() { tar -czf "$DEST/bench_logs.tar.gz" -C "$WORK" . 2>/dev/null || echo "tar failed"; }
    # Jobs start only while they fit the budget and are killed at its end, the rest recorded as
    # skipped. bench keeps 100 s for the input pipeline, sweep 45 s; 15 s are kept for packing up.
    # fair keeps 20 s (the end of the last job's profile, the report, packing).
    total=${BENCH_S:-420}
    if [ "$MODE" = bench ]; then module=benchmarks.run; budget=$(( $(left "$total") - 100 ));
    elif [ "$MODE" = sweep ]; then module=benchmarks.sweep; budget=$(( $(left "$total") - 45 ));
    else total=${BENCH_S:-240}; module=benchmarks.run; budget=$(( $(left "$total") - 20 )); fi
    plan=(--budget-s "$budget"); [ -n "$QUICK" ] && plan=(--quick)  # --quick keeps its own 50 s budget
    # fair, also with QUICK (a CPU try of the same plan at the quick size): BENCH_S's budget, and
    # the script's extra arguments (e.g. --variants ... --batch 1 to keep a CPU try short).
    [ "$MODE" = fair ] && plan=(${QUICK:+--quick} --plan fair --profile --shared-compile-cache --budget-s "$budget" "${@:2}")
    timeout -k 10 $(( budget + 30 )) "$PY" -m $module "${plan[@]}" --out "$DEST" --log-dir "$WORK/logs" \
        --compile-timeout 150 2>&1 | tee "$WORK/run.log"
    status=${PIPESTATUS[0]}
    echo "$module exit status: $status"
    # Killed by the time-out, results.json is still whole (atomic replace): rebuild the table and plot.
    if [ "$status" -ge 124 ] && [ -f "$DEST/results.json" ]; then
        "$PY" -m benchmarks.report "$DEST" || echo "report rebuild failed"
    fi
    pack
    pipeline=$(( $(left "$total") - 15 ))
    if [ "$MODE" != bench ]; then
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
  loop)
    # The training loop against the bare step (benchmarks.train_loop): the seed network on 30 written
    # images of 1024 px; its own budget is LOOP_S (120) s less 15 s kept for packing up.
    SLUG=$(device_slug); DEST="$OUT/$SLUG"; mkdir -p "$DEST"
    WORK=$(mktemp -d /tmp/unet-loop-XXXXXX) && chmod 755 "$WORK"
    trap 'rm -rf "$WORK"' EXIT
    system_info "$DEST/system.txt"
    budget=$(( $(left "${LOOP_S:-120}") - 15 ))
    plan=(--budget-s "$budget"); [ -n "$QUICK" ] && plan=(--quick --preset demo --budget-s "$budget")
    timeout -k 10 $(( budget + 10 )) "$PY" -m benchmarks.train_loop "${plan[@]}" --out "$DEST" --work "$WORK/work" \
        2>&1 | tee "$WORK/run.log"
    status=${PIPESTATUS[0]}
    echo "benchmarks.train_loop exit status: $status"
    mkdir -p "$WORK/logs" && cp "$WORK"/work/*.log "$WORK/run.log" "$WORK/logs/" 2>/dev/null
    tar -czf "$DEST/loop_logs.tar.gz" -C "$WORK/logs" . 2>/dev/null || echo "tar failed"
    check_out
    exit $status ;;
  all)
    # One device call: each part in its own budget, most needed first. The parity part writes into
    # $OUT itself (its report is rewritten after every test); fair and loop write into a staging
    # folder that is packed into $OUT/bench.tar.gz after each part, so that the call brings back at
    # most 7 files and a part cut short loses nothing of the parts before it.
    ALL_S=${ALL_S:-540}; LOOP_S=${LOOP_S:-110}
    STAGE=$(mktemp -d /tmp/unet-all-XXXXXX) && chmod 755 "$STAGE"
    trap 'rm -rf "$STAGE"' EXIT
    pack_stage() {
        rm -f "$STAGE"/*/img_per_s.png  # rebuilt from results.json by `import`
        tar -czf "$OUT/bench.tar.gz.part" -C "$STAGE" . && mv "$OUT/bench.tar.gz.part" "$OUT/bench.tar.gz"
        mkdir -p "$OUT/summary"
        for f in "$STAGE"/*/results.md "$STAGE"/*/train_loop.md; do [ -f "$f" ] && cp "$f" "$OUT/summary/"; done
    }
    PARITY_S=${PARITY_S:-280} bash "$0" parity ${PARITY_ARGS:-}  # the suite: 260 s, its estimate 235 s, before the kill
    parity_status=$?
    fair_s=$(( $(left "$ALL_S") - LOOP_S ))
    if [ "$fair_s" -ge 60 ]; then
        OUT="$STAGE" BENCH_S=$fair_s bash "$0" fair; fair_status=$?; pack_stage
    else
        echo "fair skipped: ${fair_s} s left for it"; fair_status=1
    fi
    loop_s=$(( $(left "$ALL_S") - 5 ))
    OUT="$STAGE" LOOP_S=$loop_s bash "$0" loop; loop_status=$?; pack_stage
    echo "all: parity $parity_status, fair $fair_status, loop $loop_status in $(( SECONDS - START )) s"
    check_out
    exit $(( parity_status || fair_status || loop_status )) ;;
  import)
    src="${2:-}"
    if [ -f "$src/bench.tar.gz" ]; then  # an `all` call: its fair and loop folders, packed
        unpacked=$(mktemp -d) && tar -xzf "$src/bench.tar.gz" -C "$unpacked" && bash "$0" import "$unpacked" || exit 1
        for dir in "$unpacked"/*-fair; do
            [ -f "$dir/results.json" ] && "$PY" -m benchmarks.report "benchmarks/results/$(basename "$dir")"
        done
        rm -rf "$unpacked"
    fi
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
        elif [ -f "$dir/train_loop.json" ]; then  # beside the bench's results of the same device
            dest="benchmarks/results/$slug"; mkdir -p "$dest"
            cp "$dir"/train_loop.json "$dir"/train_loop.md "$dest"/
            cp "$dir/system.txt" "$dest/train_loop_system.txt"
            [ -f "$dir/loop_logs.tar.gz" ] && mkdir -p "$dest/logs/train_loop" && tar -xzf "$dir/loop_logs.tar.gz" -C "$dest/logs/train_loop"
        elif [ -f "$dir/results.json" ]; then
            dest="benchmarks/results/$slug"; mkdir -p "$dest"
            for f in results.json results.md img_per_s.png system.txt; do [ -f "$dir/$f" ] && cp "$dir/$f" "$dest"/; done
            [ -f "$dir/bench_logs.tar.gz" ] && tar -xzf "$dir/bench_logs.tar.gz" --no-overwrite-dir -C "$dest"
        else
            echo "$dir holds none of parity_report.json, results.json, train_loop.json" >&2; exit 1
        fi
        chmod -R u+w "$dest"  # the device tool's copies are read-only
        echo "imported $dir -> $dest:"; ls -la "$dest"; found=1
    done
    [ "$found" = 1 ] || [ -f "$src/bench.tar.gz" ] || { echo "no system.txt in $src or its subfolders: is this a gpu_check.sh call's \$OUT?" >&2; exit 1; }
    ;;
  *)
    echo "usage: bash scripts/gpu_check.sh all|parity|bench|sweep|fair|loop|import <folder>" >&2
    exit 2 ;;
esac
