"""Run by tests/subprocess/test_distributed.py in a child process with 8 forced CPU devices
(XLA_FLAGS=--xla_force_host_platform_device_count=8), so the rest of the suite keeps one device.
Writes what it measured to OUT/measured.json; the test asserts on it.

    python -m tests.helpers.multidevice_child OUT   (from the repository root)
"""

import json
import shutil
import sys
import time
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np

from unet_jax.cli import main
from unet_jax.config import UNetConfig
from unet_jax.data import make_cells, sample_tiles
from unet_jax.data.augment import augment
from unet_jax.data.tiles import TileRequest
from unet_jax.inference.predictor import Predictor, predict_probabilities
from unet_jax.model.unet import UNet
from unet_jax.runtime.mesh import DataParallel, fetch
from unet_jax.training.checkpoints import Checkpointer
from unet_jax.training.losses import make_loss
from unet_jax.training.step import create_train_state, make_optax_optimizer, make_train_step

# A depth-2, 4-feature U-Net on 60x60 tiles (20x20 labels): milliseconds per step.
TILE, LABEL, BATCH, STEPS = 60, 20, 8, 4
CELLS = make_cells(4, 64, seed=0)


def batches(count, seed=0):
    request = TileRequest(BATCH, TILE, LABEL)
    return [sample_tiles(CELLS.images, CELLS.masks, np.random.default_rng([seed, s]), request) for s in range(count)]


MODELS = {norm: UNet(UNetConfig(features=4, depth=2, norm=norm)) for norm in (None, "batch")}
ADAM = make_optax_optimizer("adam", 1e-3)  # one object: the state's treedef holds it, and the compiled steps are shared


_FRESH = {}


def fresh_state(model):
    """The initial state (made once per network: `run_steps` lays out a copy, so it is never donated)."""
    if model not in _FRESH:
        _FRESH[model] = create_train_state(model, ADAM, seed=0, input_size=TILE)
    return _FRESH[model]


_STEPS = {}  # one compiled step per (layout, network): compiling dominates this script's time


def run_steps(parallel, model, state, data):
    """(losses, final state) after one step per batch, laid out by `parallel`."""
    state = parallel.place_state(state)
    key = (parallel, model.config)
    if key not in _STEPS:
        _STEPS[key] = make_train_step(make_loss("ce"), augment=augment, shardings=parallel.step_shardings(state))
    step = _STEPS[key]
    losses = []
    for images, masks in data:
        state, metrics = step(state, parallel.put(images), parallel.put(masks))
        losses.append(float(metrics["loss"]))
    return losses, state


def numpy_state(state):
    tree = fetch({"params": state.params, "opt_state": state.opt_state, "batch_stats": state.batch_stats, "rng": state.rng})
    return jax.tree.map(np.array, tree)  # copies: the steps donate the device buffers


def relative(a, b):
    return float(np.max(np.abs(np.asarray(a, np.float64) - b)) / max(np.max(np.abs(b)), 1e-30))


def max_relative(a_tree, b_tree):
    return max((relative(a, b) for a, b in zip(jax.tree.leaves(a_tree), jax.tree.leaves(b_tree))), default=0.0)


def identical(a_tree, b_tree):
    return all(np.array_equal(a, b) for a, b in zip(jax.tree.leaves(a_tree), jax.tree.leaves(b_tree), strict=True))


def weight_gap(run, reference, start):
    """max|w - w_ref| / max|w_ref - w_init| over the whole network: relative to how far training moved it.
    (Per tensor it means little here: under BatchNorm the up-conv biases have an exact gradient of 0,
    so their float32 gradients are rounding noise that Adam's ~lr*sign(g) step turns into lr-sized moves.)"""
    gap = max(float(np.max(np.abs(a - b))) for a, b in zip(jax.tree.leaves(run), jax.tree.leaves(reference)))
    moved = max(float(np.max(np.abs(b - s))) for b, s in zip(jax.tree.leaves(reference), jax.tree.leaves(start)))
    return gap / moved


def with_gradient(params, norm):
    """The parameters whose exact gradient is not identically 0: under BatchNorm an up-conv's bias
    adds a per-channel constant that the next conv keeps constant and BatchNorm's mean removes, so
    its float32 gradient is rounding noise, which Adam's ~lr*sign(g) step turns into lr-sized moves
    in any two runs that round differently. Those are compared on their own (`noise_moves`)."""
    if norm != "batch":
        return params
    return {k: v for k, v in params.items() if not k.startswith("upconv")} | {
        k: {"kernel": v["kernel"]} for k, v in params.items() if k.startswith("upconv")}


