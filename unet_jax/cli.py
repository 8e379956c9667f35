"""`unet-jax`: train, convert, evaluate, predict. Thin: the logic lives in library modules."""

from __future__ import annotations

import argparse
import dataclasses
import datetime
import json
import sys
from pathlib import Path
from typing import Optional, Sequence

from unet_jax.config import DTYPES, LOSSES, NORMS, OPTIMIZERS, PADDINGS, UPSAMPLES, TrainConfig, UNetConfig, UNetError
from unet_jax.presets import PRESETS, resolve

# Options whose values come from a fixed set: the library's own tuples ("none" spells norm=None).
CHOICES = {
    "padding": PADDINGS,
    "upsample": UPSAMPLES,
    "norm": tuple("none" if norm is None else norm for norm in NORMS),
    "optimizer": OPTIMIZERS,
    "loss": LOSSES,
    "dtype": DTYPES,
}


def _add_field_options(parser, fields, exclude=()):
    """One --option per dataclass field, defaulting to None (= keep the preset's value)."""
    for field in fields:
        if field.name in exclude:
            continue
        flag = "--" + field.name.replace("_", "-")
        kind = type(field.default) if field.default is not None else str
        if kind is bool:
            parser.add_argument(flag, action=argparse.BooleanOptionalAction, default=None)
        else:
            parser.add_argument(flag, type=kind, choices=CHOICES.get(field.name), default=None)


def _model_options(parser):
    group = parser.add_argument_group("architecture (UNetConfig fields; default: the preset's / the seed's)")
    _add_field_options(group, dataclasses.fields(UNetConfig))


def _overrides(args, fields) -> dict:
    values = {f.name: getattr(args, f.name, None) for f in fields}
    values = {k: v for k, v in values.items() if v is not None}
    if values.get("norm") == "none":
        values["norm"] = None
    return values


def _config_from_args(args) -> Optional[UNetConfig]:
    overrides = _overrides(args, dataclasses.fields(UNetConfig))
    return UNetConfig(**overrides) if overrides else None


# ------------------------------------------------------------------- commands
def cmd_train(args) -> int:
    from unet_jax.train import train

    fields = [*dataclasses.fields(UNetConfig), *dataclasses.fields(TrainConfig)]
    overrides = _overrides(args, [f for f in fields if f.name not in ("preset", "model")])
    if args.resume:
        run_dir = Path(args.resume)
        config_path = run_dir / "config.json"
        if not config_path.is_file():
            raise FileNotFoundError(f"--resume {run_dir}: no config.json there, so it is not a run directory")
        cfg = TrainConfig.from_dict(json.loads(config_path.read_text()))
        cfg = resolve_from(cfg, overrides)
    else:
        cfg = resolve(args.preset, overrides)
        stamp = datetime.datetime.now().strftime("%Y%m%d-%H%M%S")
        run_dir = Path(args.run_dir or f"runs/{cfg.preset}-{stamp}")
    train(cfg, run_dir, resume=bool(args.resume), progress=not args.no_progress)
    return 0


def resolve_from(cfg: TrainConfig, overrides: dict) -> TrainConfig:
    """Overrides on a resumed run: only what does not change the network or its data."""
    changed = {k for k, v in overrides.items() if getattr(cfg, k, getattr(cfg.model, k, None)) != v}
    allowed = {"steps", "eval_every", "log_every", "checkpoint_every", "keep_checkpoints"}
    if changed - allowed:
        raise ValueError(
            f"--resume continues a run exactly, so only {sorted(allowed)} may change; got {sorted(changed - allowed)}"
        )
    return dataclasses.replace(cfg, **{k: overrides[k] for k in changed})


def cmd_convert(args) -> int:
    from unet_jax.convert import convert

    direction, config = convert(
        args.src, args.dst, direction=args.direction, config=_config_from_args(args), naming=args.naming,
        overwrite=args.overwrite,
    )
    print(f"{args.src} -> {args.dst} ({direction}, {config})")
    return 0


