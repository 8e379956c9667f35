"""What ran the benchmark: device name and slug, datasheet peaks, versions, XLA settings.

Nothing here imports torch or initialises a JAX backend: the parent process must not grab
the GPU (JAX would preallocate most of its memory) before the variant subprocesses run.
Package versions come from installed metadata, the GPU name and driver from `nvidia-smi`.
"""

from __future__ import annotations

import datetime
import importlib.metadata
import json
import os
import platform
import re
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Callable, Optional

# Dense (no sparsity) peak TFLOP/s from the NVIDIA datasheets: "NVIDIA H100 Tensor Core GPU"
# (SXM and PCIe columns), "NVIDIA H200 Tensor Core GPU" (same compute as H100 SXM) and
# "NVIDIA A100 Tensor Core GPU". The datasheets print TF32/BF16 "with sparsity" (2x); these are
# the halves. Keys: bf16 tensor core, tf32 tensor core, fp32 non-tensor.
DATASHEET_PEAKS_TFLOPS = {
    "H100 SXM": {"bf16": 989.0, "tf32": 494.7, "fp32": 66.9},
    "H200": {"bf16": 989.0, "tf32": 494.7, "fp32": 66.9},
    "H100 PCIe": {"bf16": 756.0, "tf32": 378.0, "fp32": 51.0},
    "A100": {"bf16": 312.0, "tf32": 156.0, "fp32": 19.5},
}
DATASHEET_SOURCE = "NVIDIA datasheets (H100, H200, A100 Tensor Core GPU), dense figures"

# Packages whose versions every result carries, read from installed metadata (no import).
PACKAGES = ("jax", "jaxlib", "flax", "optax", "torch", "numpy")


def datasheet_card(device_name: str) -> Optional[str]:
    """The DATASHEET_PEAKS_TFLOPS key for a CUDA device name, or None when we hold no figures.

    Names as the drivers report them: "NVIDIA H100 80GB HBM3" (SXM), "NVIDIA H100 PCIe",
    "NVIDIA H200", "NVIDIA A100-SXM4-80GB". An H100 NVL or other variant stays unknown rather
    than borrowing a neighbour's peak.
    """
    name = device_name.upper()
    if "H200" in name:
        return "H200"
    if "H100" in name:
        if "PCIE" in name:
            return "H100 PCIe"
        if "HBM3" in name or "SXM" in name:
            return "H100 SXM"
        return None
    if "A100" in name:
        return "A100"
    return None


def datasheet_peaks(device_name: str) -> Optional[dict]:
    card = datasheet_card(device_name)
    return None if card is None else {"card": card, **DATASHEET_PEAKS_TFLOPS[card], "source": DATASHEET_SOURCE}


def slug(name: str) -> str:
    """"NVIDIA H200" -> "nvidia-h200": a directory name for results of one device."""
    return re.sub(r"[^a-z0-9]+", "-", name.lower()).strip("-")


def cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine() or "unknown"


def nvidia_smi() -> Optional[dict]:
    """GPU name, driver and the driver's CUDA version from `nvidia-smi`; None without a GPU."""
    if shutil.which("nvidia-smi") is None:
        return None
    try:
        query = subprocess.run(
            ["nvidia-smi", "--query-gpu=name,driver_version,memory.total", "--format=csv,noheader"],
            capture_output=True, text=True, timeout=20, check=True,
        ).stdout.strip().splitlines()
        header = subprocess.run(["nvidia-smi"], capture_output=True, text=True, timeout=20).stdout
    except (OSError, subprocess.SubprocessError):
        return None
    if not query:
        return None
    name, driver, memory = (field.strip() for field in query[0].split(",", 2))
    cuda = re.search(r"CUDA Version:\s*([0-9.]+)", header)
    return {
        "gpu_name": name,
        "gpu_count": len(query),
        "driver": driver,
        "driver_cuda_version": cuda.group(1) if cuda else None,
        "memory_total": memory,
    }


def host_device() -> dict:
    """The device the run is for: the first GPU if `nvidia-smi` sees one, else the CPU."""
    gpu = nvidia_smi()
    if gpu is not None:
        name = gpu["gpu_name"]
        return {"kind": "gpu", "name": name, "slug": slug(name), "datasheet_peaks_tflops": datasheet_peaks(name), **gpu}
    name = cpu_model()
    return {
        "kind": "cpu",
        "name": name,
        "slug": "cpu-" + slug(name),
        "cpu_count": os.cpu_count(),
        "datasheet_peaks_tflops": None,
        "datasheet_peaks_null_reason": "no datasheet figures are kept for CPUs",
    }


def package_versions() -> dict:
    versions = {"python": sys.version.split()[0]}
    for package in PACKAGES:
        try:
            versions[package] = importlib.metadata.version(package)
        except importlib.metadata.PackageNotFoundError:
            versions[package] = None
    # JAX's CUDA plugin and PJRT carry the CUDA major version in their names (jax-cuda13-plugin,
    # jax-cuda13-pjrt); the cuDNN/cuBLAS wheels are the libraries JAX's kernels come from.
    for dist in importlib.metadata.distributions():
        dist_name = (dist.metadata["Name"] or "").lower().replace("_", "-")
        if dist_name.startswith(("jax-cuda", "nvidia-cudnn", "nvidia-cublas", "triton")):
            versions[dist_name] = dist.version
    return versions


def write_measurement(out: Path, stem: str, result: dict, to_markdown: Callable[[dict], str], echo: bool = True,
                      **fields) -> dict:
    """`out/<stem>.json` and `.md` for one measurement, stamped with the device, the versions and
    the time; the markdown is printed too (`echo`). Returns the report (`to_markdown`'s argument)."""
    measured = datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")
    report = {"device": host_device(), "versions": package_versions(), "measured_utc": measured, **fields,
              "result": result}
    out.mkdir(parents=True, exist_ok=True)
    (out / f"{stem}.json").write_text(json.dumps(report, indent=2) + "\n")
    markdown = to_markdown(report)
    (out / f"{stem}.md").write_text(markdown)
    if echo:
        print(markdown)
    return report


def xla_environment() -> dict:
    """XLA/JAX settings that come from the environment (flags, allocator, persistent caches)."""
    keys = sorted(k for k in os.environ if k.startswith(("XLA_", "JAX_", "TF_CPP", "NCCL_", "TORCHINDUCTOR_")))
    return {"XLA_FLAGS": os.environ.get("XLA_FLAGS", ""), "env": {k: os.environ[k] for k in keys}}


def jax_config_values(subset: bool = True) -> dict:
    """jax.config as JSON-friendly values; `subset` keeps the ones that change numerics or speed.

    Importing jax does not start a backend, so this is safe in the parent process.
    """
    try:
        import jax
    except ImportError as error:  # a torch-only machine still gets its torch rows
        return {"error": f"jax not importable: {error}"}

    interesting = (
        "jax_default_matmul_precision", "jax_enable_x64", "jax_platforms", "jax_numpy_dtype_promotion",
        "jax_enable_compilation_cache", "jax_compilation_cache_dir", "jax_default_prng_impl",
        "jax_threefry_partitionable", "jax_disable_jit",
    )
    values = jax.config.values
    keys = [k for k in interesting if k in values] if subset else sorted(values)
    return {k: _jsonable(values[k]) for k in keys}


def _jsonable(value):
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    return str(value)
