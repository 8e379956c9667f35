"""How long the whole parity suite would take on an H200, estimated on any machine.

The only GPU timing there is: the H200 run of 2026-12-04 16:55 UTC (commit e6dd4a0, jax 0.11.2,
torch 2.11.0+cu130, `bash scripts/gpu_check.sh parity`, parity_tests/results/nvidia-h200/pytest.log):
101 tests in 411.7 s, with the durations of the slowest 15. Each test of this session is priced:

- a test that ran there under the same id: its measured duration if among the 15; otherwise the
  mean of the other 86 less the `host` ones ((411.7 s - the 15) / that many: the host tests, which
  a GPU call now leaves out, took ~0 s and would lower it), each at most the 15th's 5.7 s;
- a test new since then: from measured tests that did strictly more work on the GPU (`new_test_cost`);
  the seed network at 572 px is what costs: one compilation of its train step per mode now,
  against three per mode then (forward, gradients, train step);
- the fresh-process determinism tests: their children start when the session starts
  (parity_tests/conftest.py) and run beside the GPU-first tests; only the part of a child's
  measured duration that outlasts those tests counts.
Tests marked `cpu_only` (a GPU run skips them: another test checks more there) are not in the list.
"""

from __future__ import annotations

import re
from pathlib import Path

H200_LOG = Path(__file__).resolve().parent / "results" / "nvidia-h200" / "pytest.log"
H200_RUN = "H200, 2026-12-04 16:55 UTC, commit e6dd4a0, jax 0.11.2, torch 2.11.0+cu130"
BUDGET_S = 240.0
# Host work of a seed-network test at 572 px (its 31M-parameter state ported, compared and copied):
# NOT added to the old tests' durations, which hold as much of it. Timed on this project's 2-core CPU
# (jax 0.10.2, torch 2.13.0+cpu) with both train steps replaced by stubs that return the same tensors
# (parity_tests/studies/seed572_host_work.py; 2026-12-04, same load, interleaved): the old
# test_adam_steps[seed572-strict] (e6dd4a0) 17.4 and 19.6 s; a new mode test before the cuts of
# 2026-12-04 evening 15.6-25.5 s (mean 18.5), after them 10.5-13.9 s for the first mode (which rounds
# the start for all three) and 7.9-9.5 s for the others (earlier, on a quieter machine: 7.0-8.2 s before,
# 5.4-6.3 and 3.3-4.3 s after); the float64 test 3.7-4.4 s before, 1.7-2.0 s after (quieter). So each
# new test is priced at its old test's duration, host work included, which is at most what it does now.
# (Until then 10 s per test were added on top: counted twice.)
# Float64 work of the seed network at 572 px, batch 2, in TFLOP: forward 0.6, gradients 1.8, an
# Adam step 1.8. The old reference ran forward, gradients and 10 steps (20.4); the new one 2 steps
# (the gradient check's reference is step 1's gradients); the float64 test's Flax run 1 step.
OLD_REFERENCE_TFLOP, NEW_REFERENCE_TFLOP, STEP_TFLOP = 0.6 + 1.8 + 10 * 1.8, 2 * 1.8, 1.8
FLOAT64_FLAX_STEPS = 1
# test_gradients' float64 reference (the seed network at 188 px, batch 1: 1.8 x (188/572)^2 / 2 TFLOP
# forward and backward) now runs on the GPU, paid by the strict test since the float64 one is CPU-only.
SEED_188_REFERENCE_TFLOP = STEP_TFLOP * (188 / 572) ** 2 / 2
PRECISION = "parity_tests/test_precision_modes.py"
FRESH_PROCESS = "parity_tests/test_determinism.py::test_same_step_twice_in_a_fresh_process"


def measured(log: Path = H200_LOG) -> tuple[dict[str, float], set[str], float]:
    """({node id: seconds} of the slowest 15 calls, every node id that ran, the total seconds)."""
    text = log.read_text()
    durations = {m[2]: float(m[1]) for m in re.finditer(r"^([\d.]+)s call\s+(\S+)$", text, re.M)}
    ran = set(re.findall(r"^(\S+::\S+) (?:PASSED|FAILED|SKIPPED)", text, re.M))
    total = float(re.search(r" in ([\d.]+)s \(", text)[1])
    return durations, ran, total


def _old(name: str) -> str:
    return f"{PRECISION}::{name}"


def float64_seconds_per_tflop(price) -> float:
    """torch's float64 rate on the H200: the old seed-572 strict test less the default one is the
    old float64 reference (OLD_REFERENCE_TFLOP); nothing else in them differs but the mode."""
    reference = price(_old("test_forward_and_gradients[seed572-strict]")) - price(_old("test_forward_and_gradients[seed572-default]"))
    return reference / OLD_REFERENCE_TFLOP


