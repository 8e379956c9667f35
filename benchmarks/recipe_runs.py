"""The README's recipe comparison: does each piece of the paper's recipe earn its place?

    python -m benchmarks.recipe_runs --out benchmarks/results/recipe-cpu-amd-epyc [--only NAME ...]

From one seed, on the built-in touching cells (`--cells-layout touching`), the demo network and
schedule, each run a fresh `unet-jax train` process as a user runs it:
  - ce             plain cross-entropy on the class mask
  - ce+elastic     the same with the paper's elastic deformation
  - weighted       --loss weighted-ce: the one-pixel gap between touching cells and the weight map
  - weighted+elastic
  - ce+gap         cross-entropy on the gapped target without the weight map (what the gap alone does)
  - few-images     weighted-ce with elastic deformation from 2 training images
  - few-images-no-elastic   the same without elastic deformation
  - weighted+elastic-2.2px  elastic deformation scaled to the demo's 124-px tiles (10 px x 124 / 572)
Every run is validated on the same 8 held-out touching-cells images, predicted whole. Writes
`recipe.{json,md}` (instance F1, touching pairs kept apart, pixel IoU, wall clock per run) and
keeps each run's `summary.json` (and, for weighted runs, `weight_map.png`) under `per-run/NAME/`.
"""

from __future__ import annotations

import argparse
import json
import shutil
import tempfile
from pathlib import Path

from benchmarks.demo_run import run_cli
from benchmarks.devices import write_measurement

COMMON = ["train", "--preset", "demo", "--cells-layout", "touching", "--seed", "0", "--no-progress"]
RUNS = {
    "ce": [],
    "ce+elastic": ["--elastic"],
    "weighted": ["--loss", "weighted-ce"],
    "weighted+elastic": ["--loss", "weighted-ce", "--elastic"],
    "ce+gap": ["--target-gap"],
    "few-images": ["--loss", "weighted-ce", "--elastic", "--cells-train-images", "2"],
    "few-images-no-elastic": ["--loss", "weighted-ce", "--cells-train-images", "2"],
    "weighted+elastic-2.2px": ["--loss", "weighted-ce", "--elastic", "--elastic-sigma", "2.2"],
}
KEPT = ("summary.json", "config.json", "weight_map.png", "predictions.png")


def run_one(name: str, scratch: Path, keep: Path) -> dict:
    run_dir = scratch / name
    completed, wall_s = run_cli([*COMMON, *RUNS[name], "--run-dir", str(run_dir)], f"run {name}")
    keep.mkdir(parents=True, exist_ok=True)
    for file in KEPT:
        if (run_dir / file).is_file():
            shutil.copy(run_dir / file, keep / file)
    (keep / "log.txt").write_text(completed.stdout)
    whole = json.loads((run_dir / "summary.json").read_text())["validation_whole_images"]
    return {"command": "unet-jax " + " ".join(COMMON + RUNS[name]), "wall_s": wall_s, "whole_images": whole}


def to_markdown(report: dict) -> str:
    lines = [
        f"# The paper's recipe on touching cells: {report['device']['name']}",
        "",
        f"Versions: {', '.join(f'{k} {v}' for k, v in report['versions'].items() if v)}; measured {report['measured_utc']}.",
        "Held out: 8 whole 256x256 touching-cells images (the same for every run).",
        "",
        "| run | instance F1 | precision / recall | touching pairs kept apart | pixel IoU | wall clock |",
        "| --- | ---: | ---: | ---: | ---: | ---: |",
    ]
    for name, r in report["result"].items():
        whole, objects = r["whole_images"], r["whole_images"]["instances"]
        lines.append(
            f"| `{name}` | {objects['f1']:.3f} | {objects['precision']:.3f} / {objects['recall']:.3f} | "
            f"{objects['split_pairs']} of {objects['touching_pairs']} | {whole['iou']:.3f} | {r['wall_s']:.0f} s |"
        )
    lines += ["", "Commands:", ""] + [f"- `{name}`: `{r['command']}`" for name, r in report["result"].items()] + [""]
    return "\n".join(lines)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, required=True, help="folder for recipe.{json,md} and per-run/")
    parser.add_argument("--only", nargs="+", choices=sorted(RUNS), help="run these only (default: all, in order)")
    args = parser.parse_args(argv)
    previous = args.out / "recipe.json"
    results = json.loads(previous.read_text())["result"] if previous.is_file() else {}
    with tempfile.TemporaryDirectory(prefix="unet-recipe-") as tmp:
        for name in args.only or RUNS:
            results[name] = run_one(name, Path(tmp), args.out / "per-run" / name)
            print(f"{name}: {json.dumps(results[name]['whole_images'].get('instances'))}", flush=True)
            ordered = {k: results[k] for k in RUNS if k in results}
            write_measurement(args.out, "recipe", ordered, to_markdown)  # after every run: a cut-off keeps what ran
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
