"""How far 10 float32 Adam steps drift from float64, step by step, and that float64 does not.

    python -m parity_tests.studies.float32_adam_drift --out parity_tests/results/cpu

The first GPU run measured the seed network at 572 px, strict float32, 10 Adam steps: both
frameworks' losses 1e-3 from the float64 run, while agreeing with each other to 2e-4. This
shows where that comes from, on a CPU: per step, the loss of torch and Flax in strict float32
and of Flax in float64, each against torch in float64, on the same start and batches as the
parity tests (`parity_tests.training`). If float64 Flax stays at ~1e-15 while float32 grows
step after step in both frameworks, the two compute the same training function and the drift
is float32 rounding amplified by the trajectory (Adam moves every weight by ~lr whatever the
size of its gradient, so rounding that flips a small gradient's sign moves that weight by 2 lr).
Writes `float32_adam_drift.{json,md}`.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np

from parity_tests import harness, training
from parity_tests.report import write_study
from unet_config import UNetConfig

# The seed network at the smallest size it takes (4x4 output pixels: a noisy loss) at the
# parity tests' learning rate and a hundredth of it, and the small net the CPU tests train.
PLAN = (
    training.Recipe("seed-188px-batch2", UNetConfig(), 188, 2, "adam", 1e-3),
    training.Recipe("seed-188px-batch2", UNetConfig(), 188, 2, "adam", 1e-5),
    training.Recipe("features8-depth2-44px", UNetConfig(features=8, depth=2), 44, 2, "adam", 1e-3),
)


def per_step(losses, refs) -> list[float]:
    return [abs(a - r) / abs(r) for a, r in zip(losses, refs, strict=True)]


def measure(recipe: training.Recipe) -> dict:
    init, ref = training.run_reference(recipe)
    torch_run, flax_run = training.run_frameworks(recipe, "strict")
    data = [(images.astype(np.float64), masks) for images, masks in training.batches(recipe)]
    with jax.enable_x64(True):
        variables = jax.tree.map(lambda a: np.asarray(a, np.float64),
                                 harness.port_to_flax(training.start(recipe), recipe.config))
        flax64 = training.train_flax(recipe.config, variables, recipe, data, jnp.float64)
    return {"recipe": recipe.name, "learning_rate": recipe.learning_rate, "reference_losses": ref.losses,
            "torch_float32": per_step(torch_run.losses, ref.losses), "flax_float32": per_step(flax_run.losses, ref.losses),
            "flax_float64": per_step(flax64.losses, ref.losses)}


TITLE = "10 Adam steps: float32 against float64, per step"
METHOD = ["start and batches as the parity tests (`parity_tests.training`); error |loss - loss64| / |loss64| against "
          "torch in float64; float32 is strict."]


def markdown_body(rows: list[dict]) -> list[str]:
    lines = []
    for r in rows:
        steps = range(1, len(r["reference_losses"]) + 1)
        lines += [""] if lines else []  # a blank line between sections
        lines += [f"## {r['recipe']}, Adam lr {r['learning_rate']:g}", "",
                  "| step | " + " | ".join(str(i) for i in steps) + " |", "| --- |" + " ---: |" * len(steps),
                  "| float64 loss | " + " | ".join(f"{v:.4f}" for v in r["reference_losses"]) + " |"]
        for key, label in (("torch_float32", "torch float32"), ("flax_float32", "Flax float32"),
                           ("flax_float64", "Flax float64")):
            lines.append(f"| {label} | " + " | ".join(f"{v:.1e}" for v in r[key]) + " |")
    return lines


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, required=True, help="folder for float32_adam_drift.{json,md}")
    args = parser.parse_args(argv)
    start, rows = time.perf_counter(), []
    for recipe in PLAN:
        rows.append(measure(recipe))
        print(f"{recipe.name} lr {recipe.learning_rate:g}: float32 worst torch {max(rows[-1]['torch_float32']):.1e}, "
              f"Flax {max(rows[-1]['flax_float32']):.1e}; float64 Flax {max(rows[-1]['flax_float64']):.1e}", flush=True)
    print(f"written to {write_study(args.out, 'float32_adam_drift', rows, start, TITLE, METHOD, markdown_body(rows))}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
