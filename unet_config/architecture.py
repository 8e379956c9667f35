"""The U-Net architecture: one frozen dataclass that both frameworks build their network from."""

from __future__ import annotations

import dataclasses
from typing import Literal, Optional

from unet_config.errors import ConfigError

PADDINGS = ("valid", "same")
UPSAMPLES = ("transpose", "bilinear")
NORMS = (None, "batch")
# No image is this wide: a network whose smallest input is wider is a typo (--depth 30), refused
# when built instead of searched for a size to suggest.
MAX_SMALLEST_INPUT = 2**16


def described(default, help: str):
    """A dataclass field whose `help` documents it, here and in the command line's --help."""
    return dataclasses.field(default=default, metadata={"help": help})


def is_integer(value) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


@dataclasses.dataclass(frozen=True)
class UNetConfig:
    """U-Net architecture. The defaults are the network of Ronneberger et al. (2015)."""

    in_channels: int = described(1, "channels of the input images (1 for grey-scale microscopy)")
    num_classes: int = described(2, "classes predicted; class-index masks hold 0 .. num_classes-1")
    features: int = described(64, "channels of the first level; level l has features * 2**l")
    depth: int = described(4, "number of 2x2 max-pools (and of up-samplings)")
    padding: Literal["valid", "same"] = described("valid", "valid: the paper's unpadded 3x3 convs; same: zero-padded")
    upsample: Literal["transpose", "bilinear"] = described(
        "transpose", "transpose: the paper's 2x2 stride-2 up-conv; bilinear: resize + 1x1 conv"
    )
    norm: Optional[Literal["batch"]] = described(None, "batch: BatchNorm after each 3x3 conv (which then has no bias)")

    def __post_init__(self):
        for name in ("in_channels", "num_classes", "features", "depth"):
            value = getattr(self, name)
            if not is_integer(value) or value < 1:
                raise ConfigError(f"UNetConfig.{name} must be a positive integer, got {value!r}")
        if self.num_classes < 2:
            raise ConfigError(
                f"UNetConfig.num_classes must be at least 2 (background and foreground), got {self.num_classes}"
            )
        for name, allowed in (("padding", PADDINGS), ("upsample", UPSAMPLES), ("norm", NORMS)):
            if getattr(self, name) not in allowed:
                raise ConfigError(f"UNetConfig.{name} must be one of {allowed}, got {getattr(self, name)!r}")
        if self.smallest_input_size > MAX_SMALLEST_INPUT:
            deepest = max(d for d in range(1, self.depth) if _smallest_input(d, 2 * self.conv_shrink) <= MAX_SMALLEST_INPUT)
            raise ConfigError(
                f"UNetConfig.depth (--depth) {self.depth}: the smallest input this network takes is {self.smallest_input_size} "
                f"pixels a side, beyond any image (at most {MAX_SMALLEST_INPUT} here). Fix: choose a depth of at most {deepest} "
                f"(the paper's: 4)"
            )

    # ----------------------------------------------------------------- channels
    def channels(self, level: int) -> int:
        """Channels of encoder level `level` (0-based); level `depth` is the bottleneck."""
        return self.features * 2**level

    @property
    def conv_shrink(self) -> int:
        """Pixels a 3x3 conv removes from a side length (2 unpadded, 0 padded)."""
        return 2 if self.padding == "valid" else 0

    # ------------------------------------------------------------------- sizes
    def output_size(self, input_size: int) -> int:
        """Side length of the logits for an input side length; ConfigError if it is not valid."""
        output = self._trace_size(input_size)
        if output is None:
            raise ConfigError(self._invalid_size_message(input_size))
        return output

    def is_valid_input_size(self, input_size: int) -> bool:
        return self._trace_size(input_size) is not None

    @property
    def smallest_input_size(self) -> int:
        """The smallest valid input side; the valid sides are it + k * 2**depth (`_smallest_input`)."""
        return _smallest_input(self.depth, 2 * self.conv_shrink)

    def nearest_valid_input_sizes(self, input_size: int) -> tuple[Optional[int], Optional[int]]:
        """The largest valid size <= `input_size` and the smallest valid size >= it, computed from
        `smallest_input_size` and the step 2**depth (a search one size at a time took seconds at depth 20).

        The lower one is None when no valid size is that small.
        """
        smallest, step = self.smallest_input_size, 2**self.depth
        if input_size <= smallest:
            return (smallest if input_size == smallest else None), smallest
        lower = smallest + (input_size - smallest) // step * step
        return lower, (lower if lower == input_size else lower + step)

    def check_input_size(self, height: int, width: int) -> None:
        """Raise a ConfigError naming the nearest valid sizes if (height, width) can't be fed."""
        for side in (height, width):
            if not self.is_valid_input_size(side):
                raise ConfigError(self._invalid_size_message(side))

    def _trace_size(self, size: int) -> Optional[int]:
        # Follows a side length through the network; None where a map would be empty, odd
        # before a pool, or (same padding) not divisible by 2**depth.
        if not isinstance(size, int) or size < 1:
            return None
        shrink = 2 * self.conv_shrink  # two 3x3 convs per level
        for _ in range(self.depth):
            size -= shrink
            if size < 2 or size % 2:
                return None
            size //= 2
        size -= shrink  # bottleneck
        if size < 1:
            return None
        for _ in range(self.depth):
            size = 2 * size - shrink
            if size < 1:
                return None
        return size

    def _invalid_size_message(self, size: int) -> str:
        lower, upper = self.nearest_valid_input_sizes(size) if isinstance(size, int) else (None, None)
        near = " or ".join(str(s) for s in dict.fromkeys((lower, upper)) if s is not None)
        rule = (
            "every map before a 2x2 pool must have an even side and the bottleneck must not be empty"
            if self.padding == "valid"
            else f"with same padding the side must be a multiple of 2**depth = {2**self.depth}"
        )
        return (
            f"input size {size} is not valid for this U-Net (padding={self.padding!r}, depth={self.depth}): "
            f"{rule}. Nearest valid input sizes: {near}."
        )


def _smallest_input(depth: int, shrink: int) -> int:
    """The smallest valid input side of a U-Net of `depth` whose levels' two convs remove `shrink`
    pixels. Every map on the way down is the one below it doubled plus `shrink`, so one more pixel at
    the bottleneck is 2**depth more at the input: the valid sides are this + k * 2**depth. Built up
    from the bottleneck's output `bottom`, the smallest whose maps on the way up stay non-empty (from
    `bottom` = `shrink` on they never shrink, so the search is short)."""
    for bottom in range(1, shrink + 2):
        up = bottom
        for _ in range(depth):
            up = 2 * up - shrink
            if up < 1:
                break
        else:
            size = bottom + shrink
            for _ in range(depth):
                size = 2 * size + shrink
            return size
    raise AssertionError("unreachable: a bottleneck output of `shrink` + 1 only grows on the way up")
