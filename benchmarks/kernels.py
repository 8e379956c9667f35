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

TOP = 12  # at least this many kernels are kept, and beyond them every one of at least MIN_SHARE
MIN_SHARE = 0.01


def _top(totals_us: dict, counts: dict, source: str, launchers: dict | None = None) -> dict:
    """The kernels (or ops) of one step, slowest first: the first TOP and every other one of at
    least MIN_SHARE of the step, full names; the rest summed. `launchers`: {name: [chains]}."""
    total = sum(totals_us.values())
    ranked = sorted(totals_us.items(), key=lambda item: -item[1])
    kept = [(name, us) for i, (name, us) in enumerate(ranked) if i < TOP or (total and us / total >= MIN_SHARE)]
    rest_us = total - sum(us for _, us in kept)
    top = []
    for name, us in kept:
        entry = {"name": name, "ms": us / 1e3, "calls": counts[name], "share": us / total if total else None}
        if launchers and launchers.get(name):
            entry["launched_by"] = launchers[name]
        top.append(entry)
    return {"source": source, "total_ms": total / 1e3, "top": top,
            "rest": {"kernels": len(ranked) - len(kept), "ms": rest_us / 1e3, "share": rest_us / total if total else None}}


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

        # A convolution that XLA:CPU hands to Eigen's thread pool asynchronously leaves only its
        # dispatch as a span (0.08 ms for a ~4 ms forward convolution, jaxlib 0.10.2): the sum is
        # less than the step, and convolutions are under-counted; the label says so.
        source = ("jax.profiler: XLA ops' own spans on the XLA:CPU threads (asynchronous convolutions "
                  "count only their dispatch: benchmarks.conv_parts times them)")
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
    try:
        launchers = torch_launchers(prof.events(), on_gpu)
    except Exception as error:  # a private structure of the profiler's events: its absence costs only this column
        launchers = {}
        source += f" (launching ops unavailable: {type(error).__name__}: {error})"[:300]
    return _top(totals, counts, source, launchers)


def torch_launchers(events, on_gpu: bool, depth: int = 5, most: int = 3) -> dict:
    """{kernel (GPU) or aten op (CPU) name: its most frequent launching op chains}, e.g.
    "aten::copy_ < aten::contiguous < aten::convolution_backward": which op of the step asked for
    a kernel (a layout copy, say). From torch.profiler's events: a CPU op's `kernels` are the
    device kernels it launched, `cpu_parent` the op that called it."""
    chains = collections.defaultdict(collections.Counter)
    for event in events:
        if on_gpu:
            names = [kernel.name for kernel in getattr(event, "kernels", ())]
        else:
            names = [event.key] if event.key.startswith("aten::") else []
        if not names:
            continue
        op, chain = (event if on_gpu else event.cpu_parent), []
        while op is not None and len(chain) < depth:
            chain.append(op.name)
            op = op.cpu_parent
        for name in names:
            chains[name][" < ".join(chain) or "(top level)"] += 1
    return {name: [f"{chain} ({n}×)" for chain, n in counter.most_common(most)] for name, counter in chains.items()}
