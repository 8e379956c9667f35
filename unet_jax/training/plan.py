"""The run plan: every choice of a training run, settled once, before any work, and recorded.

`plan_new_run` turns the options of a new run (the command line's, kept nested: model, training,
compute) into a frozen `RunPlan`: the architecture (from the `--init-weights` file, read here
once), the preset, the data (listed, its shards settled), the batch groups and the mesh.
`plan_resumed_run` does the same from a run directory's `config.json` and the changes a resume
may make. Nothing the plan holds is decided again later; `config.json` records all of it
(`RunDir.save_config`: the TrainConfig, the compute options as asked, and `RunPlan.settled`).

A new run on a data folder whose every training mask holds instance labels, with no `--loss`
given and a preset that trains with plain cross-entropy, takes the paper's weighted
cross-entropy (`recipe_on_instance_masks`): without the weight map, touching objects merge.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any, Mapping, Optional

import jax

from unet_jax.config import ConfigError, TrainConfig
from unet_jax.data.source import Source
from unet_jax.model.compute import RESUMABLE_COMPUTE_FIELDS, Compute
from unet_jax.model.unet import default_batch_groups
from unet_jax.runtime.mesh import DataParallel, check_batch_size
from unet_jax.runtime.processes import is_primary
from unet_jax.training.losses import needs_weights
from unet_jax.training.presets import resolve
from unet_jax.training.run_dir import PATH_FIELDS, RunDir
from unet_jax.training.sampling import settle_shards, sources_of
from unet_jax.weights.io import WeightsFile, read_weights_file
from unet_jax.weights.start_from import with_init_architecture


@dataclasses.dataclass(frozen=True)
class RunPlan:
    train: TrainConfig  # preset and options applied, the architecture and data_shards settled
    compute: Compute  # as asked
    batch_groups: int  # settled for this mesh and network
    parallel: DataParallel  # the mesh
    sources: tuple[Source, Source] = dataclasses.field(compare=False)  # (train, validation), listed, not yet read
    init_weights: Optional[WeightsFile] = dataclasses.field(default=None, compare=False)  # the file, read once
    changes: Optional[dict[str, tuple]] = None  # None: a new run; else a resume's {field: (old, new)}
    loss_from_masks: bool = False  # the loss is the paper's because every training mask holds instance labels

    def loss_note(self) -> str:
        """What the line that prints the preset says about the loss."""
        if self.loss_from_masks:
            return (f"loss {self.train.loss} (the paper's weight map: every training mask holds instance labels; "
                    "--loss ce for plain cross-entropy)")
        return f"loss {self.train.loss}"

    @property
    def resumed(self) -> bool:
        return self.changes is not None

    def settled(self) -> dict:
        """What config.json records beside the TrainConfig and the compute options as asked."""
        return {"batch_groups": self.batch_groups, "devices": self.parallel.device_count, "fsdp": self.parallel.fsdp,
                "processes": jax.process_count(), "loss_from_masks": self.loss_from_masks}


def plan_new_run(train: TrainConfig, compute: Optional[Compute] = None, parallel: Optional[DataParallel] = None,
                 init_weights: Optional[WeightsFile] = None) -> RunPlan:
    """The plan of a new run of `train`; `parallel`: the devices (default: all). `init_weights`:
    the file of `train.init_weights`, if already read (read here otherwise)."""
    train = with_absolute_paths(train, Path.cwd())
    if train.init_weights is not None and init_weights is None:
        init_weights = read_weights_file(train.init_weights)
    return _settle(train, compute or Compute(), parallel or DataParallel.create(), init_weights, changes=None)


def plan_from_options(preset: str, options: Mapping[str, Mapping[str, Any]], parallel: Optional[DataParallel] = None) -> RunPlan:
    """A new run from the command line's options, nested as {"model": {...}, "training": {...},
    "compute": {...}} (only what was given). The `--init-weights` file is read here, once: where it
    says its architecture, the run takes it, and model options that contradict it are a ConfigError."""
    flat, weights = with_init_architecture({**options.get("model", {}), **options.get("training", {})})
    plan = plan_new_run(resolve(preset, flat), Compute(**options.get("compute", {})), parallel, weights)
    if "loss" in flat or not recipe_on_instance_masks(plan):
        return plan
    return dataclasses.replace(plan, train=dataclasses.replace(plan.train, loss=RECIPE_LOSS), loss_from_masks=True)


RECIPE_LOSS = "weighted-ce"  # the paper's loss, for instance masks


def recipe_on_instance_masks(plan: RunPlan) -> bool:
    """Whether a run whose loss nobody chose should take the paper's: it trains on a data folder
    (the built-in cells keep the preset's choice; `--preset instances` is theirs), with plain
    cross-entropy, and every training mask holds instance labels (read here, the masks only)."""
    return plan.train.data is not None and plan.train.loss == "ce" and plan.sources[0].all_instance_masks()


def plan_resumed_run(run_dir, options: Optional[Mapping[str, Mapping[str, Any]]] = None,
                     parallel: Optional[DataParallel] = None) -> RunPlan:
    """The plan that continues the run in `run_dir`: its config.json with the changes a resume may
    make (`TrainConfig.resumed_with`, and --batch-groups), nested as for `plan_from_options`."""
    run = RunDir(run_dir)
    if is_primary():  # the others read config.json while process 0 may already hold the directory's lock
        run.check_resumable()
    train, compute = run.load_config()
    options = options or {}
    requested = _absolute_options({**options.get("model", {}), **options.get("training", {})}, Path.cwd())
    train, changes = train.resumed_with(requested)
    asked = dict(options.get("compute", {}))
    refused = sorted(k for k, v in asked.items() if k not in RESUMABLE_COMPUTE_FIELDS and getattr(compute, k) != v)
    if refused:
        flags = ", ".join("--" + k.replace("_", "-") for k in refused)
        allowed = ", ".join("--" + k.replace("_", "-") for k in RESUMABLE_COMPUTE_FIELDS)
        raise ConfigError(f"a resumed run keeps how its network computes, so {flags} can't change; of these options a "
                          f"resumed run may change only {allowed}. Fix: start a new run (another --run-dir) for the rest")
    changes.update({k: (getattr(compute, k), v) for k, v in asked.items() if getattr(compute, k) != v})
    compute = dataclasses.replace(compute, **asked)
    return _settle(train, compute, parallel or DataParallel.create(), None, changes)


def unused_options(given: Mapping[str, Any], train: TrainConfig) -> list[str]:
    """Notes on the training options `given` (by field name) that the run of `train` will not use, or
    that measure nothing: each was accepted without a word."""
    notes = []
    if "momentum" in given and train.optimizer != "sgd":
        notes.append(f"--momentum is used by --optimizer sgd only; this run uses {train.optimizer}")
    if "elastic_sigma" in given and not train.elastic:
        notes.append("--elastic-sigma has no effect without --elastic")
    weight_map = sorted("--" + k.replace("_", "-") for k in given if k in ("weight_w0", "weight_sigma"))
    if weight_map and not needs_weights(train.loss):
        notes.append(f"{', '.join(weight_map)}: options of the separation weight map, unused without --loss weighted-ce")
    if "target_gap_width" in given and not train.separates_touching:
        notes.append("--target-gap-width has no effect without --target-gap or --loss weighted-ce")
    cells = sorted("--" + k.replace("_", "-") for k in given if k.startswith("cells_"))
    if cells and train.data is not None:
        notes.append(f"{', '.join(cells)}: options of the built-in cells, unused with --data")
    if "val_fraction" in given and train.val_data is not None:
        notes.append("--val-fraction is unused with --val-data")
    if train.data is not None and train.val_data is not None and Path(train.data).resolve() == Path(train.val_data).resolve():
        notes.append("--val-data is --data: the validation scores will measure the training images, not held-out ones")
    return notes


def small_images(plan: RunPlan) -> list[str]:
    """A note where images are smaller than the label tile (a 1x1 image was taken without a word): each
    tile of one is mostly its mirror image."""
    label = plan.train.label_size
    small = [(name, size) for source in plan.sources for name, size in zip(source.names, source.sizes) if min(size) < label]
    if not small:
        return []
    name, (height, width) = min(small, key=lambda item: min(item[1]))
    return [f"{len(small)} image(s) are smaller than the label tile of {label}x{label} (the smallest: {name}, {height}x{width}); "
            "their tiles are mostly mirrored copies of them"]


def with_absolute_paths(train: TrainConfig, base: Path) -> TrainConfig:
    """`train` with its file and folder options (`PATH_FIELDS`) made absolute against `base`: what
    config.json records, so that a resume started from another folder reads the same files."""
    return dataclasses.replace(train, **_absolute_options({k: getattr(train, k) for k in PATH_FIELDS}, base))


def _absolute_options(options: Mapping[str, Any], base: Path) -> dict:
    """`options` with the values of `PATH_FIELDS` resolved against `base`: the same folder given once
    relative and once absolute is then the same value, not a change."""
    return {k: str((base / v).resolve()) if k in PATH_FIELDS and v is not None else v for k, v in options.items()}


def _settle(train: TrainConfig, compute: Compute, parallel: DataParallel, init_weights: Optional[WeightsFile],
            changes: Optional[dict]) -> RunPlan:
    check_batch_size(train.batch_size, parallel.device_count)
    compute.check_norm(train.model.norm)
    sources = sources_of(train)
    train = dataclasses.replace(train, data_shards=settle_shards(train, len(sources[0])))
    groups = compute.batch_groups or default_batch_groups(parallel.device_count, train.model.norm)
    return RunPlan(train, compute, groups, parallel, sources, init_weights, changes)

