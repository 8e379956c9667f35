"""ONNX export through the PyTorch reference network and `torch.onnx.export` (its dynamo exporter).

Why this route and not jax2onnx (measured 2026-12-04 on this project's 2-core CPU machine,
Python 3.11, torch 2.13.0, onnx 1.23.2, onnxruntime 1.32.0, jax2onnx 0.13.0, the newest that
installs beside jax 0.10.2; seed network, 572x572, batch 1, one run each): both files agree with
Flax to 1.2e-6 of the largest logit; export took 14.7 s through torch against 22.6 s, and
onnxruntime ran the torch file in 5.2 s (min of 5 runs; median 5.4) against 6.1 s (median 6.4;
why was not looked into). jax2onnx also brings 22 more packages (equinox, huggingface_hub,
netron, ...) where this route needs only onnx and onnxscript beside the torch the project's
reference already uses.

The graph is NCHW, as PyTorch's: image [batch, C, T, T] -> logits [batch, K, T', T'].
"""

from __future__ import annotations

import contextlib
import io
import json
import logging
import tempfile
import warnings
from pathlib import Path

import numpy as np

from unet_jax.config import UNetError
from unet_jax.export.check import relative_difference
from unet_jax.export.source import ExportSource
from unet_jax.runtime.safe_files import write_atomically

LAYOUT = "NCHW"
EXTRA = 'pip install "unet-jax[export]"'
NEEDED = ("torch", "onnx", "onnxscript", "onnxruntime")


class MissingExtraError(UNetError):
    """A format whose packages are not installed; the message names the extra that brings them."""


def require_packages() -> None:
    missing = []
    for name in NEEDED:
        try:
            __import__(name)
        except ImportError:
            missing.append(name)
    if missing:
        raise MissingExtraError(f"ONNX export needs {', '.join(missing)}, not installed. Fix: {EXTRA}")


def write_onnx(source: ExportSource, out: Path, description: dict, overwrite: bool) -> Path:
    """The ONNX file of `source` at `out`, its description in the model's metadata too."""
    import onnx
    import torch

    from unet_jax.port import flax_to_torch
    from unet_torch.model import UNet as TorchUNet

    network = TorchUNet(**description["unet_config"]).eval()
    network.load_state_dict({k: torch.from_numpy(np.asarray(v)) for k, v in flax_to_torch(source.variables, source.config).items()})
    example = torch.zeros(2, source.config.in_channels, source.tile_size, source.tile_size)  # 2: a batch of 1 would be specialised
    with tempfile.TemporaryDirectory() as scratch, _quiet_exporter():
        path = Path(scratch) / "unet.onnx"
        torch.onnx.export(network, (example,), str(path), dynamo=True, external_data=False, verbose=False,
                          dynamic_shapes=({0: torch.export.Dim("batch", min=1)},), input_names=["image"],
                          output_names=["logits"])
        model = onnx.load(str(path))
    onnx.helper.set_model_props(model, {"unet_jax": json.dumps(description)})
    return write_atomically(out, model.SerializeToString(), overwrite=overwrite)


@contextlib.contextmanager
def _quiet_exporter():
    """torch.onnx.export prints its progress, logs that torchvision's ops are not registered, and
    warns about a deprecation inside torch's own pytree code; none of it is the user's business."""
    registration = logging.getLogger("torch.onnx._internal.exporter._registration")
    level = registration.level
    registration.setLevel(logging.ERROR)
    try:
        with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()):
            warnings.filterwarnings("ignore", message=r"`isinstance\(treespec, LeafSpec\)` is deprecated", category=FutureWarning)
            yield
    finally:
        registration.setLevel(level)


def check_onnx(source: ExportSource, out: Path) -> float:
    """onnxruntime's logits for the file at `out` against Flax's, relative to the largest logit."""
    import onnxruntime

    session = onnxruntime.InferenceSession(str(out), providers=["CPUExecutionProvider"])

    def run(images: np.ndarray) -> np.ndarray:
        logits = session.run(["logits"], {"image": np.ascontiguousarray(images.transpose(0, 3, 1, 2))})[0]
        return logits.transpose(0, 2, 3, 1)

    return relative_difference(source, run)
