"""`unet-jax export`: a trained U-Net as an ONNX file or serialised StableHLO, with a JSON
description beside it (input and output shapes, valid sizes, normalisation).

Both files take a dynamic batch of standardised images of one size and return logits; the
normalisation that turns pixels into their input is in the description (`source.describe`).
"""

from __future__ import annotations

from pathlib import Path
from typing import Callable, Optional

from unet_jax.config import ConfigError
from unet_jax.export.source import describe, description_bytes, description_path, load_source
from unet_jax.runtime.safe_files import check_destination, check_folder_destination, write_atomically

FORMATS = ("onnx", "stablehlo")


def export(weights, out, fmt: str, tile_size: Optional[int] = None, config=None, overwrite: bool = False,
           check: bool = True, report: Callable[[str], None] = lambda line: None) -> dict:
    """Write `weights` (a run directory or weights file) to `out` as `fmt`, and `out`.json beside it.

    Every argument and destination is checked before any work; nothing existing is replaced
    unless `overwrite`. With `check`, the written file is run on a random batch and compared with
    the Flax network; `report` is told the figure. Returns the description.
    """
    if fmt not in FORMATS:
        raise ConfigError(f"unknown export format {fmt!r}. Fix: --format onnx or --format stablehlo")
    out = Path(out)
    for path in (out, description_path(out)):
        check_destination(path, overwrite, sources=[weights])
    check_folder_destination(out.parent)
    if fmt == "onnx":
        from unet_jax.export.onnx_file import require_packages

        require_packages()  # before loading the weights: a missing package is known at once
    source = load_source(weights, tile_size, config)
    if fmt == "onnx":
        from unet_jax.export.onnx_file import LAYOUT, check_onnx, write_onnx

        description = describe(source, fmt, LAYOUT, out)
        write_onnx(source, out, description, overwrite)
        difference = check_onnx(source, out) if check else None
        runner = "onnxruntime"
    else:
        from unet_jax.export.stablehlo_file import LAYOUT, check_stablehlo, write_stablehlo

        description = describe(source, fmt, LAYOUT, out)
        write_stablehlo(source, out, overwrite)
        difference = check_stablehlo(source, out) if check else None
        runner = "jax.export.deserialize(...).call"
    write_atomically(description_path(out), description_bytes(description), overwrite=overwrite)
    if difference is not None:
        report(f"checked: {runner} against Flax on a random batch: max |difference| = {difference:.1e} of the largest logit")
    return description
