"""`unet-jax`: train, plan, convert, evaluate, predict, export, inspect. Thin: the logic lives in library modules.

Expected failures (a bad option, a file that can't be read or may not be written, a run
directory in use) are the project's `UNetError`s: printed as one message naming the path and
the fix, exit status 2. Ctrl-C stops with exit status 130 and says what was kept. Anything
else is a bug, and keeps its traceback.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import sys
from pathlib import Path
from typing import Callable, Optional, Sequence

from unet_jax.config import (
    CELLS_LAYOUTS,
    DTYPES,
    LOSSES,
    NORMS,
    OPTIMIZERS,
    PADDINGS,
    UPSAMPLES,
    ConfigError,
    TrainConfig,
    UNetConfig,
    UNetError,
)
from unet_jax.inference.formats import MASK_FORMATS
from unet_jax.inference.instance_defaults import DEFAULT_EXTENT_THRESHOLD, DEFAULT_GROWTH_DISTANCE, DEFAULT_MIN_SIZE
from unet_jax.inference.tile_plan import DEFAULT_BATCH_SIZE
from unet_jax.model.compute import REMAT_POLICIES, Compute
from unet_jax.runtime import hugepages, xla_cpu
from unet_jax.training.errors import OutOfMemory, TrainingInterrupted
from unet_jax.training.presets import PRESETS
from unet_jax.weights.namings import DIRECTIONS, NAMINGS

EXIT_ERROR = 2
EXIT_INTERRUPTED = 130  # 128 + SIGINT, as shells report a Ctrl-C

ARCHITECTURE_FIELDS = dataclasses.fields(UNetConfig)
TRAINING_FIELDS = [f for f in dataclasses.fields(TrainConfig) if f.name not in ("preset", "model")]
COMPUTE_FIELDS = dataclasses.fields(Compute)

# Options whose values come from a fixed set: the library's own tuples ("none" spells norm=None).
CHOICES = {
    "padding": PADDINGS,
    "upsample": UPSAMPLES,
    "norm": tuple("none" if norm is None else norm for norm in NORMS),
    "optimizer": OPTIMIZERS,
    "loss": LOSSES,
    "dtype": DTYPES,
    "remat": REMAT_POLICIES,
    "cells_layout": CELLS_LAYOUTS,
}


# ------------------------------------------------------------------- commands
def cmd_train(args) -> int:
    """The options, nested as the plan takes them, settled into one plan before any work; its memory
    checked against the device's budget before compiling (--plan: printed instead); then the run."""
    from unet_jax.training.loop import run

    plan, run_dir = _run_plan(args)
    if args.plan or not args.no_memory_check:
        from unet_jax.training.memory_check import RefusedInEveryProcess, check_run

        check = check_run(plan)
        if args.plan:
            print(check.report())
            return 0
        if not check.fits:
            raise RefusedInEveryProcess(check.refusal())
    try:
        run(plan, run_dir, progress=not args.no_progress)
    except (MemoryError, RuntimeError) as error:
        from unet_jax.training.report import is_out_of_memory, out_of_memory_message
        from unet_jax.training.run_dir import RunDir

        if not is_out_of_memory(error):
            raise
        raise OutOfMemory(out_of_memory_message(error, RunDir(run_dir))) from None
    return 0


def cmd_plan(args) -> int:
    """`unet-jax plan`: the train step's estimated memory for the options `train` would take, and exit."""
    from unet_jax.training.memory_check import check_run

    print(check_run(_run_plan(args)[0]).report())
    return 0


def _run_plan(args):
    """(plan, run directory) of `train`'s options: a new run's, or a resumed one's."""
    from unet_jax.training.loop import default_run_dir
    from unet_jax.training.plan import plan_from_options, plan_resumed_run, small_images, unused_options

    options = {"model": _given(args, ARCHITECTURE_FIELDS), "training": _given(args, TRAINING_FIELDS),
               "compute": _given(args, COMPUTE_FIELDS)}
    if args.resume:
        if args.preset is not None:
            raise ConfigError("--preset starts a new run; a resumed run keeps the config it was started with")
        return plan_resumed_run(args.resume, options, _data_parallel(args)), args.resume
    plan = plan_from_options(args.preset or "demo", options, _data_parallel(args))
    for note in [*unused_options(options["training"], plan.train), *small_images(plan)]:
        print(f"unet-jax {args.command}: note: {note}", file=sys.stderr)
    return plan, args.run_dir or default_run_dir(plan.train)


