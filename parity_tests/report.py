"""The parity report: every measured error of a test session, with the device and versions.

Rows are collected by the `parity` fixture (conftest.py) while the tests run and written as
`parity_report.json` and `parity_report.md` when the environment variable PARITY_REPORT_DIR
names a folder: after every test (`"finished": false`) and once more at the end of the session.
Each write replaces the files atomically (temporary file, then rename), so a run killed at any
point (a time cap on the GPU machine) leaves a whole report of every test that finished, and
the list of collected tests that never ran. Recording happens before asserting, so a failing
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
import time
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
COLLECTED: list[str] = []  # every collected nodeid, in run order: those without an outcome never ran
GPU_RUN: list[str] = []  # the collected tests a GPU call runs (neither `slow` nor `host`): what the GPU estimate prices
HOST: list[str] = []  # the collected `host` tests (a GPU call leaves them out; the estimate's pool of old tests does too)
_ENVIRONMENT: dict = {}  # environment(), taken once per session by the first write


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
        # "false" wherever JAX shares the GPU with torch (conftest.py at the repository root)
        "xla_python_client_preallocate": os.environ.get("XLA_PYTHON_CLIENT_PREALLOCATE"),
    }
    if torch.cuda.is_available():
        env["torch_cuda"] = torch.version.cuda
        env["cudnn"] = torch.backends.cudnn.version()
        env["jax_cuda_plugins"] = {p: v for p in CUDA_PLUGINS if (v := _version(p))}
    if shutil.which("nvidia-smi"):
        query = ["nvidia-smi", "--query-gpu=name,driver_version", "--format=csv,noheader"]
        try:  # a hung or failing nvidia-smi must not cost the report (this runs inside a pytest hook)
            result = subprocess.run(query, check=False, capture_output=True, text=True, timeout=30)
            env["nvidia_smi"] = result.stdout.strip() or result.stderr.strip()
        except (OSError, subprocess.SubprocessError) as error:
            env["nvidia_smi"] = f"nvidia-smi failed: {error}"
    return env


def _fmt(value) -> str:
    if value is None:
        return ""
    if isinstance(value, bool):
        return "yes" if value else "**NO**"
    return f"{value:.2e}"


def to_markdown(env: dict, rows: list[Row], outcomes: dict, collected: list[str] | None = None,
                finished: bool = True, gpu_run: list[str] | None = None) -> str:
    device = (env.get("nvidia_smi") or env["torch_device"]) if env["jax_backend"] != "cpu" else env["cpu"]
    versions = ", ".join(f"{k} {v}" for k, v in env["versions"].items())
    not_run = [k for k in collected or () if k not in outcomes]
    lines = ["# Parity report: unet_jax (Flax) vs unet_torch (PyTorch)", ""]
    if not finished:
        lines += [f"**Partial: written after {len(outcomes)} of {len(collected or ())} tests; the session had not "
                  "finished (still running, or stopped by a time limit).**", ""]
    lines += [
        f"- Device: {device} (jax backend `{env['jax_backend']}`, torch device `{env['torch_device']}`)",
        f"- CPU: {env['cpu']}, {env['cpu_count']} cores; Python {env['python']}; {versions}",
    ]
    if "torch_cuda" in env:
        lines.append(f"- CUDA (torch): {env['torch_cuda']}, cuDNN {env['cudnn']}; jax CUDA plugins: {env['jax_cuda_plugins']}")
    if env["xla_flags"]:
        lines.append(f"- XLA_FLAGS: `{env['xla_flags']}`")
    if env["jax_backend"] == "cpu" and gpu_run:
        from parity_tests.gpu_estimate import header_line

        lines.append(header_line(gpu_run, HOST))
    lines += [
        "",
        "Errors are max|a - ref| / max|ref| unless the quantity says otherwise. \"vs f64\" is against: the",
        "independent float64 numpy forward (`parity_tests/numpy_reference.py`) for the forward tests",
        "(test_forward); the seed network's golden figures (computed in float64 by the original class) for",
        "the seed checkpoint; otherwise the torch model in float64 (on the CPU, unless the note names another",
        "device). \"between\" compares Flax with torch at the same precision.",
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
    never = f", {len(not_run)} not run" if not_run else ""
    lines += ["", f"Tests: {counts['passed']} passed, {counts['failed']} failed, {counts['skipped']} skipped{never}{took}."]
    lines += [f"- failed: `{k}`: {_one_line(outcomes[k]['reason'])}" for k in failed]
    lines += [f"- skipped: `{k}`: {v['reason']}" for k, v in skipped.items()]
    lines += [f"- not run: `{k}`" for k in not_run]
    timed = sorted(((v.get("seconds", 0.0), k, v["outcome"]) for k, v in outcomes.items()), reverse=True)
    if timed:
        lines += ["", "## Durations", "", "Seconds per test (setup, call and teardown), slowest first.", "",
                  "| test | outcome | s |", "| --- | --- | ---: |"]
        lines += [f"| `{k}` | {outcome} | {seconds:.2f} |" for seconds, k, outcome in timed]
    return "\n".join(lines) + "\n"


def write_study(out: Path, stem: str, rows: list[dict], started: float, title: str, method: list[str],
                body: list[str]) -> Path:
    """A study `parity_tests.studies.<stem>`'s results: out/stem.json (environment, seconds
    since `started`, rows) and out/stem.md: `title`, the machine and versions, the command with
    the `method` lines after it, then the `body` lines. Returns the markdown's path."""
    env = environment()
    out.mkdir(parents=True, exist_ok=True)
    payload = {"environment": env, "seconds": round(time.perf_counter() - started, 1), "rows": rows}
    (out / f"{stem}.json").write_text(json.dumps(payload, indent=2) + "\n")
    versions = ", ".join(f"{k} {v}" for k, v in env["versions"].items())
    header = [f"# {title}", "", f"- Machine: {env['cpu']}, {env['cpu_count']} cores; Python {env['python']}; {versions}",
              f"- Command: `python -m parity_tests.studies.{stem}`; {method[0]}", *(f"- {line}" for line in method[1:]), ""]
    (out / f"{stem}.md").write_text("\n".join(header + body) + "\n")
    return out / f"{stem}.md"


