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
# are summed, as --devices does.
RESUMABLE_COMPUTE_FIELDS = ("batch_groups",)


@dataclasses.dataclass(frozen=True)
class Compute:
    remat: str = described(
        "none", "recompute in the backward pass instead of keeping: none; blocks: each conv block from its input; "
        "conv-outputs: keep the conv outputs, recompute BatchNorm and ReLU (for --norm batch). Same function, "
        "less memory, more compute"
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
