"""The parity report: every measured error of a test session, with the device and versions.

Rows are collected by the `parity` fixture (conftest.py) while the tests run, and written at
the end of the session as `parity_report.json` and `parity_report.md` when the environment
variable PARITY_REPORT_DIR names a folder. Recording happens before asserting, so a failing
comparison still shows its number in the report.
"""

from __future__ import annotations

import dataclasses
import importlib.metadata
import json
import os
import platform
import shutil
import subprocess
import sys
from pathlib import Path

REPORT_DIR_ENV = "PARITY_REPORT_DIR"
PACKAGES = ("jax", "jaxlib", "flax", "optax", "torch", "numpy")
CUDA_PLUGINS = ("jax-cuda12-plugin", "jax-cuda13-plugin", "jax-cuda12-pjrt", "jax-cuda13-pjrt")


@dataclasses.dataclass
class Row:
    test: str
    config: str
    mode: str
    quantity: str
    flax_vs_f64: float | None
    torch_vs_f64: float | None
    between: float | None  # flax vs torch, same precision
    tolerance: float | None  # None: measured and reported, not asserted
    passed: bool | None
    note: str = ""


ROWS: list[Row] = []
OUTCOMES: dict[str, dict] = {}  # nodeid -> {"outcome": ..., "reason": ...}


def _version(package: str) -> str | None:
    try:
        return importlib.metadata.version(package)
    except importlib.metadata.PackageNotFoundError:
        return None


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def environment() -> dict:
    """Device, driver and versions: what a reader needs to reproduce or compare the numbers."""
    import jax
    import torch

    env = {
        "python": sys.version.split()[0],
        "platform": platform.platform(),
        "cpu": cpu_model(),
        "cpu_count": os.cpu_count(),
        "versions": {p: _version(p) for p in PACKAGES},
        "jax_backend": jax.default_backend(),
        "jax_devices": [d.device_kind for d in jax.devices()],
        "torch_device": torch.cuda.get_device_name(0) if torch.cuda.is_available() else "cpu",
        "xla_flags": os.environ.get("XLA_FLAGS", ""),
    }
    if torch.cuda.is_available():
        env["torch_cuda"] = torch.version.cuda
        env["cudnn"] = torch.backends.cudnn.version()
        env["jax_cuda_plugins"] = {p: v for p in CUDA_PLUGINS if (v := _version(p))}
    if shutil.which("nvidia-smi"):
        query = ["nvidia-smi", "--query-gpu=name,driver_version", "--format=csv,noheader"]
        result = subprocess.run(query, check=False, capture_output=True, text=True, timeout=30)
        env["nvidia_smi"] = result.stdout.strip() or result.stderr.strip()
    return env


def _fmt(value) -> str:
    if value is None:
        return ""
    if isinstance(value, bool):
        return "yes" if value else "**NO**"
    return f"{value:.2e}"


def to_markdown(env: dict, rows: list[Row], outcomes: dict) -> str:
    device = (env.get("nvidia_smi") or env["torch_device"]) if env["jax_backend"] != "cpu" else env["cpu"]
    versions = ", ".join(f"{k} {v}" for k, v in env["versions"].items())
    lines = [
        "# Parity report: unet_jax (Flax) vs unet_torch (PyTorch)",
        "",
        f"- Device: {device} (jax backend `{env['jax_backend']}`, torch device `{env['torch_device']}`)",
        f"- CPU: {env['cpu']}, {env['cpu_count']} cores; Python {env['python']}; {versions}",
    ]
    if "torch_cuda" in env:
        lines.append(f"- CUDA (torch): {env['torch_cuda']}, cuDNN {env['cudnn']}; jax CUDA plugins: {env['jax_cuda_plugins']}")
    if env["xla_flags"]:
        lines.append(f"- XLA_FLAGS: `{env['xla_flags']}`")
    lines += [
        "",
        "Errors are max|a - ref| / max|ref| unless the quantity says otherwise; the reference is the",
        "torch model in float64 on the CPU; \"between\" compares Flax with torch at the same precision.",
        "",
        "| test | config | mode | quantity | flax vs f64 | torch vs f64 | flax vs torch | tolerance | pass |",
        "| --- | --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for r in rows:
        quantity = f"{r.quantity} ({r.note})" if r.note else r.quantity
        cells = [r.test, r.config, r.mode, quantity, _fmt(r.flax_vs_f64), _fmt(r.torch_vs_f64), _fmt(r.between),
                 _fmt(r.tolerance), "" if r.passed is None else _fmt(r.passed)]
        lines.append("| " + " | ".join(c.replace("|", "\\|") for c in cells) + " |")
    skipped = {k: v for k, v in outcomes.items() if v["outcome"] == "skipped"}
    failed = [k for k, v in outcomes.items() if v["outcome"] == "failed"]
    counts = {o: sum(v["outcome"] == o for v in outcomes.values()) for o in ("passed", "failed", "skipped")}
    seconds = env.get("suite_seconds")
    took = f" in {seconds:.0f} s" if seconds is not None else ""
    lines += ["", f"Tests: {counts['passed']} passed, {counts['failed']} failed, {counts['skipped']} skipped{took}."]
    lines += [f"- failed: `{k}`" for k in failed]
    lines += [f"- skipped: `{k}`: {v['reason']}" for k, v in skipped.items()]
    return "\n".join(lines) + "\n"


def write(directory, exitstatus: int, suite_seconds: float | None = None) -> Path:
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    env = {**environment(), "suite_seconds": suite_seconds}
    payload = {"environment": env, "exitstatus": int(exitstatus), "outcomes": OUTCOMES,
               "rows": [dataclasses.asdict(r) for r in ROWS]}
    (directory / "parity_report.json").write_text(json.dumps(payload, indent=2, default=str) + "\n")
    (directory / "parity_report.md").write_text(to_markdown(env, ROWS, OUTCOMES))
    return directory
