"""benchmarks.sweep: its plan, the XLA flags a variant sets, the kernel tables read from profiler
traces, and a CPU smoke run end to end (the same command the GPU runs, at a tiny size)."""

import dataclasses
import json
import os
import subprocess
import sys

import pytest

from benchmarks import kernels, run
from benchmarks.kernels import jax_trace_totals
from benchmarks.variants import SWEEP_PLAN, SWEEP_QUICK_PLAN, VARIANTS, jobs

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
HOW_NOT_WHAT = {"name", "description", "remat", "xla_flags"}  # what an option may change


def test_sweep_leads_with_jax_bf16_against_torch_compile_at_batch_16_and_1():
    assert [(v.name, b) for v, b in jobs(SWEEP_PLAN)[:4]] == [
        ("jax-bf16", 16), ("torch-compile-bf16-cl", 16), ("jax-bf16", 1), ("torch-compile-bf16-cl", 1)]


def test_every_sweep_option_is_its_baseline_computed_another_way():
    for variant, _ in jobs(SWEEP_PLAN) + jobs(SWEEP_QUICK_PLAN):
        if variant.framework != "jax" or (variant.remat == "none" and not variant.xla_flags):
            continue
        baseline = VARIANTS["jax-bf16" if variant.dtype == "bf16" else "jax-fp32"]
        changed = {f.name for f in dataclasses.fields(variant) if getattr(variant, f.name) != getattr(baseline, f.name)}
        assert changed <= HOW_NOT_WHAT, (variant.name, changed)


def test_a_variants_xla_flags_follow_the_users(monkeypatch):
    monkeypatch.setenv("XLA_FLAGS", "--xla_dump_to=/tmp/x")
    env, _ = run.child_env(VARIANTS["jax-bf16-no-autotune"])
    assert env["XLA_FLAGS"] == "--xla_dump_to=/tmp/x --xla_gpu_autotune_level=0"
    env, _ = run.child_env(VARIANTS["jax-bf16"])
    assert env["XLA_FLAGS"] == "--xla_dump_to=/tmp/x"


def _meta(pid, tid, process, thread):
    return [{"ph": "M", "name": "process_name", "pid": pid, "args": {"name": process}},
            {"ph": "M", "name": "thread_name", "pid": pid, "tid": tid, "args": {"name": thread}}]


def test_cpu_trace_counts_xla_ops_once_not_their_executor_spans():
    events = _meta(1, 2, "/host:CPU", "tf_XLAPjRtCpuClient/1") + _meta(1, 3, "/host:CPU", "python") + [
        {"ph": "X", "pid": 1, "tid": 2, "ts": 0, "dur": 10, "name": "ThunkExecutor::Execute"},
        {"ph": "X", "pid": 1, "tid": 2, "ts": 1, "dur": 4, "name": "convolution.1"},
        {"ph": "X", "pid": 1, "tid": 2, "ts": 5, "dur": 3, "name": "fusion.2"},
        {"ph": "X", "pid": 1, "tid": 2, "ts": 20, "dur": 3, "name": "convolution.1"},
        {"ph": "X", "pid": 1, "tid": 2, "ts": 30, "dur": 9, "name": "ThunkExecutor::Execute (wait for completion)"},
        {"ph": "X", "pid": 1, "tid": 2, "ts": 39, "dur": 0.5, "name": "end: fusion.2"},
        {"ph": "X", "pid": 1, "tid": 3, "ts": 0, "dur": 50, "name": "PjitFunction(step)"},
    ]
    totals, counts, source = jax_trace_totals(events)
    assert dict(totals) == {"convolution.1": 7.0, "fusion.2": 3.0} and counts["convolution.1"] == 2
    assert "XLA:CPU" in source


