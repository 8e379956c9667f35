"""How long the whole parity suite would take on an H200, estimated on any machine.

The only GPU timing there is: the H200 run of 2026-12-04 16:55 UTC (commit e6dd4a0, jax 0.11.2,
torch 2.11.0+cu130, `bash scripts/gpu_check.sh parity`, parity_tests/results/nvidia-h200/pytest.log):
101 tests in 411.7 s, with the durations of the slowest 15. Each test of this session is priced:

- a test that ran there under the same id: its measured duration if among the 15; otherwise the
  mean of the other 86 less the `host` ones ((411.7 s - the 15) / that many: the host tests, which
  a GPU call now leaves out, took ~0 s and would lower it), each at most the 15th's 5.7 s;
- a test new since then: from measured tests that did strictly more work on the GPU (`NEW_TESTS`);
  the seed network at 572 px is what costs: one compilation of its train step per mode now,
  against three per mode then (forward, gradients, train step);
- the fresh-process determinism tests: their children start when the session starts
  (parity_tests/conftest.py) and run beside the GPU-first tests; only the part of a child's
  measured duration that outlasts those tests counts.
"""

from __future__ import annotations

import re
from pathlib import Path

H200_LOG = Path(__file__).resolve().parent / "results" / "nvidia-h200" / "pytest.log"
H200_RUN = "H200, 2026-12-04 16:55 UTC, commit e6dd4a0, jax 0.11.2, torch 2.11.0+cu130"
BUDGET_S = 240.0
# Host work of one seed-network test at 572 px: its 31M-parameter state ported, compared and
# copied ~20 times. Measured on the 2-core CPU of this project's sessions (shared with other jobs):
# 21.5 s and 41.5 s for one test's share (/tmp timing of training.one_step_* without the steps);
# the GPU machine's 16 cores are not shared and each is faster: taken as 10 s, the least certain
# figure of this estimate (the GPU run's report gives the real durations).
SEED_572_HOST_S = 10.0
# Float64 work of the seed network at 572 px, batch 2, in TFLOP: forward 0.6, gradients 1.8, an
# Adam step 1.8. The old reference ran forward, gradients and 10 steps (20.4); the new one 2 steps
# (the gradient check's reference is step 1's gradients).
OLD_REFERENCE_TFLOP, NEW_REFERENCE_TFLOP, STEP_TFLOP = 0.6 + 1.8 + 10 * 1.8, 2 * 1.8, 1.8
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


def new_test_cost(node: str, price) -> tuple[float, str] | None:
    """(seconds, basis) for a test that did not exist in the H200 run; `price(id)` prices an old one."""
    match = re.fullmatch(re.escape(PRECISION) + r"::test_precision_mode_relative_to_torch\[(.+)-(strict|default|bf16)\]", node)
    if match:
        network, mode = match[1], match[2]
        if network == "seed572":
            seconds = price(_old(f"test_adam_steps[seed572-{mode}]")) + SEED_572_HOST_S
            basis = f"old test_adam_steps[seed572-{mode}] (1 compile + 10 steps of each) + {SEED_572_HOST_S:g} s host"
            if mode == "strict":  # the first of the three computes the float64 reference on the GPU
                reference = price(_old("test_forward_and_gradients[seed572-strict]")) - price(
                    _old("test_forward_and_gradients[seed572-default]"))
                seconds += reference * NEW_REFERENCE_TFLOP / OLD_REFERENCE_TFLOP
                basis += f" + the float64 reference: {NEW_REFERENCE_TFLOP:g}/{OLD_REFERENCE_TFLOP:g} of the old one's"
            return seconds, basis
        old = [_old(f"test_forward_and_gradients[{network}-{mode}]"), _old(f"test_adam_steps[{network}-{mode}]")]
        return sum(price(o) for o in old), "old forward_and_gradients + adam_steps of the same net and mode (3 compiles; now 2)"
    if node == _old("test_one_step_float64_both_frameworks[seed572]"):
        reference = price(_old("test_forward_and_gradients[seed572-strict]")) - price(
            _old("test_forward_and_gradients[seed572-default]"))
        seconds = price(_old("test_adam_steps[seed572-strict]")) + 2 * reference * STEP_TFLOP / OLD_REFERENCE_TFLOP
        return seconds + SEED_572_HOST_S, ("old test_adam_steps[seed572-strict] (a compile) + 2 float64 steps at torch's "
                                           f"measured float64 rate + {SEED_572_HOST_S:g} s host")
    if node == _old("test_one_step_float64_both_frameworks[small]"):
        return price(_old("test_adam_steps_float64_both_frameworks")), "old test_adam_steps_float64_both_frameworks"
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
        if node in durations:
            rows.append((node, durations[node], "measured"))
        elif (cost := new_test_cost(node, price)) is not None:
            rows.append((node, *cost))
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
