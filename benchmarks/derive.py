"""Figures derived from a job's raw timing: img/s, achieved TFLOP/s and the two MFUs.

Kept apart from the timing so that the arithmetic is testable without running anything, and
so that a report can be recomputed from the raw JSON with other peaks.
"""

from __future__ import annotations

from typing import Optional

from benchmarks.variants import Variant


def derived_figures(
    variant: Variant, batch: int, step_ms: dict, flops_per_image: float, peaks: Optional[dict], ceiling: Optional[dict]
) -> dict:
    """img/s (and its low/high from the p90/p10 step times), TFLOP/s and MFUs.

    MFU against the datasheet uses the column the variant's arithmetic runs on (`variant.peak`:
    TF32 for default-precision float32, FP32 for strict, BF16); MFU against the measured bf16
    matmul is the same for every variant: the fraction of what this chip sustains on the
    friendliest possible bf16 workload in this run.
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
    if ceiling is not None:
        figures["mfu_measured_bf16_ceiling"] = tflops / ceiling["median_tflops"]
    else:
        figures["mfu_measured_bf16_ceiling"] = None
        figures["mfu_measured_bf16_ceiling_null_reason"] = "matmul ceiling not measured"
    return figures