def test_gpu_trace_counts_only_the_device_streams():
    # The device's "XLA Ops" / "XLA Modules" lines span the kernels' time again: not counted.
    events = (_meta(1, 2, "/host:CPU", "tf_XLAPjRtCpuClient/1") + _meta(7, 8, "/device:GPU:0", "Stream #13(Compute)")
              + _meta(7, 9, "/device:GPU:0", "XLA Ops") + _meta(7, 10, "/device:GPU:0", "XLA Modules")) + [
        {"ph": "X", "pid": 1, "tid": 2, "ts": 0, "dur": 100, "name": "host side"},
        {"ph": "X", "pid": 7, "tid": 8, "ts": 0, "dur": 6, "name": "cudnn_conv"},
        {"ph": "X", "pid": 7, "tid": 8, "ts": 6, "dur": 2, "name": "loop_fusion"},
        {"ph": "X", "pid": 7, "tid": 9, "ts": 0, "dur": 6, "name": "convolution.3"},
        {"ph": "X", "pid": 7, "tid": 10, "ts": 0, "dur": 8, "name": "jit_train_step"},
    ]
    totals, _, source = jax_trace_totals(events)
    assert dict(totals) == {"cudnn_conv": 6.0, "loop_fusion": 2.0} and "GPU" in source


@pytest.mark.slow
def test_quick_sweep_runs_every_job_with_a_profile(tmp_path):
    env = {**os.environ, "PYTHONPATH": REPO_ROOT}
    proc = subprocess.run([sys.executable, "-m", "benchmarks.sweep", "--quick", "--budget-s", "0", "--out", str(tmp_path)],
                          cwd=REPO_ROOT, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    doc = json.loads((tmp_path / "results.json").read_text())
    assert doc["plan_name"] == "sweep-quick"
    assert [(r["variant"], r["status"]) for r in doc["results"]] == [(v.name, "ok") for v, _ in jobs(SWEEP_QUICK_PLAN)]
    for r in doc["results"]:
        top = r["kernels"]["top"]
        assert top and all(k["ms"] > 0 for k in top) and sum(k["share"] for k in top) <= 1 + 1e-9
        if r["framework"] == "jax":  # XLA ops, not the runtime's spans
            assert not any("::" in k["name"] or k["name"].startswith("end: ") for k in top)
            assert r["compiled_temp_bytes"] > 0 and r["remat"] in ("none", "blocks")
        else:
            assert all(k["name"].startswith("aten::") for k in top)
    assert "## Where one step's time goes" in (tmp_path / "results.md").read_text()


def test_a_failing_profiler_is_recorded_not_raised():
    def broken(call):
        raise RuntimeError("CUPTI unavailable")

    assert kernels.guarded(broken, lambda: None) == {"source": "broken", "error": "RuntimeError: CUPTI unavailable"}


def test_torch_kernels_are_traced_to_the_ops_that_launched_them():
    from types import SimpleNamespace as Event

    from benchmarks.kernels import torch_launchers

    backward = Event(name="aten::convolution_backward", key="aten::convolution_backward", cpu_parent=None, kernels=[])
    contiguous = Event(name="aten::contiguous", key="aten::contiguous", cpu_parent=backward, kernels=[])
    copy = Event(name="aten::copy_", key="aten::copy_", cpu_parent=contiguous,
                 kernels=[Event(name="direct_copy_kernel_cuda")] * 2)
    other_copy = Event(name="aten::copy_", key="aten::copy_", cpu_parent=None, kernels=[Event(name="direct_copy_kernel_cuda")])
    gpu = torch_launchers([backward, contiguous, copy, other_copy], on_gpu=True)
    assert gpu == {"direct_copy_kernel_cuda": [
        "aten::copy_ < aten::contiguous < aten::convolution_backward (2×)", "aten::copy_ (1×)"]}
    cpu = torch_launchers([backward, contiguous, copy], on_gpu=False)  # an aten op's callers, itself left out
    assert cpu["aten::copy_"] == ["aten::contiguous < aten::convolution_backward (1×)"]
    assert cpu["aten::convolution_backward"] == ["(top level) (1×)"]
