"""Child-side plumbing shared by the JAX and torch step scripts: arguments, timing loop,
statistics, memory fallbacks and the line protocol to the parent.

Protocol: progress goes to stderr as `BENCH-PHASE <name>` lines (the parent uses
`compile-start` / `compile-done` to bound compilation separately from running); the result is
one `BENCH-RESULT <json>` line on stdout, prefixed so that stray library prints can't be
mistaken for it.
"""

from __future__ import annotations

import argparse
import json
import resource
import sys
import time
from typing import Callable

import numpy as np

PHASE_PREFIX = "BENCH-PHASE "
RESULT_PREFIX = "BENCH-RESULT "


def child_parser(description: str) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("--variant", required=True)
    parser.add_argument("--batch", type=int, required=True)
    parser.add_argument("--steps", type=int, default=30, help="timed steps (median and spread over these)")
    parser.add_argument("--warmup", type=int, default=3, help="untimed calls after compilation")
    parser.add_argument("--size", type=int, default=572, help="input tile side")
    parser.add_argument("--features", type=int, default=64)
    parser.add_argument("--depth", type=int, default=4)
    parser.add_argument("--ceiling-n", type=int, default=8192, help="side of the bf16 matmul ceiling (0: skip)")
    parser.add_argument("--profile", action="store_true", help="after timing, profile one more step (benchmarks.kernels)")
    return parser


def phase(name: str, **fields) -> None:
    print(PHASE_PREFIX + name + (" " + json.dumps(fields) if fields else ""), file=sys.stderr, flush=True)


def emit(result: dict) -> None:
    print(RESULT_PREFIX + json.dumps(result), flush=True)


def timed_calls(call: Callable[[], None], count: int) -> list[float]:
    """Wall seconds of `count` calls; `call` must block until the device is done (sync)."""
    times = []
    for _ in range(count):
        start = time.perf_counter()
        call()
        times.append(time.perf_counter() - start)
    return times


def summarize_ms(times_s: list[float]) -> dict:
    """Median and spread in milliseconds: what a reader needs to judge noise between variants."""
    ms = np.asarray(times_s, dtype=np.float64) * 1e3
    p10, p25, p50, p75, p90 = np.percentile(ms, [10, 25, 50, 75, 90])
    return {
        "n": int(ms.size),
        "median": float(p50),
        "mean": float(ms.mean()),
        "min": float(ms.min()),
        "p10": float(p10),
        "p25": float(p25),
        "p75": float(p75),
        "p90": float(p90),
        "max": float(ms.max()),
        "iqr": float(p75 - p25),
    }


def warmup_and_time(step: Callable[[], None], warmup: int, steps: int,
                    after_warmup: Callable[[], None] | None = None) -> dict:
    """Run `warmup` untimed-for-statistics calls, then `steps` timed ones.

    Returns the warm-up wall time, the first call alone (where lazy compilation happens) and
    the per-step statistics. Every call synchronises, so each time is one whole step.
    `after_warmup` runs between the two: where the step peak starts (torch_step.PeakAcrossWarmup,
    jax_step.ResidentBytes).
    """
    phase("warmup-start")
    warm = timed_calls(step, warmup)
    if after_warmup is not None:
        after_warmup()
    phase("timing-start")
    times = timed_calls(step, steps)
    phase("timing-done")
    stats = summarize_ms(times)
    return {
        "warmup_calls": warmup,
        "warmup_s": float(sum(warm)),
        "first_call_s": float(warm[0]) if warm else None,
        # Warm-up time beyond what the same calls cost in steady state: the lazy compilation
        # (torch.compile) or autotuning (cudnn.benchmark) paid inside those calls.
        "warmup_excess_s": float(max(0.0, sum(warm) - warmup * stats["median"] / 1e3)),
        "step_ms": stats,
        "step_times_ms": [round(t * 1e3, 4) for t in times],
    }


def process_peak_rss_bytes() -> int:
    """Peak resident set size of this process (Linux reports ru_maxrss in KiB)."""
    return int(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss) * 1024


def matmul_tflops(seconds: list[float], n: int) -> dict:
    """An n x n x n matmul ceiling: 2 n^3 FLOPs per call over the median (and best) call time."""
    stats = summarize_ms(seconds)
    flops = 2.0 * n**3
    return {
        "n": n,
        "dtype": "bfloat16",
        "median_tflops": flops / (stats["median"] / 1e3) / 1e12,
        "best_tflops": flops / (stats["min"] / 1e3) / 1e12,
        "calls": stats["n"],
    }