def tree_relative(a_tree, b_tree):
    """max|a - b| / max|b| over a whole tree (the Adam moments: the same reason as `weight_gap`)."""
    a_leaves, b_leaves = jax.tree.leaves(a_tree), jax.tree.leaves(b_tree)
    if not b_leaves:
        return 0.0
    gap = max(float(np.max(np.abs(np.asarray(a, np.float64) - b))) for a, b in zip(a_leaves, b_leaves))
    return gap / max(float(np.max(np.abs(b))) for b in b_leaves)


def equivalence(norm, out):
    """8 devices (replicated and FSDP) against 1, same global batches and augmentation."""
    model = MODELS[norm]
    data = batches(STEPS)
    start = fetch(fresh_state(model).params)
    results = {}
    one_losses, one = run_steps(DataParallel.create(1), model, fresh_state(model), data)
    one = numpy_state(one)
    layouts = {"8": DataParallel.create(8), "8_fsdp": DataParallel.create(8, fsdp=True)}
    if norm is None:
        del layouts["8_fsdp"]  # FSDP is checked on the BatchNorm network (and in `checkpoints`), one compile less
    for name, parallel in layouts.items():
        losses, state = run_steps(parallel, model, fresh_state(model), data)
        sharded = {str(leaf.sharding.spec) for leaf in jax.tree.leaves(state.params)}
        state = numpy_state(state)
        results[name] = {
            "loss": max(abs(a - b) / abs(b) for a, b in zip(losses, one_losses)),
            "weights": weight_gap(with_gradient(state["params"], norm), with_gradient(one["params"], norm),
                                  with_gradient(start, norm)),
            "noise_moves": max(float(np.max(np.abs(v["bias"] - one["params"][k]["bias"])))
                               for k, v in state["params"].items() if k.startswith("upconv")),
            "adam_moments": tree_relative(state["opt_state"], one["opt_state"]),
            "batch_stats": max_relative(state["batch_stats"], one["batch_stats"]),
            "rng_equal": bool(np.array_equal(state["rng"], one["rng"])),
            "param_specs": sorted(sharded),
            "devices": parallel.device_count,
        }
    if norm == "batch":
        # What per-device statistics would give: the first loss with BatchNorm over each device's
        # single sample instead of the global batch of 8. The test must tell the two apart.
        state = fresh_state(model)
        images, masks = data[0]
        images, masks = augment(jax.random.split(state.rng)[1], jnp.asarray(images), jnp.asarray(masks))
        variables = {"params": state.params, "batch_stats": state.batch_stats}
        local = []
        for i in range(BATCH):
            logits, _ = model.apply(variables, images[i : i + 1], train=True, mutable=["batch_stats"])
            local.append(float(make_loss("ce")(logits, masks[i : i + 1])))
        results["per_device_statistics_loss_gap"] = abs(float(np.mean(local)) - one_losses[0]) / abs(one_losses[0])
    out[f"norm_{norm}"] = results


def checkpoints(out, work: Path):
    """Saved on 8 devices (FSDP: real shards) -> restored on 1, and saved on 1 -> restored on 8."""
    model = MODELS["batch"]
    data = batches(4, seed=1)
    layouts = {"8_fsdp": DataParallel.create(8, fsdp=True), "1": DataParallel.create(1), "8": DataParallel.create(8)}
    results = {}
    for saved_on, restored_on in (("8_fsdp", "1"), ("1", "8")):
        saver = layouts[saved_on]
        _, state = run_steps(saver, model, fresh_state(model), data[:2])
        saved = numpy_state(state)
        folder = work / f"{saved_on}-to-{restored_on}"
        checkpointer = Checkpointer(folder, keep=2)
        checkpointer.save(state)
        checkpointer.close()
        # Continue on the saving layout: the reference.
        continued_losses, continued = run_steps(saver, model, state, data[2:])
        restorer = layouts[restored_on]
        template = restorer.place_state(fresh_state(model))
        reader = Checkpointer(folder, keep=2)
        restored = reader.restore(template)
        reader.close()
        restored_numpy = numpy_state(restored)
        bit_identical = identical(restored_numpy, saved)
        devices = {len(leaf.sharding.device_set) for leaf in jax.tree.leaves(restored.params)}
        resumed_losses, resumed = run_steps(restorer, model, restored, data[2:])
        # And the restored state continued on the saving layout: exactly the reference.
        again_losses, again = run_steps(saver, model, restored, data[2:])
        results[f"{saved_on}_to_{restored_on}"] = {
            "bit_identical": bit_identical,
            "restored_device_counts": sorted(devices),
            "step": int(restored.step),
            "continued_loss": max(abs(a - b) / abs(b) for a, b in zip(resumed_losses, continued_losses)),
            "continued_weights": weight_gap(*(with_gradient(p, "batch") for p in (
                numpy_state(resumed)["params"], numpy_state(continued)["params"], saved["params"]))),
            "same_layout_continuation_identical": again_losses == continued_losses
            and identical(numpy_state(again), numpy_state(continued)),
        }
    out["checkpoints"] = results


