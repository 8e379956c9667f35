"""Does the suite catch the bugs it exists for? Apply each deliberate bug, run its tests.

    python -m parity_tests.mutation_check [--only NAME ...] [--precision] [--out DIR]   (make mutation)

For each mutation of `parity_tests.mutations`, the project's files (tracked and untracked,
git's ignore rules applied) are copied to a temporary folder, the mutation's edits are made
there, and its tests run with `pytest -x` in that folder, with PYTHONPATH pointing at it so
that every process, subprocesses included, imports the mutated code. A mutation is *caught*
when a test fails; it *survives* when all its tests pass. The unmutated copy runs every test
first: if that fails, nothing is measured. The report (`mutation_report.{json,md}`) names the
first failing test of each mutation, and the exit status is 1 if any mutation survived.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from parity_tests.mutations import MUTATIONS, PRECISION_MUTATIONS, Edit, Mutation

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_OUT = ROOT / "parity_tests" / "results" / "mutation"


class StaleMutation(ValueError):
    """A mutation's text is not in its file exactly once: the code was rewritten."""


def apply_edits(root: Path, edits: tuple[Edit, ...]) -> None:
    for edit in edits:
        path = root / edit.path
        text = path.read_text()
        count = text.count(edit.old)
        if count != 1:
            raise StaleMutation(f"{edit.path}: the text to mutate occurs {count} times, not once: {edit.old!r}")
        path.write_text(text.replace(edit.old, edit.new))


def project_files(root: Path = ROOT) -> list[str]:
    listing = subprocess.run(
        ["git", "ls-files", "--cached", "--others", "--exclude-standard", "-z"],
        cwd=root, check=True, capture_output=True, text=True,
    ).stdout
    return [name for name in listing.split("\0") if name and (root / name).is_file()]


def copy_project(destination: Path, root: Path = ROOT) -> None:
    for name in project_files(root):
        target = destination / name
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(root / name, target)


