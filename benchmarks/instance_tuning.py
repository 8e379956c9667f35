"""How `predict --instances` should grow the objects: growth distance, minimum object size and
extent threshold, measured on the held-out images of trained runs.

    unet-jax train --preset instances --seed 0 --run-dir runs/instances-s0   # and --seed 1, ...
    python -m benchmarks.instance_tuning --out benchmarks/results/instances-cpu-intel-xeon runs/instances-s0 runs/instances-s1

Each run's held-out images (the built-in cells its config.json names, or its data) are predicted
once, whole, as `unet-jax evaluate` does; every (growth distance, minimum size, extent threshold)
of the grid then labels the same class maps and probabilities (`unet_jax.inference.instances`), and is scored as `evaluate` scores
the grown instances: instance F1 at IoU 0.5, the mean IoU of matched objects, and the pixel IoU
of the grown foreground. Post-processing only: the runs are not retrained. Writes
`instance_tuning.{json,md}`: per setting, each run's figures and their mean and spread (min..max).
"""

from __future__ import annotations

import argparse
import itertools
from pathlib import Path

import numpy as np

from benchmarks.devices import write_measurement
from unet_jax.inference.instance_metrics import add_instance_counts, instance_scores, match_labels
from unet_jax.inference.instances import InstanceRule
from unet_jax.inference.metrics import add_counts, class_counts, scores_from_counts
from unet_jax.inference.predictor import Predictor, predict_probabilities
from unet_jax.training.run_dir import RunDir
from unet_jax.training.sampling import sources_of

GROWTH_DISTANCES = (0.0, 2.0, 3.0, 4.0, 6.0)
MIN_SIZES = (0, 16, 32)
EXTENT_THRESHOLDS = (0.0, 0.02, 0.05, 0.1, 0.2)


def held_out_predictions(run_dir: Path) -> tuple[list[np.ndarray], list[np.ndarray], dict]:
    """(foreground probabilities float32 [H, W], true instance ids [H, W]) of the run's held-out images, and its config."""
    train, _ = RunDir(run_dir).load_config()
    samples = sources_of(train)[1].read()
    if any(ids is None for ids in samples.instances):
        raise SystemExit(f"{run_dir}: its held-out masks hold class indices; tuning needs instance masks")
    predictor = Predictor.from_weights(run_dir)
    probabilities = [predict_probabilities(predictor, predictor.normalize(image), batch_size=train.batch_size)
                     for image in samples.images]  # [H, W, 2] each
    return [p[..., 1] for p in probabilities], list(samples.instances), {"seed": train.seed, "preset": train.preset,
                                                                         "loss": train.loss}


def score(rule: InstanceRule, probabilities, instances) -> dict:
    pixels, objects = None, None
    for probability, ids in zip(probabilities, instances):
        grown = rule.labels(probability > 0.5, probability)  # the class map of a 2-class model, up to rounding at 0.5
        pixels = add_counts(pixels, class_counts((grown > 0).astype(np.int64), (ids > 0).astype(np.int64), 2))
        objects = add_instance_counts(objects, match_labels(grown, ids))
    found = instance_scores(objects)
    return {"f1": found["f1"], "precision": found["precision"], "recall": found["recall"],
            "mean_matched_iou": found["mean_matched_iou"], "split_pairs": found["split_pairs"],
            "touching_pairs": found["touching_pairs"], "pixel_iou": scores_from_counts(pixels)["iou"]}


def spread(values: list[float]) -> dict:
    return {"mean": float(np.mean(values)), "min": float(np.min(values)), "max": float(np.max(values))}


def spread_text(figure: dict) -> str:
    """A `spread` as a table cell: mean (min..max)."""
    return f"{figure['mean']:.3f} ({figure['min']:.3f}..{figure['max']:.3f})"


def versions_line(report: dict) -> str:
    return f"Versions: {', '.join(f'{k} {v}' for k, v in report['versions'].items() if v)}; measured {report['measured_utc']}."


def to_markdown(report: dict) -> str:
    runs = ", ".join(f"`{run}` (seed {config['seed']}, {config['loss']})" for run, config in report["runs"].items())
    lines = [
        f"# Growing predicted objects back over the gap: {report['device']['name']}",
        "",
        versions_line(report),
        f"Runs: {runs}; each scored on its own "
        "held-out images, predicted once; mean over the runs (min..max).",
        "",
        "| growth distance | min object size | extent threshold | instance F1 | pixel IoU (grown) | mean IoU of matched objects |",
        "| ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for row in report["result"]:
        cells = [spread_text(row[k]) for k in ("f1", "pixel_iou", "mean_matched_iou")]
        lines.append(f"| {row['growth_distance']:g} | {row['min_size']} | {row['extent_threshold']:g} | " + " | ".join(cells) + " |")
    lines += ["", f"Command: `{report['command']}`", ""]
    return "\n".join(lines)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("runs", nargs="+", type=Path, help="run directories of trained runs on instance masks")
    parser.add_argument("--out", type=Path, required=True, help="folder for instance_tuning.{json,md}")
    args = parser.parse_args(argv)
    predicted = {str(run): held_out_predictions(run) for run in args.runs}
    rows = []
    for growth, min_size, extent in itertools.product(GROWTH_DISTANCES, MIN_SIZES, EXTENT_THRESHOLDS):
        rule = InstanceRule(growth, min_size, extent)
        per_run = {run: score(rule, probabilities, ids) for run, (probabilities, ids, _) in predicted.items()}
        row = {"growth_distance": growth, "min_size": min_size, "extent_threshold": extent, "per_run": per_run}
        for key in ("f1", "pixel_iou", "mean_matched_iou"):
            row[key] = spread([r[key] or 0.0 for r in per_run.values()])
        rows.append(row)
    command = "python -m benchmarks.instance_tuning --out " + " ".join([str(args.out), *map(str, args.runs)])
    write_measurement(args.out, "instance_tuning", rows, to_markdown, runs={r: c for r, (_, _, c) in predicted.items()},
                      command=command)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