def prediction(out):
    """Tiles of one image split over 8 devices against 1 device, BatchNorm network in inference mode."""
    from tests.helpers.random_weights import random_variables

    config = UNetConfig(features=4, depth=2, norm="batch")
    variables = random_variables(config, seed=3)
    image = np.random.default_rng(4).normal(size=(100, 130, 1)).astype(np.float32)
    one = predict_probabilities(Predictor(config, variables, devices=1), image, tile_size=60, batch_size=3)
    eight_predictor = Predictor(config, variables, devices=8)
    eight = predict_probabilities(eight_predictor, image, tile_size=60, batch_size=3)
    out["predict"] = {"max_abs": float(np.max(np.abs(eight - one))), "devices": eight_predictor.device_count,
                      "shape": list(eight.shape)}


def command_line(out, work: Path, capsys_file: Path):
    """`unet-jax train --devices 8`, then --resume on 1 device from its middle checkpoint."""
    tiny = ["--features", "4", "--depth", "2", "--tile-size", "60", "--batch-size", "8", "--cells-train-images", "4",
            "--cells-val-images", "2", "--cells-image-size", "64", "--val-tiles-per-image", "4", "--log-every", "1",
            "--eval-every", "2", "--checkpoint-every", "2", "--steps", "4", "--no-progress", "--norm", "batch"]
    run = work / "cli-run"
    codes = {"train_8": main(["train", *tiny, "--devices", "8", "--run-dir", str(run)])}
    copy = work / "cli-resume"
    shutil.copytree(run, copy)
    shutil.rmtree(copy / "checkpoints" / "4")
    for name in ("weights.safetensors", "summary.json"):
        (copy / name).unlink()
    codes["resume_1"] = main(["train", "--resume", str(copy), "--devices", "1", "--no-progress"])
    codes["devices_9"] = main(["train", *tiny, "--devices", "9", "--run-dir", str(work / "never")])
    codes["batch_6_on_4"] = main(["train", *tiny, "--devices", "4", "--batch-size", "6", "--run-dir", str(work / "never")])

    def train_losses(folder):
        records = [json.loads(line) for line in (folder / "metrics.jsonl").read_text().splitlines()]
        return {r["step"]: r["loss"] for r in records if r["split"] == "train"}

    eight, one = train_losses(run), train_losses(copy)
    out["cli"] = {
        "codes": codes,
        "steps_8": sorted(eight), "steps_resumed": sorted(one),
        "first_steps_kept": all(one[s] == eight[s] for s in (1, 2)),
        "resumed_loss": max(abs(one[s] - eight[s]) / abs(eight[s]) for s in (3, 4)),
        "never_written": not (work / "never").exists(),
        "resume_exact": json.loads((copy / "summary.json").read_text())["exact_continuation"],
    }


if __name__ == "__main__":
    target = Path(sys.argv[1])
    assert len(jax.devices()) == 8, jax.devices()
    measured = {"seconds": {}}
    for part in sys.argv[2:] or ["none", "batch", "checkpoints", "predict", "cli"]:
        began = time.perf_counter()
        if part in ("none", "batch"):
            equivalence(None if part == "none" else part, measured)
        elif part == "checkpoints":
            checkpoints(measured, target)
        elif part == "predict":
            prediction(measured)
        elif part == "cli":
            command_line(measured, target, target / "cli.log")
        measured["seconds"][part] = round(time.perf_counter() - began, 1)
        (target / "measured.json").write_text(json.dumps(measured, indent=1))
