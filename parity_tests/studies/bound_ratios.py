"""How Flax's error compares with PyTorch's in the same precision mode, over repeated seeds.

    python -m parity_tests.studies.bound_ratios --out parity_tests/results/cpu [--seeds 4]

The bounds of `parity_tests/test_precision_modes.py` (see `parity_tests.bounds`) hold Flax's
error against float64 to k x torch's own error in the same mode plus a floor in the mode's
rounding unit. This measures, for the small networks of those tests and `--seeds` draws of the
start weights and batches, each quantity those tests check: Flax's and torch's error against
float64 and their difference, and the ratios flax / torch and between / torch that k must cover.
Writes `bound_ratios.{json,md}`.
"""

from __future__ import annotations

import argparse
import dataclasses
import time
from pathlib import Path

from parity_tests import bounds, harness, precision_checks, training
from parity_tests.report import write_study

MODES = ("strict", "bf16")  # on a CPU "default" is strict float32 again


def floor(recipe: training.Recipe, mode: str, quantity: str) -> float:
    """The floor of `parity_tests.bounds` for this quantity on a CPU."""
    if quantity.endswith("weights"):
        rms = bounds.rms(harness.torch_state(training.start(recipe)), precision_checks.parameter_keys(recipe))
        return bounds.weights_in_lr(0.0, mode, rms, recipe.learning_rate).floor
    return bounds.relative_to_torch(0.0, mode, on_gpu=False).floor


def measure(recipe: training.Recipe, mode: str) -> list[dict]:
    figures = precision_checks.measure(recipe, mode, device="cpu")
    rows = []
    for quantity, (flax, torch, between) in figures.items():
        rows.append({"recipe": recipe.name, "seed": recipe.seed, "mode": mode, "quantity": quantity, "flax": flax,
                     "torch": torch, "between": between, "floor": floor(recipe, mode, quantity),
                     "flax_over_torch": flax / torch if torch else None, "between_over_torch": between / torch if torch else None})
    return rows


def k_needed(row: dict, key: str) -> float:
    """The smallest K for which row[key] <= K x torch + floor (0 where the floor alone covers it)."""
    return max(0.0, row[key] - row["floor"]) / row["torch"] if row["torch"] else float("inf")


TITLE = "Flax against PyTorch in the same precision mode, over seeds"
METHOD = ["each row is one draw (`training.Recipe(seed=...)`: start weights and batches); errors as the parity report's "
          "(`parity_tests.precision_checks.measure`)."]


def markdown_body(rows: list[dict]) -> list[str]:
    lines = ["| network | seed | mode | quantity | Flax vs f64 | torch vs f64 | Flax vs torch | flax/torch | between/torch |",
             "| --- | ---: | --- | --- | ---: | ---: | ---: | ---: | ---: |"]
    ratio = lambda v: "" if v is None else f"{v:.2f}"  # noqa: E731
    for r in rows:
        lines.append(f"| {r['recipe']} | {r['seed']} | {r['mode']} | {r['quantity']} | {r['flax']:.2e} | {r['torch']:.2e} | "
                     f"{r['between']:.2e} | {ratio(r['flax_over_torch'])} | {ratio(r['between_over_torch'])} |")
    lines += ["", f"Per mode and quantity, over networks and seeds: the largest raw ratio, and the K the bound "
              f"`K x torch + floor` needs (floor: {bounds.FLOOR_UNITS} rounding units, parity_tests.bounds; 0 where the "
              f"floor alone covers every draw). The tests use K = {bounds.K}.", ""]
    for mode in MODES:
        for quantity in dict.fromkeys(r["quantity"] for r in rows if r["mode"] == mode):
            group = [r for r in rows if r["mode"] == mode and r["quantity"] == quantity and r["torch"]]
            if group:
                lines.append(f"- {mode}, {quantity} (floor {group[0]['floor']:.1e}): flax/torch "
                             f"{max(r['flax_over_torch'] for r in group):.2f}, between/torch "
                             f"{max(r['between_over_torch'] for r in group):.2f}; K needed: Flax "
                             f"{max(k_needed(r, 'flax') for r in group):.2f}, between "
                             f"{max(k_needed(r, 'between') for r in group):.2f} ({len(group)} draws)")
    return lines


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, required=True, help="folder for bound_ratios.{json,md}")
    parser.add_argument("--seeds", type=int, default=4, help="draws per network (default 4)")
    args = parser.parse_args(argv)
    start, rows = time.perf_counter(), []
    for base in precision_checks.SMALL_RECIPES:
        for seed in range(args.seeds):
            for mode in MODES:
                rows += measure(dataclasses.replace(base, seed=seed), mode)
                print(f"{base.name} seed {seed} {mode}: " + ", ".join(
                    f"{r['quantity']} {r['flax']:.1e}/{r['torch']:.1e}" for r in rows[-4:]), flush=True)
    print(f"written to {write_study(args.out, 'bound_ratios', rows, start, TITLE, METHOD, markdown_body(rows))}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
