"""Figures derived from a job's raw timing: img/s, achieved TFLOP/s and the two MFUs.

Kept apart from the timing so that the arithmetic is testable without running anything, and
so that a report can be recomputed from the raw JSON with other peaks.

The measured-ceiling MFU uses **one ceiling per run**: every job measures a bf16 matmul in its
own framework, and the run's ceiling is the higher of the two frameworks' medians, so that
both frameworks' rows are fractions of the same number (dividing each row by its own
framework's ceiling would flatter the framework with the slower matmul).
"""

from __future__ import annotations

from typing import Optional

from benchmarks.variants import Variant


def derived_figures(variant: Variant, batch: int, step_ms: dict, flops_per_image: float, peaks: Optional[dict]) -> dict:
    """img/s (and its low/high from the p90/p10 step times), TFLOP/s and the datasheet MFU.

    MFU against the datasheet uses the column the variant's arithmetic runs on (`variant.peak`:
    TF32 for default-precision float32, FP32 for strict, BF16). The MFU against the measured
    bf16 matmul needs every job of the run: see `apply_run_ceiling`.
    """
    median_s = step_ms["median"] / 1e3
    tflops = batch * flops_per_image / median_s / 1e12
    figures = {
        "img_per_s": batch / median_s,
        "img_per_s_low_high": [batch / (step_ms["p90"] / 1e3), batch / (step_ms["p10"] / 1e3)],
        "flops_per_image": flops_per_image,
        "achieved_tflops": tflops,
    }
    if peaks is not None:
        figures["mfu_datasheet"] = tflops / peaks[variant.peak]
        figures["mfu_datasheet_peak"] = {"column": variant.peak, "tflops": peaks[variant.peak], "card": peaks["card"]}
    else:
        figures["mfu_datasheet"] = None
        figures["mfu_datasheet_null_reason"] = "no datasheet peak known for this device"
    return figures


def ceiling_summary(results: list[dict]) -> dict[str, float]:
    """Median measured bf16 matmul TFLOP/s per framework over the run's jobs."""
    by_framework: dict[str, list[float]] = {}
    for r in results:
        if r.get("matmul_ceiling"):
            by_framework.setdefault(r["framework"], []).append(r["matmul_ceiling"]["median_tflops"])
    return {fw: sorted(v)[len(v) // 2] for fw, v in by_framework.items()}


def run_ceiling(results: list[dict]) -> Optional[dict]:
    """The run's one bf16 matmul ceiling: the higher of the frameworks' medians (None if unmeasured)."""
    medians = ceiling_summary(results)
    if not medians:
        return None
    framework = max(medians, key=medians.get)
    return {"tflops": medians[framework], "framework": framework}


def compute_precision(record: dict) -> str:
    """The datasheet column a job's arithmetic runs on ("bf16", "tf32", "fp32"): recorded by
    `benchmarks.run` since the fair plan, derived for older records as `Variant.peak` was."""
    if record.get("compute_precision"):
        return record["compute_precision"]
    if record.get("dtype") == "bf16":
        return "bf16"
    return "fp32" if record.get("matmul_precision") == "highest" else "tf32"


def apply_run_ceiling(results: list[dict]) -> Optional[dict]:
    """Set every timed bf16 job's `mfu_measured_bf16_ceiling` against the run's one ceiling;
    returns it. TF32 and FP32 jobs get none: a bf16 matmul is not their ceiling."""
    ceiling = run_ceiling(results)
    for r in results:
        if r.get("achieved_tflops") is None:
            continue
        if compute_precision(r) != "bf16":
            r["mfu_measured_bf16_ceiling"] = None
            r["mfu_measured_bf16_ceiling_null_reason"] = f"a {compute_precision(r)} job: not divided by a bf16 ceiling"
        elif ceiling is None:
            r["mfu_measured_bf16_ceiling"] = None
            r["mfu_measured_bf16_ceiling_null_reason"] = "matmul ceiling not measured"
        else:
            r["mfu_measured_bf16_ceiling"] = r["achieved_tflops"] / ceiling["tflops"]
            r.pop("mfu_measured_bf16_ceiling_null_reason", None)
    return ceiling
