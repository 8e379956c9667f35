"""How the precision-mode tests bound Flax: relative to PyTorch in the same mode.

    bound = K x (torch's own error against float64, same mode, same quantity) + floor(mode)

Flax's error against float64 and the Flax-torch difference must each be within the bound;
torch's own error is recorded beside them, not asserted (it is what the bound is made of). So
a mode whose arithmetic is coarse (TF32, bfloat16) widens the bound by what that arithmetic
costs the reference framework, measured in the same run, while a Flax-only error (a wrong
cast, a loss in bf16) still fails, and PyTorch's own error can no longer fail a Flax test.

K per mode, from repeated seeds on the CPU (`python -m parity_tests.studies.bound_ratios --seeds 3`,
parity_tests/results/cpu/bound_ratios.md: both small networks, 3 draws of weights and batches
each, 2026-12-04, jax 0.10.2, torch 2.13.0+cpu): the largest K any draw needed beside the floor
was 1.78 in strict float32 (the Flax-torch difference of the step-2 weights) and 2.86 in bf16 (the
difference of the BatchNorm net's gradients), so K = 2 for strict, 3 for bf16. "default" takes
strict's 2: on a CPU it is strict, and on the H200 the default-mode figures need at most 1.15
(seed network at 572, logits: difference 2.90e-3 against torch's 2.53e-3).

The floor is FLOOR_UNITS rounding units of the mode (`ROUNDING_UNIT`: float32 for strict and for
"default" on a CPU, TF32 for "default" on an NVIDIA GPU, bfloat16 for bf16). 32 units: the
largest Flax-only excess measured is the small network's TF32 gradients on an H200 (2026-12-04,
commit e6dd4a0, jax 0.11.2, torch 2.11.0+cu130; parity_tests/results/nvidia-h200/): Flax 1.05e-2
against float64 where torch had 6.9e-4, i.e. 21.5 TF32 units (XLA's TF32 weight-gradient
convolutions are not cuDNN's). In strict float32 the floor is 1.9e-6, below every figure a
wrong cast or a lower-precision op produces (>= 1e-4), so strict mode stays tight.

Weight errors after one Adam step are in units of the learning rate; their floor is the
rounding of the float32 master weights themselves, FLOOR_UNITS x u(float32) x rms(w) / lr
(every mode keeps float32 master weights).
"""

from __future__ import annotations

import dataclasses

import numpy as np

K = {"strict": 2.0, "default": 2.0, "bf16": 3.0}
FLOOR_UNITS = 32
FLOAT32_UNIT = 2.0**-24  # unit roundoff: half the spacing of 1.0's neighbours (24-bit significand)
TF32_UNIT = 2.0**-11  # 11-bit significand (10 stored)
BFLOAT16_UNIT = 2.0**-8  # 8-bit significand (7 stored)


def rounding_unit(mode: str, on_gpu: bool) -> float:
    """The unit roundoff of a precision mode's compute (harness.precision)."""
    if mode == "strict":
        return FLOAT32_UNIT
    if mode == "default":  # TF32 convolutions on an NVIDIA GPU; plain float32 on a CPU
        return TF32_UNIT if on_gpu else FLOAT32_UNIT
    if mode == "bf16":
        return BFLOAT16_UNIT
    raise ValueError(f"no rounding unit for mode {mode!r}")


@dataclasses.dataclass(frozen=True)
class Bound:
    k: float
    torch_error: float
    floor: float

    @property
    def value(self) -> float:
        return self.k * self.torch_error + self.floor

    def describe(self) -> str:
        return f"bound {self.k:g} x torch {self.torch_error:.2e} + floor {self.floor:.2e}"


def relative_to_torch(torch_error: float, mode: str, on_gpu: bool) -> Bound:
    """The bound of a relative error (logits, gradients, loss) in `mode`."""
    return Bound(K[mode], torch_error, FLOOR_UNITS * rounding_unit(mode, on_gpu))


def weights_in_lr(torch_error: float, mode: str, weights_rms: float, learning_rate: float) -> Bound:
    """The bound of a one-step weight error in units of lr (float32 master weights in every mode)."""
    return Bound(K[mode], torch_error, FLOOR_UNITS * FLOAT32_UNIT * weights_rms / learning_rate)


def rms(state: dict, keys) -> float:
    """Root-mean-square of every entry of `keys` in `state`."""
    squares = 0.0
    for key in keys:
        values = np.asarray(state[key], np.float64).ravel()
        squares += float(np.einsum("i,i->", values, values))
    return (squares / sum(state[k].size for k in keys)) ** 0.5