def new_test_cost(node: str, price) -> tuple[float, str] | None:
    """(seconds, basis) for a test whose work changed since the H200 run; `price(id)` prices an old one."""
    rate = float64_seconds_per_tflop(price)
    match = re.fullmatch(re.escape(PRECISION) + r"::test_precision_mode_relative_to_torch\[(.+)-(strict|default|bf16)\]", node)
    if match:
        network, mode = match[1], match[2]
        if network == "seed572":
            seconds = price(_old(f"test_adam_steps[seed572-{mode}]"))
            basis = f"old test_adam_steps[seed572-{mode}] (1 compile + 10 steps of each, and as much host work)"
            if mode == "strict":  # the first of the three computes the float64 reference on the GPU
                seconds += NEW_REFERENCE_TFLOP * rate
                basis += f" + the float64 reference: {NEW_REFERENCE_TFLOP:g} TFLOP at torch's measured float64 rate"
            return seconds, basis
        old = [_old(f"test_forward_and_gradients[{network}-{mode}]"), _old(f"test_adam_steps[{network}-{mode}]")]
        return sum(price(o) for o in old), "old forward_and_gradients + adam_steps of the same net and mode (3 compiles; now 2)"
    if node == _old("test_one_step_float64_both_frameworks[seed572]"):
        seconds = price(_old("test_adam_steps[seed572-strict]")) + FLOAT64_FLAX_STEPS * STEP_TFLOP * rate
        return seconds, (f"old test_adam_steps[seed572-strict] (a compile, and more host work) + {FLOAT64_FLAX_STEPS} "
                         "float64 step at torch's measured float64 rate")
    if node == _old("test_one_step_float64_both_frameworks[small]"):
        return price(_old("test_adam_steps_float64_both_frameworks")), "old test_adam_steps_float64_both_frameworks"
    if node == "parity_tests/test_gradients.py::test_gradients_strict_float32[seed]":
        return (price(node) + SEED_188_REFERENCE_TFLOP * rate,
                f"measured + its float64 reference on the GPU ({SEED_188_REFERENCE_TFLOP:.2f} TFLOP at torch's float64 rate)")
    return None


def estimate(nodes: list[str], host: list[str] = (), log: Path = H200_LOG) -> dict:
    """{"seconds", "rows": [(node, seconds, basis)], "old_seconds", "compiles_572": (old, new)}.

    `host`: the `host` tests, which a GPU call leaves out. They ran in the H200 call (in ~0 s: text,
    flags, exact copies), so they leave the pool of unlisted tests whose mean prices the rest."""
    durations, ran, total = measured(log)
    pool = len(ran - set(durations) - set(host))
    unlisted_mean = (total - sum(durations.values())) / pool

    def price(node: str) -> float:
        return durations.get(node, unlisted_mean)

    rows = []
    for node in nodes:
        if (cost := new_test_cost(node, price)) is not None:
            rows.append((node, *cost))
        elif node in durations:
            rows.append((node, durations[node], "measured"))
        else:
            basis = "mean of the unlisted tests" if node in ran else "new: mean of the unlisted tests"
            rows.append((node, unlisted_mean, basis))
    gpu_first = sum(s for n, s, _ in rows if "seed572" in n)
    for i, (node, seconds, _) in enumerate(rows):
        if node.startswith(FRESH_PROCESS):  # the children run beside the GPU-first tests
            rows[i] = (node, max(0.0, seconds - gpu_first),
                       f"{seconds:.1f} s measured, beside the {gpu_first:.0f} s of GPU-first tests")
    compiles = (9, sum(1 for n in nodes if "seed572" in n))  # then 3 per mode; now one per test (a mode, or float64)
    return {"seconds": sum(s for _, s, _ in rows), "rows": rows, "old_seconds": total, "compiles_572": compiles,
            "unlisted_mean": unlisted_mean}


def header_line(nodes: list[str], host: list[str] = ()) -> str:
    result = estimate(nodes, host)
    verdict = "within" if result["seconds"] <= BUDGET_S else "OVER"
    old, new = result["compiles_572"]
    return (f"- GPU estimate for these {len(nodes)} tests on an H200: **{result['seconds']:.0f} s**, {verdict} the "
            f"{BUDGET_S:.0f} s budget (`parity_tests/gpu_estimate.py`, from the {H200_RUN} run's durations, "
            f"{result['old_seconds']:.0f} s then; seed network at 572 px: {new} compilations, {old} then)")
