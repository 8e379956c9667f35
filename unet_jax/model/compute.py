"""How the JAX network computes a run, never what: the backward pass's recomputation (`remat`) and
the batch groups run side by side. JAX-only, so apart from the framework-neutral `TrainConfig`;
importable without JAX, for the command line's flags."""

from __future__ import annotations

import dataclasses

from unet_config.architecture import described, is_integer
from unet_config.errors import ConfigError

# What the backward pass recomputes instead of keeping (`unet_jax.model.unet.UNet.remat`).
REMAT_POLICIES = ("none", "blocks", "conv-outputs", "dots")
# What a resumed run may change: batch groups change only the order in which per-image gradients
# are summed, as --devices does; a pinned ReLU output changes only which buffers XLA keeps.
RESUMABLE_COMPUTE_FIELDS = ("batch_groups", "pin_relu_output")


@dataclasses.dataclass(frozen=True)
class Compute:
    remat: str = described(
        "none", "recompute in the backward pass instead of keeping: none; blocks: each conv block from its input; "
        "conv-outputs: keep the conv outputs, recompute BatchNorm and ReLU (for --norm batch). Same function, "
        "less memory, more compute"
    )
    pin_relu_output: bool = described(
        False, "keep each ReLU's output as computed for the backward pass instead of letting XLA recompute it from "
        "the convolution's output (an optimization barrier): the same values; on a GPU fewer temporaries and the ReLU "
        "fused into cuDNN's convolution (compiled for an H200: 7.4 -> 5.7 GiB, seed network, batch 16, bf16; not yet timed)"
    )
    batch_groups: int = described(
        0, "run the network on this many groups of each batch side by side (the same function; XLA:CPU keeps its cores "
        "busier that way under jaxlib 0.10's YNNPACK convolutions). 0: two per CPU core on a single CPU device that "
        "runs those (UNET_JAX_XLA_CPU_FLAGS=0), else 1; 1: off. Not with --norm batch"
    )

    def __post_init__(self):
        if self.remat not in REMAT_POLICIES:
            raise ConfigError(f"Compute.remat (--remat) must be one of {REMAT_POLICIES}, got {self.remat!r}")
        if not is_integer(self.batch_groups) or self.batch_groups < 0:
            raise ConfigError(f"Compute.batch_groups (--batch-groups) must be a non-negative integer, got {self.batch_groups!r}")

    def check_norm(self, norm) -> None:
        """Batch groups split a batch, so BatchNorm would see each group's own statistics."""
        if self.batch_groups > 1 and norm == "batch":
            raise ConfigError(f"--batch-groups {self.batch_groups} with BatchNorm would give each group its own batch "
                              "statistics: use 1 (or 0, which picks 1 for BatchNorm)")