def _data_parallel(args):
    """Join the other processes when asked to (flags, JAX_* variables, --distributed), then the devices to use."""
    from unet_jax.runtime.mesh import DataParallel
    from unet_jax.runtime.processes import ENV_COORDINATOR, ENV_NUM_PROCESSES, ENV_PROCESS_ID, initialize

    given = (args.coordinator_address, args.num_processes, args.process_id)
    if args.distributed or any(v is not None for v in given) or {ENV_COORDINATOR, ENV_NUM_PROCESSES, ENV_PROCESS_ID} & set(os.environ):
        initialize(*given, timeout_s=args.coordinator_timeout)
    return DataParallel.create(args.devices, fsdp=args.fsdp)


def cmd_convert(args) -> int:
    from unet_jax.weights.convert import convert

    direction, config = convert(args.src, args.dst, direction=args.direction, config=_given(args, ARCHITECTURE_FIELDS),
                                naming=args.naming, overwrite=args.overwrite, report=print)
    print(f"{args.src} -> {args.dst} ({direction}, {config})")
    return 0


def cmd_evaluate(args) -> int:
    from unet_jax.data import data_sources
    from unet_jax.inference.evaluate import evaluate
    from unet_jax.runtime.safe_files import check_destination, write_atomically

    if args.output:  # checked before the work, written after it
        check_destination(args.output, args.overwrite, sources=[args.weights, *data_sources(args.data)])
    result = evaluate(args.weights, args.data, config=_given(args, ARCHITECTURE_FIELDS), tile_size=args.tile_size,
                      batch_size=args.batch_size, devices=args.devices, instances=_instance_rule(args))
    line = json.dumps(result)
    print(line)
    if args.output:
        write_atomically(Path(args.output), (line + "\n").encode(), overwrite=args.overwrite)
    return 0


def cmd_predict(args) -> int:
    from unet_jax.inference.predictor import Predictor, predict_files

    def report(record: dict) -> None:
        print(json.dumps(_jsonable(record)) if args.json else _describe(record), flush=True)

    rule = _instance_rule(args) if args.instances else None  # a bad rule fails before the weights are read
    predictor = Predictor.from_weights(args.weights, config=_given(args, ARCHITECTURE_FIELDS), devices=args.devices)
    predict_files(predictor, args.images, args.output, save_probabilities=args.probabilities, tile_size=args.tile_size,
                  batch_size=args.batch_size, mask_format=args.format, overwrite=args.overwrite, on_written=report,
                  instances=rule)
    return 0


def cmd_export(args) -> int:
    from unet_jax.export import export

    description = export(args.weights, args.out, args.format, tile_size=args.tile_size, config=_given(args, ARCHITECTURE_FIELDS),
                         overwrite=args.overwrite, check=not args.no_check, report=print)
    image, logits = description["input"]["shape"], description["output"]["shape"]
    print(f"{args.weights} -> {args.out} ({args.format}, image {image} -> logits {logits}); described in {args.out}.json")
    return 0


def cmd_inspect(args) -> int:
    from unet_jax.data.inspect import describe_report, inspect_folder

    report = inspect_folder(args.data)
    print(json.dumps(report) if args.json else describe_report(report))
    return EXIT_ERROR if report["errors"] else 0

def _instance_rule(args):
    from unet_jax.inference.instances import InstanceRule

    return InstanceRule(args.growth_distance, args.min_object_size, args.extent_threshold)


def _describe(record: dict) -> str:
    """One line per predicted image: "a.png: 512x512 -> out/a_mask.png, out/a_probs.npy"."""
    size = f"{record['height']}x{record['width']}"
    size = f"{record['pages']} pages of {size}" if record["pages"] > 1 else size
    outputs = ", ".join(str(record[k]) for k in ("mask", "probabilities", "instances") if k in record)
    return f"{record['image']}: {size} -> {outputs}"


def _jsonable(record: dict) -> dict:
    return {k: str(v) if isinstance(v, Path) else v for k, v in record.items()}


