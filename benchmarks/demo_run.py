"""The README's demo figures, measured: `unet-jax train --preset demo`, timed end to end.

    python -m benchmarks.demo_run --out benchmarks/results/cpu-amd-epyc

Runs the command as a user does (a fresh process, compilation and the final whole-image
evaluation included), times its wall clock, and writes `demo.{json,md}` with the run's held-out
metrics from its `summary.json`, the last logged training throughput, the machine and versions.
Time it on an otherwise idle machine: the figure is only as good as the machine was quiet.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from benchmarks.devices import write_measurement

COMMAND = ["train", "--preset", "demo", "--no-progress"]


def run_cli(arguments: list, what: str) -> tuple[subprocess.CompletedProcess, float]:
    """`unet-jax ARGUMENTS` in a fresh process, as a user runs it: (its output, wall seconds).
    RuntimeError, with the end of its stderr, if it fails."""
    command = [sys.executable, "-m", "unet_jax", *arguments]
    start = time.perf_counter()
    completed = subprocess.run(command, check=False, capture_output=True, text=True)
    wall_s = time.perf_counter() - start
    if completed.returncode != 0:
        raise RuntimeError(f"{what} failed (exit {completed.returncode}):\n{completed.stderr[-3000:]}")
    return completed, wall_s


def run_demo(run_dir: Path) -> dict:
    _, wall_s = run_cli([*COMMAND, "--run-dir", str(run_dir)], "the demo run")
    summary = json.loads((run_dir / "summary.json").read_text())
    records = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    last_train = [r for r in records if r["split"] == "train"][-1]
    return {"command": "unet-jax " + " ".join(COMMAND), "wall_s": wall_s, "summary": summary,
            "last_train_window": {k: last_train[k] for k in ("step", "steps_per_s", "img_per_s", "data_ms_per_step")}}


def to_markdown(report: dict) -> str:
    r, whole = report["result"], report["result"]["summary"]["validation_whole_images"]
    tiles = report["result"]["summary"]["validation_tiles"]
    window = r["last_train_window"]
    return "\n".join([
        f"# The demo preset: {report['device']['name']}",
        "",
        f"`{r['command']}`, one fresh process; versions: "
        f"{', '.join(f'{k} {v}' for k, v in report['versions'].items() if v)}.",
        "",
        "| quantity | value |",
        "| --- | ---: |",
        f"| wall clock, start to finish | {r['wall_s']:.0f} s |",
        f"| held-out whole images: foreground Dice / IoU ({whole['num_images']} images) | "
        f"{whole['dice']:.3f} / {whole['iou']:.3f} |",
        f"| held-out tiles: foreground Dice | {tiles['dice']:.3f} |",
        f"| training throughput, last logged window (step {window['step']}) | {window['steps_per_s']:.2f} steps/s, "
        f"{window['img_per_s']:.1f} img/s |",
        "",
    ])


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, required=True, help="folder for demo.{json,md}")
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="unet-demo-") as tmp:
        result = run_demo(Path(tmp) / "run")
    write_measurement(args.out, "demo", result, to_markdown)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
