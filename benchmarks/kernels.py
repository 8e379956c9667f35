"""Where one step's device time goes: the top kernels (GPU) or XLA ops / aten ops (CPU) of one
profiled step, from each framework's own profiler, as `{"source", "total_ms", "top": [...]}`.

Profiling runs after the timed steps, on one extra step, so it never touches the timings.
JAX: `jax.profiler.trace(..., create_perfetto_trace=True)`, summing the complete events on the
GPU's streams (processes named `/device:...`) or, on a CPU, on XLA's executor threads. torch:
`torch.profiler`, self device time per kernel (CUDA) or self CPU time per aten op (CPU).
"""

from __future__ import annotations

import collections
import glob
import gzip
import json
import os
import tempfile
from typing import Callable

TOP = 12


def _top(totals_us: dict, counts: dict, source: str) -> dict:
    total = sum(totals_us.values())
    ranked = sorted(totals_us.items(), key=lambda item: -item[1])[:TOP]
    return {
        "source": source,
        "total_ms": total / 1e3,
        "top": [{"name": name[:120], "ms": us / 1e3, "calls": counts[name], "share": us / total if total else None}
                for name, us in ranked],
    }


def jax_trace_totals(trace_events: list) -> tuple[dict, dict, str]:
    """Summed durations (us) and counts per op name of the device's events in a perfetto trace.

    A GPU's process (`/device:GPU:N`) holds one line per CUDA stream beside summary lines
    ("XLA Modules", "XLA Ops") that span the same time again: only the stream lines are counted.
    """
    processes = {e["pid"]: e["args"]["name"] for e in trace_events if e.get("ph") == "M" and e.get("name") == "process_name"}
    threads = {(e["pid"], e["tid"]): e["args"]["name"] for e in trace_events
               if e.get("ph") == "M" and e.get("name") == "thread_name"}
    device_pids = {pid for pid, name in processes.items() if name.startswith("/device:")}
    if device_pids:
        def on_device(event):
            return event["pid"] in device_pids and threads.get((event["pid"], event["tid"]), "").startswith("Stream")

        source = "jax.profiler: GPU kernels on the /device stream lines"
    else:  # XLA:CPU runs the compiled ops on its client's threads, beside its runtime's own spans
        # ("ThunkExecutor::Execute", "SlinkyThreadPool::Await") and, from jax 0.11, "end: <op>" marks.
        def on_device(event):
            name = event["name"]
            return (threads.get((event["pid"], event["tid"]), "").startswith("tf_XLA")
                    and "::" not in name and not name.startswith("end: "))

        source = "jax.profiler: XLA ops on the XLA:CPU client threads"
    totals, counts = collections.defaultdict(float), collections.Counter()
    for event in trace_events:
        if event.get("ph") == "X" and on_device(event):
            totals[event["name"]] += float(event.get("dur", 0.0))
            counts[event["name"]] += 1
    return totals, counts, source


def guarded(profile: Callable[..., dict], *args, **kwargs) -> dict:
    """`profile(...)`, or the error it raised: a profiler that fails (no CUPTI, say) must not
    cost the job the timings it has already measured."""
    try:
        return profile(*args, **kwargs)
    except Exception as error:
        return {"source": getattr(profile, "__name__", "profiler"), "error": f"{type(error).__name__}: {error}"[:500]}


def profile_jax(call: Callable[[], None]) -> dict:
    """Profile one call of `call` (which must block until the device is done)."""
    import jax

    with tempfile.TemporaryDirectory(prefix="unet-jax-trace-") as directory:
        with jax.profiler.trace(directory, create_perfetto_trace=True):
            call()
        paths = glob.glob(os.path.join(directory, "**", "perfetto_trace.json.gz"), recursive=True)
        if not paths:
            return {"source": "jax.profiler", "error": "no perfetto trace was written"}
        with gzip.open(paths[0], "rt") as f:
            trace = json.load(f)
    events = trace["traceEvents"] if isinstance(trace, dict) else trace
    return _top(*jax_trace_totals(events))


def profile_torch(call: Callable[[], None], on_gpu: bool) -> dict:
    """Profile one call of `call` (which must synchronise): CUDA kernels on a GPU, aten ops on a CPU."""
    from torch.autograd import DeviceType
    from torch.profiler import ProfilerActivity, profile

    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if on_gpu else [])
    with profile(activities=activities) as prof:
        call()
    totals, counts = collections.defaultdict(float), collections.Counter()
    for event in prof.key_averages():
        if on_gpu:
            us = getattr(event, "self_device_time_total", None)
            if us is None:
                us = event.self_cuda_time_total
            if event.device_type != DeviceType.CUDA or not us:
                continue
        else:
            us = event.self_cpu_time_total
            if not us or not event.key.startswith("aten::"):
                continue
        totals[event.key] += us
        counts[event.key] += event.count
    source = "torch.profiler: " + ("self CUDA time per kernel" if on_gpu else "self CPU time per aten op")
    return _top(totals, counts, source)
