"""How far float32 gradients are from float64 in each framework, over several data draws.

    python -m parity_tests.studies.float32_gradient_noise --out parity_tests/results/cpu

The loss is piecewise smooth, so float32 rounding that moves a pre-activation across a ReLU
or max-pool kink moves a per-channel gradient sum (test_gradients' docstring). How big that
gets depends on the data, so the float32 gradient bounds of the parity tests are set from
this measurement over many batches, not from the one batch each test uses. Writes
`float32_gradient_noise.{json,md}`: per network, size and data seed, the largest per-tensor
error (harness.max_rel_error) of torch and of Flax (strict float32) against torch in float64.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

from parity_tests import harness
from parity_tests.report import write_study

# (case, input size, data seeds): the seed network where kink flips are largest, and a small one.
PLAN = (("seed", 188, range(6)), ("seed", 204, range(2)), ("features8", 188, range(10)))


def measure(name: str, size: int, seed: int) -> dict:
    case = harness.CASES[name]
    images, masks = harness.make_batch(case.config, size, case.batch, seed=seed)
    model = harness.build_torch(case.config)
    _, ref = harness.torch_loss_and_grads(harness.reference_model(model), case.config, images, masks)
    variables = harness.port_to_flax(model, case.config)
    with harness.precision("strict") as prec:
        _, torch_grads = harness.torch_loss_and_grads(model, case.config, images, masks, prec)
        _, flax_grads = harness.flax_loss_and_grads(case.config, variables, images, masks, prec.flax_dtype)
    zeros = harness.zero_to_rounding(ref)
    torch_error, torch_worst = harness.max_rel_error(torch_grads, ref, zeros)
    flax_error, flax_worst = harness.max_rel_error(flax_grads, ref, zeros)
    return {"case": name, "size": size, "data_seed": seed, "torch": torch_error, "torch_worst": torch_worst,
            "flax": flax_error, "flax_worst": flax_worst}


TITLE = "float32 gradients against float64, over data draws"
METHOD = ["networks He-initialised as in the parity tests (`harness.build_torch`), batch "
          "`harness.make_batch(config, size, batch, seed=data seed)`.",
          "Error: largest per-tensor max|g - g64| / max|g64| (tensors with exact gradient 0 against the network's "
          "largest gradient); strict float32 in both frameworks."]


def markdown_body(rows: list[dict]) -> list[str]:
    lines = ["| network | size | data seed | torch | worst tensor | Flax | worst tensor |",
             "| --- | ---: | ---: | ---: | --- | ---: | --- |"]
    for r in rows:
        lines.append(f"| {r['case']} | {r['size']} | {r['data_seed']} | {r['torch']:.2e} | {r['torch_worst']} | "
                     f"{r['flax']:.2e} | {r['flax_worst']} |")
    lines += ["", "Largest per network and size:", ""]
    for name, size, _ in PLAN:
        group = [r for r in rows if r["case"] == name and r["size"] == size]
        lines.append(f"- {name} at {size} px: torch {max(r['torch'] for r in group):.2e}, "
                     f"Flax {max(r['flax'] for r in group):.2e} over {len(group)} draws")
    return lines


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, required=True, help="folder for float32_gradient_noise.{json,md}")
    args = parser.parse_args(argv)
    start, rows = time.perf_counter(), []
    for name, size, seeds in PLAN:
        for seed in seeds:
            rows.append(measure(name, size, seed))
            print(f"{name} {size} px seed {seed}: torch {rows[-1]['torch']:.2e}, flax {rows[-1]['flax']:.2e}", flush=True)
    print(f"written to {write_study(args.out, 'float32_gradient_noise', rows, start, TITLE, METHOD, markdown_body(rows))}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