def _one_line(text: str) -> str:
    return " ".join(text.split())


def _replace(path: Path, text: str) -> None:
    """Write `text` to a temporary file beside `path`, then rename it over `path` (atomic on
    POSIX): a reader, or a run killed mid-write, sees the old file or the new one, never half."""
    temporary = path.with_name(path.name + ".tmp")
    temporary.write_text(text)
    os.replace(temporary, path)


def write(directory, exitstatus: int | None, suite_seconds: float | None = None, finished: bool = True) -> Path:
    """parity_report.json / .md from everything recorded so far. `finished=False` (after each
    test): exitstatus None, and the tests that have not run yet are listed as such."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    if not _ENVIRONMENT:
        _ENVIRONMENT.update(environment())
    env = {**_ENVIRONMENT, "suite_seconds": suite_seconds}
    payload = {"environment": env, "finished": finished,
               "exitstatus": None if exitstatus is None else int(exitstatus), "outcomes": OUTCOMES,
               "not_run": [k for k in COLLECTED if k not in OUTCOMES], "rows": [dataclasses.asdict(r) for r in ROWS]}
    if env["jax_backend"] == "cpu" and GPU_RUN:
        from parity_tests.gpu_estimate import estimate

        payload["gpu_estimate"] = estimate(GPU_RUN, HOST)
    _replace(directory / "parity_report.json", json.dumps(payload, indent=2, default=str) + "\n")
    _replace(directory / "parity_report.md", to_markdown(env, ROWS, OUTCOMES, COLLECTED, finished, GPU_RUN))
    return directory