def run_tests(tree: Path, tests: tuple[str, ...], timeout: float) -> tuple[int, str, float]:
    """(pytest exit status, its output, seconds) for `tests` run in `tree`."""
    command = [sys.executable, "-m", "pytest", "-x", "-q", "-p", "no:cacheprovider", *tests]
    env = {**os.environ, "PYTHONPATH": str(tree), "COLUMNS": "400"}  # wide: pytest keeps the failure message
    start = time.perf_counter()
    try:
        result = subprocess.run(command, cwd=tree, env=env, capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired as error:
        return -1, f"timed out after {timeout:.0f} s\n{error.stdout or ''}", time.perf_counter() - start
    return result.returncode, result.stdout + result.stderr, time.perf_counter() - start


def first_failure(output: str) -> str:
    """The first 'FAILED node - message' (or ERROR) line of pytest's short summary."""
    match = re.search(r"^(FAILED|ERROR) (\S+)(?: - (.*))?$", output, re.MULTILINE)
    if not match:
        return ""
    message = (match[3] or "").strip()
    return f"{match[2]}" + (f": {message[:160]}" if message else "")


def on_gpu() -> bool:
    """Whether the tests run where an NVIDIA GPU shows what `shows_on="gpu"` mutations do."""
    import torch

    return torch.cuda.is_available()


def check(mutation: Mutation | None, timeout: float, tests: tuple[str, ...] | None = None,
          chosen: tuple[Mutation, ...] = MUTATIONS) -> dict:
    """Run one mutation's tests on a mutated copy (None: the unmutated baseline, by default
    with the tests of every `chosen` mutation)."""
    if tests is None:
        tests = mutation.tests if mutation else tuple(dict.fromkeys(t for m in chosen for t in m.tests))
    with tempfile.TemporaryDirectory(prefix="unet-mutation-") as tmp:
        tree = Path(tmp)
        copy_project(tree)
        if mutation:
            apply_edits(tree, mutation.edits)
        status, output, seconds = run_tests(tree, tests, timeout)
    if status == 0 and mutation and mutation.shows_on == "gpu" and not on_gpu():
        outcome = "survives on CPU (GPU only)"  # expected: nothing on a CPU can show it
    elif status == 0:
        outcome = "survived" if mutation else "passed"
    elif status == 1:
        outcome = "caught" if mutation else "failed"
    else:
        outcome = "error"  # collection error, crash, timeout: the tests could not judge it
    record = {"name": mutation.name if mutation else "baseline", "bug": mutation.bug if mutation else "none",
              "outcome": outcome, "caught_by": first_failure(output) if status == 1 else "",
              "exit_status": status, "seconds": round(seconds, 1), "tests": list(tests)}
    if outcome in ("error", "failed"):
        record["output_tail"] = output[-3000:]
    return record


def merge_with_previous(records: list[dict], previous: Path) -> list[dict]:
    """This run's records, then every mutation of the previous report that this run did not
    check (marked `"from_previous_run": true`), in MUTATIONS order."""
    if not previous.is_file():
        return records
    ran = {r["name"] for r in records}
    kept = {r["name"]: {**r, "from_previous_run": True} for r in json.loads(previous.read_text())["mutations"]
            if r["name"] not in ran and r["name"] != "baseline"}
    order = {m.name: i for i, m in enumerate(MUTATIONS)}
    mutations = sorted([r for r in records if r["name"] != "baseline"] + list(kept.values()),
                       key=lambda r: order.get(r["name"], len(order)))
    return [r for r in records if r["name"] == "baseline"] + mutations


def write_report(records: list[dict], out: Path, total_seconds: float, arguments: str = "") -> None:
    from parity_tests.report import environment

    env = environment()
    out.mkdir(parents=True, exist_ok=True)
    payload = {"environment": env, "total_seconds": round(total_seconds, 1), "mutations": records}
    (out / "mutation_report.json").write_text(json.dumps(payload, indent=2) + "\n")
    versions = ", ".join(f"{k} {v}" for k, v in env["versions"].items())
    caught = sum(r["outcome"] == "caught" for r in records)
    mutations = [r for r in records if r["name"] != "baseline"]
    gpu_only = sum(r["outcome"].startswith("survives on CPU") for r in records)
    lines = [
        "# Mutation check: does the suite catch deliberate bugs?",
        "",
        f"- Machine: {env['cpu']}, {env['cpu_count']} cores; Python {env['python']}; {versions}",
        f"- Command: `python -m parity_tests.mutation_check{(' ' + arguments) if arguments else ''}`"
        + ("" if arguments else " (`make mutation`)") + f"; {total_seconds / 60:.1f} min in all"
        + ("; rows marked (previous run) are from the report this run updated" if any(r.get("from_previous_run") for r in records)
           else ""),
        f"- **{caught} of {len(mutations)} mutations caught**"
        + (f" ({gpu_only} can only show on an NVIDIA GPU: not caught here, as expected)" if gpu_only else "")
        + "; each runs its tests with `pytest -x` on a mutated copy.",
        "",
        "| mutation | bug | outcome | first failing test | s |",
        "| --- | --- | --- | --- | ---: |",
    ]
    for r in records:
        outcome = r["outcome"] if r["outcome"] != "survived" else "**SURVIVED**"
        cells = [r["name"], r["bug"], outcome + (" (previous run)" if r.get("from_previous_run") else ""),
                 f"`{r['caught_by']}`" if r["caught_by"] else "", f"{r['seconds']:.0f}"]
        lines.append("| " + " | ".join(c.replace("|", "\\|").replace("\n", " ") for c in cells) + " |")
    (out / "mutation_report.md").write_text("\n".join(lines) + "\n")


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--only", nargs="+", metavar="NAME", help="run only these mutations (default: all)")
    parser.add_argument("--precision", action="store_true",
                        help="run only the precision mutations (parity_tests.mutations.PRECISION_MUTATIONS)")
    parser.add_argument("--tests", nargs="+", metavar="TEST",
                        help="run these tests against every chosen mutation instead of its own (what else catches it?)")
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT, help=f"report folder (default: {DEFAULT_OUT})")
    parser.add_argument("--timeout", type=float, default=900, help="seconds per mutation's test run (default: 900)")
    parser.add_argument("--list", action="store_true", help="list the mutations and exit")
    args = parser.parse_args(argv)
    if args.list:
        for m in MUTATIONS:
            print(f"{m.name}: {m.bug}")
        return 0
    names = {m.name for m in MUTATIONS}
    unknown = sorted(set(args.only or ()) - names)
    if unknown:
        parser.error(f"unknown mutation(s) {', '.join(unknown)}; --list shows them")
    chosen = [m for m in MUTATIONS if (not args.only or m.name in args.only)
              and (not args.precision or m in PRECISION_MUTATIONS)]
    if args.tests:
        chosen = [dataclasses.replace(m, tests=tuple(args.tests)) for m in chosen]

    start = time.perf_counter()
    records = [check(None, args.timeout, chosen=tuple(chosen))]
    print(f"baseline: {records[0]['outcome']} ({records[0]['seconds']:.0f} s)", flush=True)
    if records[0]["outcome"] != "passed":
        print(records[0].get("output_tail", ""), file=sys.stderr)
        print("the unmutated tree fails its tests: fix that first", file=sys.stderr)
        return 2
    for mutation in chosen:
        records.append(check(mutation, args.timeout))
        r = records[-1]
        print(f"{r['name']}: {r['outcome']} {r['caught_by']} ({r['seconds']:.0f} s)", flush=True)
    if len(chosen) < len(MUTATIONS):  # a subset: the others keep their rows from the last report
        records = merge_with_previous(records, args.out / "mutation_report.json")
    write_report(records, args.out, time.perf_counter() - start, " ".join(sys.argv[1:] if argv is None else argv))
    print(f"report written to {args.out / 'mutation_report.md'}")
    return 0 if all(r["outcome"] == "caught" or r["outcome"].startswith("survives on CPU") for r in records[1:]) else 1


if __name__ == "__main__":
    sys.exit(main())