def _given(args, fields) -> dict:
    """The config fields the user set on the command line ("none" spells norm=None)."""
    values = {f.name: getattr(args, f.name, None) for f in fields}
    values = {k: v for k, v in values.items() if v is not None}
    if values.get("norm") == "none":
        values["norm"] = None
    return values


# --------------------------------------------------------------------- parser
def _show(value) -> str:
    if isinstance(value, bool):
        return "on" if value else "off"
    return "none" if value is None else str(value)


def _preset_default(field: dataclasses.Field) -> str:
    """A field's value in each preset: "16" if they agree, "demo 8, seed 16, paper 1" if not."""
    values = {name: getattr(cfg.model if field in ARCHITECTURE_FIELDS else cfg, field.name) for name, cfg in PRESETS.items()}
    if len(set(map(_show, values.values()))) == 1:
        return _show(next(iter(values.values())))
    return ", ".join(f"{name} {_show(value)}" for name, value in values.items())


def _field_default(field: dataclasses.Field) -> str:
    return _show(field.default)


def _stored_default(field: dataclasses.Field) -> str:
    return f"what the weights file stores; else {_show(field.default)}"


def _add_field_options(group, fields, default: Callable[[dataclasses.Field], str]) -> None:
    """One --option per dataclass field, defaulting to None (= not given); the help is the field's own."""
    for field in fields:
        flag = "--" + field.name.replace("_", "-")
        help_text = f"{field.metadata['help']} (default: {default(field)})"
        if isinstance(field.default, bool):
            group.add_argument(flag, action=argparse.BooleanOptionalAction, default=None, help=help_text)
            continue
        kind = type(field.default) if field.default is not None else str
        group.add_argument(flag, type=kind, choices=CHOICES.get(field.name), default=None, help=help_text)