def cmd_evaluate(args) -> int:
    from unet_jax.evaluate import evaluate

    result = evaluate(args.weights, args.data, config=_config_from_args(args), tile_size=args.tile_size,
                      batch_size=args.batch_size)
    line = json.dumps(result)
    print(line)
    if args.output:
        Path(args.output).parent.mkdir(parents=True, exist_ok=True)
        Path(args.output).write_text(line + "\n")
    return 0


def cmd_predict(args) -> int:
    from unet_jax.predict import Predictor, predict_files

    predictor = Predictor.from_weights(args.weights, config=_config_from_args(args))
    written = predict_files(
        predictor, args.images, args.output, save_probabilities=args.probabilities, tile_size=args.tile_size,
        batch_size=args.batch_size, mask_format=args.format,
    )
    for path in written:
        print(path)
    return 0


# --------------------------------------------------------------------- parser
def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="unet-jax", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True)

    train = commands.add_parser("train", help="train a U-Net (default: the CPU demo on built-in synthetic cells)")
    train.add_argument("--preset", default="demo", choices=sorted(PRESETS),
                       help="demo: small net, CPU-sized; seed: the seed's full net, Adam, batch 16; paper: SGD 0.99, batch 1")
    train.add_argument("--run-dir", help="where the run is written (default: runs/<preset>-<time>)")
    train.add_argument("--resume", metavar="RUN_DIR", help="continue the run in RUN_DIR from its last checkpoint")
    train.add_argument("--no-progress", action="store_true", help="no progress bar")
    _model_options(train)
    group = train.add_argument_group("training (TrainConfig fields; default: the preset's)")
    _add_field_options(group, dataclasses.fields(TrainConfig), exclude=("preset", "model"))
    train.set_defaults(run=cmd_train)

    convert = commands.add_parser("convert", help="convert weights: PyTorch .pt/.pth/.safetensors <-> Flax .safetensors")
    convert.add_argument("src")
    convert.add_argument("dst")
    convert.add_argument("--direction", choices=("torch-to-flax", "flax-to-torch"),
                         help="default: from what SRC holds")
    convert.add_argument("--naming", choices=("unet_torch", "seed"), default="unet_torch",
                         help="torch key names to write (flax-to-torch)")
    convert.add_argument("--overwrite", action="store_true", help="replace DST if it exists")
    _model_options(convert)
    convert.set_defaults(run=cmd_convert)

    evaluate = commands.add_parser("evaluate", help="Dice / IoU / pixel accuracy of weights on a data folder")
    evaluate.add_argument("--weights", required=True, help="a run directory, Flax .safetensors or PyTorch .pt/.pth/.safetensors")
    evaluate.add_argument("--data", required=True, help="DIR with images/ and masks/ (or an ISBI TIFF pair)")
    evaluate.add_argument("--output", help="also write the JSON line to this file")
    evaluate.add_argument("--tile-size", type=int)
    evaluate.add_argument("--batch-size", type=int, default=4)
    _model_options(evaluate)
    evaluate.set_defaults(run=cmd_evaluate)

    predict = commands.add_parser("predict", help="segment images of any size with the overlap-tile strategy")
    predict.add_argument("images", nargs="+", metavar="IMAGE")
    predict.add_argument("--weights", required=True, help="a run directory, Flax .safetensors or PyTorch weights")
    predict.add_argument("--output", required=True, help="directory for the masks")
    predict.add_argument("--probabilities", action="store_true", help="also write class probabilities as .npy")
    predict.add_argument("--format", choices=("png", "tiff"), default="png")
    predict.add_argument("--tile-size", type=int, help="input tile side (default: the largest that fits)")
    predict.add_argument("--batch-size", type=int, default=4)
    _model_options(predict)
    predict.set_defaults(run=cmd_predict)
    return parser


def main(argv: Optional[Sequence[str]] = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.run(args)
    except (UNetError, ValueError, FileNotFoundError, FileExistsError, RuntimeError) as error:
        # Library errors carry the file and the fix; a traceback would bury them.
        print(f"unet-jax {args.command}: error: {error}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
