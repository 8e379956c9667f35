"""Time estimates and the run budget: which job starts, with which timeouts.

The GPU run must end within a fixed wall time, and compile times vary by minutes between
modes, so jobs run most-informative first and a job starts only if its estimate fits what is
left; the rest are recorded as skipped, never dropped. Estimates start from rough priors (an
H100/H200-class GPU, or a small CPU) and are replaced by what the run itself measures: the
overhead (start-up + compile + warm-up) of the last job of the same kind, and the achieved
TFLOP/s of the same variant at another batch.
"""

from __future__ import annotations

import dataclasses
from typing import Optional

from benchmarks.variants import Variant

# Priors, used until the run has measured a job of the same kind.
# Start-up + compile + warm-up + matmul ceiling, per kind of job. GPU: from the H200 sweep of
# 2026-12-04 (seed step: JAX bf16 25-30 s a job, fp32 45 s; torch.compile 55-67 s, cold caches).
GPU_OVERHEAD_S = {"jax-train": 30.0, "jax-predict": 20.0, "torch-train": 12.0, "torch-predict": 10.0,
                  "torch-compile-train": 65.0}
CPU_OVERHEAD_S = {"jax-train": 8.0, "jax-predict": 3.0, "torch-train": 6.0, "torch-predict": 3.0,
                  "torch-compile-train": 120.0}
GPU_TFLOPS = {"fp32": 130.0, "tf32": 130.0, "bf16": 280.0}  # achieved, by variant.peak
GPU_STRICT_FP32_TFLOPS = 40.0
CPU_TFLOPS = 0.05
MIN_STEP_S = 0.006  # launch-bound floor at batch 1 on a GPU
MIN_COMPILE_BOUND_S = 45.0  # a shorter compile bound would only record a certain time-out
RUN_TIMEOUT_SLACK = 3.0  # a job may take this many times its estimate before it is killed


def kind(variant: Variant) -> str:
    """Jobs of one kind share start-up and compile costs closely enough to predict each other."""
    compiled = "-compile" if variant.compile_mode is not None else ""
    return f"{variant.framework}{compiled}-{variant.task}"


@dataclasses.dataclass
class Decision:
    run: bool
    estimate_s: float
    compile_bound_s: Optional[float] = None
    timeout_s: Optional[float] = None
    reason: str = ""


class Planner:
    def __init__(self, on_gpu: bool, flops_per_image: dict, steps: int, warmup: int, compile_timeout: float):
        self.on_gpu = on_gpu
        self.flops_per_image = flops_per_image  # {"train": ..., "predict": ...}
        self.steps, self.warmup = steps, warmup
        self.compile_timeout = compile_timeout
        self.overhead_s: dict = {}  # kind -> measured seconds outside the timed steps
        self.tflops: dict = {}  # variant name -> measured TFLOP/s

    def step_s(self, variant: Variant, batch: int) -> float:
        rate = self.tflops.get(variant.name)
        if rate is None:
            if not self.on_gpu:
                rate = CPU_TFLOPS
            elif variant.precision == "highest":
                rate = GPU_STRICT_FP32_TFLOPS
            else:
                rate = GPU_TFLOPS[variant.peak] * (1.6 if variant.compile_mode else 1.0)
        floor = MIN_STEP_S if self.on_gpu else 0.0
        return max(floor, batch * self.flops_per_image[variant.task] / (rate * 1e12))

    def overhead(self, variant: Variant) -> float:
        priors = GPU_OVERHEAD_S if self.on_gpu else CPU_OVERHEAD_S
        estimate = self.overhead_s.get(kind(variant), priors[kind(variant)])
        if variant.compile_mode == "max-autotune-no-cudagraphs":
            estimate = max(estimate, self.compile_timeout)  # expected to use its whole bound
        return estimate

    def estimate(self, variant: Variant, batch: int) -> float:
        return self.overhead(variant) + (self.warmup + self.steps) * self.step_s(variant, batch)

    def decide(self, variant: Variant, batch: int, remaining_s: Optional[float]) -> Decision:
        estimate = self.estimate(variant, batch)
        timeout = RUN_TIMEOUT_SLACK * estimate + 60.0 + self.compile_timeout
        compile_bound = self.compile_timeout
        if remaining_s is None:
            return Decision(True, estimate, compile_bound, timeout)
        if estimate > remaining_s:
            running = estimate - self.overhead(variant)
            shortened = remaining_s - running - 15.0
            if variant.compile_mode is None or shortened < MIN_COMPILE_BOUND_S:
                return Decision(False, estimate, reason=(
                    f"estimated {estimate:.0f} s but only {remaining_s:.0f} s of the run budget left"))
            compile_bound = min(compile_bound, shortened)  # torch.compile: try within what is left
        return Decision(True, estimate, compile_bound, min(timeout, remaining_s))

    def learn(self, variant: Variant, batch: int, wall_s: float, record: dict) -> None:
        """Replace priors with this job's measured overhead and rate."""
        step_ms = (record.get("step_ms") or {}).get("median")
        if not step_ms:
            return
        timed_s = self.steps * step_ms / 1e3
        self.overhead_s[kind(variant)] = max(0.0, wall_s - timed_s)
        self.tflops[variant.name] = batch * self.flops_per_image[variant.task] / (step_ms / 1e3) / 1e12