class _Version(argparse.Action):
    """`--version`, its versions looked up only when asked for (importlib.metadata is slow to import)."""

    def __init__(self, option_strings, dest, help=None):
        super().__init__(option_strings, dest, nargs=0, help=help)

    def __call__(self, parser, namespace, values, option_string=None):
        from importlib.metadata import version

        import unet_jax

        print(f"unet-jax {unet_jax.__version__} (jax {version('jax')}, flax {version('flax')})")  # stdout, as argparse's own
        parser.exit()


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="unet-jax", description=__doc__.split("\n\n")[0])
    parser.add_argument("--version", action=_Version, help="show the versions of unet-jax, jax and flax and exit")
    commands = parser.add_subparsers(dest="command", required=True)

    train = commands.add_parser("train", help="train a U-Net (default: the CPU demo on built-in synthetic cells)")
    train.add_argument("--no-progress", action="store_true", help="no progress bar (default: off)")
    train.add_argument("--plan", action="store_true", help="print the memory plan, as `unet-jax plan`, and exit (default: off)")
    train.add_argument("--no-memory-check", action="store_true",
                       help="run even where the memory plan's estimate exceeds the device's budget, for when the estimate "
                            "is wrong (default: refused, with what would fit)")
    _run_options(train)
    train.set_defaults(run=cmd_train)

    plan = commands.add_parser("plan", help="the train step's estimated peak memory per device for train's options, "
                                            "before compiling, against the device's budget")
    _run_options(plan)
    plan.set_defaults(run=cmd_plan)

    convert = commands.add_parser("convert", help="convert weights: PyTorch .pt/.pth/.safetensors <-> Flax .safetensors")
    convert.add_argument("src", help="the weights to convert (never replaced)")
    convert.add_argument("dst", help="the file to write; .safetensors for Flax, .pt/.pth/.safetensors for PyTorch")
    convert.add_argument("--direction", choices=DIRECTIONS, help="which way to convert (default: from what SRC holds)")
    convert.add_argument("--naming", choices=NAMINGS, default=NAMINGS[0],
                         help="torch key names to write, flax-to-torch; milesial: milesial/Pytorch-UNet's UNet(bilinear=False). "
                              "Read torch-to-flax, the naming is detected (default: %(default)s)")
    convert.add_argument("--overwrite", action="store_true", help="replace DST if it exists (default: off)")
    _add_field_options(convert.add_argument_group("architecture"), ARCHITECTURE_FIELDS, _stored_default)
    convert.set_defaults(run=cmd_convert)

    evaluate = commands.add_parser("evaluate", help="Dice / IoU / pixel accuracy of weights on a data folder")
    evaluate.add_argument("--weights", required=True,
                          help="a run directory, Flax .safetensors or PyTorch .pt/.pth/.safetensors (required)")
    evaluate.add_argument("--data", required=True, help="DIR with images/ and masks/, or an ISBI *-volume.tif (required)")
    evaluate.add_argument("--output", help="also write the JSON line to this file (default: print only)")
    evaluate.add_argument("--overwrite", action="store_true", help="replace --output if it exists (default: off)")
    _tiling_options(evaluate)
    _instance_options(evaluate, "the grown instances scored")
    _add_field_options(evaluate.add_argument_group("architecture"), ARCHITECTURE_FIELDS, _stored_default)
    evaluate.set_defaults(run=cmd_evaluate)

    predict = commands.add_parser("predict", help="segment images of any size with the overlap-tile strategy")
    predict.add_argument("images", nargs="+", metavar="IMAGE", help="PNG or TIFF images; a multi-page TIFF is a stack")
    predict.add_argument("--weights", required=True, help="a run directory, Flax .safetensors or PyTorch weights (required)")
    predict.add_argument("--output", required=True, help="folder for <stem>_mask.png (or .tif) per image (required)")
    predict.add_argument("--probabilities", action="store_true",
                         help="also write class probabilities as <stem>_probs.npy (default: off)")
    predict.add_argument("--instances", action="store_true",
                         help="also write a label image <stem>_instances.tif (uint16, uint32 past 65,535 objects; 0 background): "
                              "the predicted foreground's objects, grown back over the gap; 2-class models only (default: off)")
    _instance_options(predict, "--instances")
    predict.add_argument("--format", choices=sorted(MASK_FORMATS), default="png",
                         help="mask file format; stacks are always TIFF (default: %(default)s)")
    predict.add_argument("--overwrite", action="store_true", help="replace existing outputs (default: off)")
    predict.add_argument("--json", action="store_true", help="print one JSON object per image (default: one line of text)")
    _tiling_options(predict)
    _add_field_options(predict.add_argument_group("architecture"), ARCHITECTURE_FIELDS, _stored_default)
    predict.set_defaults(run=cmd_predict)

    export = commands.add_parser("export", help="write trained weights as ONNX or serialised StableHLO, for other runtimes")
    export.add_argument("weights", help="a run directory, Flax .safetensors or PyTorch weights")
    export.add_argument("out", help="the file to write; OUT.json beside it describes input, output, sizes and normalisation")
    export.add_argument("--format", required=True, metavar="{onnx,stablehlo}",
                        help="onnx: NCHW, through the PyTorch reference (needs the [export] extra); stablehlo: NHWC, "
                             "through jax.export (required)")
    export.add_argument("--tile-size", type=int,
                        help="the input side the file takes, a valid size for the network (default: the run's training "
                             "tile, else the valid size nearest 572)")
    export.add_argument("--overwrite", action="store_true", help="replace OUT and OUT.json if they exist (default: off)")
    export.add_argument("--no-check", action="store_true",
                        help="skip running the written file against Flax on a random batch (default: checked)")
    _add_field_options(export.add_argument_group("architecture"), ARCHITECTURE_FIELDS, _stored_default)
    export.set_defaults(run=cmd_export)

    inspect = commands.add_parser("inspect", help="summarise a data folder and warn about what leads to all-background predictions")
    inspect.add_argument("--data", required=True, help="DIR with images/ and masks/, or an ISBI *-volume.tif (required)")
    inspect.add_argument("--json", action="store_true", help="print one JSON object (default: lines of text)")
    inspect.set_defaults(run=cmd_inspect)
    return parser


def _run_options(parser) -> None:
    """The options of a run: `train` takes them, and `plan` the same, so that one command line serves both."""
    parser.add_argument("--preset", choices=sorted(PRESETS),
                        help="demo: small net, CPU-sized; instances: the demo with the paper's weight map, for instance "
                             "masks; seed: the seed's full net, Adam, batch 16; paper: SGD 0.99, batch 1 (default: demo)")
    where = parser.add_mutually_exclusive_group()
    where.add_argument("--run-dir", help="where the new run is written (default: runs/<preset>-<time>)")
    where.add_argument("--resume", metavar="RUN_DIR",
                       help="continue the run in RUN_DIR from its newest intact checkpoint; --steps, --learning-rate "
                            "and the bookkeeping options may change (default: start a new run)")
    _scale_out_options(parser)
    _add_field_options(parser.add_argument_group("architecture (default: the preset's)"), ARCHITECTURE_FIELDS, _preset_default)
    _add_field_options(parser.add_argument_group("training (default: the preset's)"), TRAINING_FIELDS, _preset_default)
    _add_field_options(parser.add_argument_group("how JAX computes it (the same function)"), COMPUTE_FIELDS, _field_default)


