"""Which weight map to train with on instance masks: w0, sigma and the target gap width, measured
by what `predict --instances` makes of the trained network on held-out images.

    unet-jax train --preset instances --seed 0 --run-dir runs/paper-s0          # the paper's 10, 5 px, 1 px
    unet-jax train --preset instances --seed 0 --weight-w0 20 --run-dir runs/w0-20-s0   # and --seed 1, ...
    python -m benchmarks.weight_map_tuning --out benchmarks/results/instances-cpu-intel-xeon runs/*

Every run is scored on its own held-out images (predicted once, whole, as `unet-jax evaluate` does)
with the shipped post-processing defaults (`InstanceRule()`: growth distance, minimum object size,
extent threshold of `unet_jax.inference.instance_defaults`) and with none (the raw components). Runs
are grouped by their (w0, sigma, gap width) from config.json; each setting gets its runs' figures and
their mean and spread (min..max). `--stem` names the output files, so the same script scores a
separate set of runs (e.g. new seeds, for a test on images no choice was made on).
"""

from __future__ import annotations

import argparse
import shlex
from pathlib import Path

from benchmarks.devices import write_measurement
from benchmarks.instance_tuning import held_out_predictions, score, spread, spread_text, versions_line
from unet_jax.inference.instances import InstanceRule
from unet_jax.training.run_dir import RunDir

RAW = InstanceRule(growth_distance=0.0, min_size=0, extent_threshold=0.0)  # connected components as predicted
FIGURES = ("f1", "pixel_iou", "mean_matched_iou", "raw_f1", "raw_pixel_iou")


def setting_of(run_dir: Path) -> tuple[float, float, int]:
    train, _ = RunDir(run_dir).load_config()
    if train.loss != "weighted-ce":
        raise SystemExit(f"{run_dir}: trained with --loss {train.loss}; this compares weight maps (--loss weighted-ce)")
    return train.weight_w0, train.weight_sigma, train.target_gap_width


def score_run(run_dir: Path) -> dict:
    probabilities, instances, config = held_out_predictions(run_dir)
    shipped, raw = score(InstanceRule(), probabilities, instances), score(RAW, probabilities, instances)
    return {**config, **shipped, "raw_f1": raw["f1"], "raw_pixel_iou": raw["pixel_iou"]}


def to_markdown(report: dict) -> str:
    rule = report["rule"]
    lines = [
        f"# {report['title']}: {report['device']['name']}",
        "",
        versions_line(report),
        f"Each run scored on its own held-out images, predicted once. Grown: the shipped defaults (growth "
        f"{rule['growth_distance']:g} px, min object size {rule['min_size']} px, extent threshold {rule['extent_threshold']:g}); "
        "raw: the connected components as predicted. Mean over the runs (min..max).",
        "",
        "| w0 | sigma (px) | gap (px) | seeds | instance F1 (grown) | pixel IoU (grown) | mean IoU of matched objects "
        "| instance F1 (raw) | pixel IoU (raw) |",
        "| ---: | ---: | ---: | :--- | ---: | ---: | ---: | ---: | ---: |",
    ]
    for row in report["result"]:
        seeds = ", ".join(str(run["seed"]) for run in row["per_run"].values())
        cells = [spread_text(row[k]) for k in FIGURES]
        lines.append(f"| {row['w0']:g} | {row['sigma']:g} | {row['gap_width']} | {seeds} | " + " | ".join(cells) + " |")
    lines += ["", "Per run:", "", "| run | seed | w0 | sigma | gap | F1 (grown) | pixel IoU (grown) | F1 (raw) | pixel IoU (raw) |",
              "| :--- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |"]
    for row in report["result"]:
        for run, figures in row["per_run"].items():
            lines.append(f"| `{run}` | {figures['seed']} | {row['w0']:g} | {row['sigma']:g} | {row['gap_width']} | "
                         + " | ".join(f"{figures[k]:.3f}" for k in ("f1", "pixel_iou", "raw_f1", "raw_pixel_iou")) + " |")
    lines += ["", f"Command: `{report['command']}`", ""]
    return "\n".join(lines)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("runs", nargs="+", type=Path, help="run directories of --loss weighted-ce runs on instance masks")
    parser.add_argument("--out", type=Path, required=True, help="folder for <stem>.{json,md}")
    parser.add_argument("--stem", default="weight_map_tuning", help="name of the output files (default: weight_map_tuning)")
    parser.add_argument("--title", default="The weight map's w0, sigma and target gap", help="the markdown's heading")
    args = parser.parse_args(argv)
    settings: dict[tuple, dict] = {}
    for run in args.runs:
        settings.setdefault(setting_of(run), {})[str(run)] = score_run(run)
    rows = []
    for (w0, sigma, gap_width), per_run in sorted(settings.items()):
        row = {"w0": w0, "sigma": sigma, "gap_width": gap_width, "per_run": per_run}
        row.update({key: spread([r[key] or 0.0 for r in per_run.values()]) for key in FIGURES})
        rows.append(row)
    shipped = InstanceRule()
    rule = {"growth_distance": shipped.growth_distance, "min_size": shipped.min_size, "extent_threshold": shipped.extent_threshold}
    title = f" --title {shlex.quote(args.title)}" if args.title != parser.get_default("title") else ""
    command = f"python -m benchmarks.weight_map_tuning --out {args.out} --stem {args.stem}{title} " + " ".join(map(str, args.runs))
    write_measurement(args.out, args.stem, rows, to_markdown, title=args.title, rule=rule, command=command)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