def _scale_out_options(parser) -> None:
    group = parser.add_argument_group("devices and processes (README: Many devices and hosts)")
    group.add_argument("--devices", type=int, help="use the first N devices; --batch-size is split over them (default: all)")
    group.add_argument("--fsdp", action="store_true",
                       help="shard parameters and optimizer state over the devices too, for wide networks (default: replicated)")
    group.add_argument("--distributed", action="store_true",
                       help="join a multi-process run, its settings detected from SLURM, Open MPI or a Cloud TPU slice "
                            "(default: only when one of the next three flags or their JAX_* variables is set)")
    group.add_argument("--coordinator-address", metavar="HOST:PORT",
                       help="process 0's host and a free port, the same for every process (default: $JAX_COORDINATOR_ADDRESS)")
    group.add_argument("--num-processes", type=int, help="how many processes take part (default: $JAX_NUM_PROCESSES)")
    group.add_argument("--process-id", type=int, help="this process's number, 0 .. N-1 (default: $JAX_PROCESS_ID)")
    group.add_argument("--coordinator-timeout", type=_positive_int, default=300, metavar="SECONDS",
                       help="how long to wait for the coordinator and the other processes (default: %(default)s)")


def _positive_int(text: str) -> int:
    """argparse's type for a count that must be at least 1 (0 or less would wait for ever)."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"invalid int value: {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be a positive integer, got {value}")
    return value

def _instance_options(parser, used_by: str) -> None:
    parser.add_argument("--growth-distance", type=float, default=DEFAULT_GROWTH_DISTANCE, metavar="PIXELS",
                        help=f"{used_by}: grow each object over the background up to this many pixels, never into "
                             "another object (default: %(default)s)")
    parser.add_argument("--min-object-size", type=int, default=DEFAULT_MIN_SIZE, metavar="PIXELS",
                        help=f"{used_by}: drop predicted objects smaller than this before growing (default: %(default)s)")
    parser.add_argument("--extent-threshold", type=float, default=DEFAULT_EXTENT_THRESHOLD, metavar="P",
                        help=f"{used_by}: grow only over pixels whose foreground probability exceeds P, in [0, 0.5); "
                             "0: by distance alone (default: %(default)s)")


def _tiling_options(parser) -> None:
    parser.add_argument("--tile-size", type=int,
                        help="input tile side; capped at one tile per image, refused over the memory budget "
                             "(default: the size that fits the budget and computes the fewest pixels)")
    parser.add_argument("--batch-size", type=int, default=DEFAULT_BATCH_SIZE, help="tiles per forward pass (default: %(default)s)")
    parser.add_argument("--devices", type=int, help="split each batch of tiles over the first N devices (default: all)")


def main(argv: Optional[Sequence[str]] = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        xla_cpu.apply()  # before JAX starts: XLA reads its flags once
    except RuntimeError as started:  # main() called in a process that already runs JAX
        print(f"unet-jax {args.command}: note: {started}", file=sys.stderr)
    try:
        return args.run(args)
    except TrainingInterrupted as stop:
        print(f"unet-jax {args.command}: {stop}", file=sys.stderr)
        return EXIT_INTERRUPTED
    except KeyboardInterrupt:
        print(f"unet-jax {args.command}: interrupted; every file written so far is complete", file=sys.stderr)
        return EXIT_INTERRUPTED
    except UNetError as error:
        print(f"unet-jax {args.command}: error: {error}", file=sys.stderr, flush=True)
        if args.command == "train":
            from unet_jax.runtime.processes import leave_if_joined

            leave_if_joined(EXIT_ERROR, error)
        return EXIT_ERROR


if __name__ == "__main__":  # as `unet-jax` (unet_jax/__main__.py), after this module's imports
    hugepages.reexec()
    sys.exit(main())
