"""What a run says when it ends: the end-of-run report (weights, plots, whole-image scores, summary),
and the messages of a run that stopped early (interrupted, or diverged). Plain functions beside the loop."""

from __future__ import annotations

import math

import jax

from unet_jax.config import WEIGHT_MAP_LOSSES, TrainConfig
from unet_jax.data import Normalization
from unet_jax.inference.evaluate import evaluate_samples
from unet_jax.inference.predictor import Predictor
from unet_jax.runtime.mesh import fetch
from unet_jax.runtime.processes import is_primary
from unet_jax.training.plan import RunPlan
from unet_jax.training.plots import plot_losses, plot_predictions, plot_weight_map
from unet_jax.training.run_dir import MetricsLog, RunDir
from unet_jax.training.sampling import TrainingData
from unet_jax.training.validation import validate
from unet_jax.weights.io import save_flax_weights


def finish(plan: RunPlan, run: RunDir, state, eval_step, val_tiles: tuple, data: TrainingData, normalization: Normalization,
           metrics_log: MetricsLog, weight_map_example, log) -> dict:
    """Score the last state, write the weights, plots and summary (process 0), and say how it did."""
    cfg, parallel = plan.train, plan.parallel
    val_images, val_masks, val_weights = val_tiles
    variables = {"params": state.params}
    if state.batch_stats is not None:
        variables["batch_stats"] = state.batch_stats
    variables = fetch(variables)
    val_metrics, predictions = validate(eval_step, state, val_images, val_masks, cfg.batch_size, val_weights, parallel.put)
    if not is_primary():
        return {"steps": int(state.step), "validation_tiles": val_metrics}  # process 0 writes and scores the run
    save_flax_weights(variables, cfg.model, run.file(RunDir.WEIGHTS), overwrite=True)
    shown = min(4, len(predictions))
    plot_predictions(val_images[:shown], val_masks[:shown], predictions[:shown], run.file(RunDir.PREDICTIONS_PLOT))
    if weight_map_example is not None:
        plot_weight_map(*weight_map_example, run.file(RunDir.WEIGHT_MAP_PLOT))
    plot_losses(metrics_log.records, run.file(RunDir.LOSS_PLOT))
    # The tiles score training's view; users judge whole images, predicted overlap-tile.
    predictor = Predictor(cfg.model, variables, normalization, devices=parallel.local_device_count)
    whole = evaluate_samples(predictor, data.val, batch_size=cfg.batch_size)
    resumes = run.resumes()
    summary = {"preset": cfg.preset, "steps": int(state.step), "exact_continuation": all(r["exact"] for r in resumes),
               "resumes": resumes, "validation_tiles": val_metrics, "validation_whole_images": whole,
               "training_data": {"images": len(data.train), "shards": cfg.data_shards,
                                 "read_per_process": list(data.read_per_process)}}
    run.save_summary(summary)
    log(f"done: held-out foreground Dice {whole['dice']:.4f}, IoU {whole['iou']:.4f}, pixel accuracy "
        f"{whole['pixel_accuracy']:.4f}{_object_scores(whole)} on {whole['num_images']} whole images ({len(val_images)} "
        f"tiles: Dice {val_metrics['dice']:.4f}); weights in {run.file(RunDir.WEIGHTS)}{_weight_map_advice(cfg, whole)}")
    return summary


def _object_scores(whole: dict) -> str:
    """", instance F1 .. with .. of .. touching pairs kept apart; as predict --instances labels them: F1 .., IoU ..", or ""."""
    objects = whole.get("instances")
    if not objects:
        return ""
    said = f", instance F1 {objects['f1']:.4f} with {objects['split_pairs']} of {objects['touching_pairs']} touching pairs kept apart"
    grown = whole.get("grown", {})
    if "instances" in grown:
        said += f"; as predict --instances labels them: instance F1 {grown['instances']['f1']:.4f}, IoU {grown['iou']:.4f}"
    return said


def _weight_map_advice(cfg: TrainConfig, whole: dict) -> str:
    """Where a run without the weight map scored objects: that the scores need it, and how to ask for it."""
    if "instances" not in whole or cfg.loss in WEIGHT_MAP_LOSSES:
        return ""
    return (f". Object scores need the paper's weight map: touching objects merge under --loss {cfg.loss}; "
            "train with --loss weighted-ce (or --preset instances)")


def where_to_continue(run: RunDir, cfg: TrainConfig, started: bool, step: int) -> str:
    """What exists after a run stopped at `step`, and the command that continues from it."""
    if not started:
        return "Nothing was written yet: run the same command again."
    steps = run.checkpoint_steps()
    if steps:
        recomputed = "" if steps[-1] == step else "; the steps after it are recomputed, identically"
        return (f"The latest checkpoint is step {steps[-1]} ({run.file(RunDir.CHECKPOINTS) / str(steps[-1])}): continue "
                f"with `unet-jax train --resume {run}`{recomputed}.")
    return (f"No checkpoint was saved yet (the first is due at step {cfg.checkpoint_every}), so nothing is "
            f"lost: start the run again with `unet-jax train --resume {run}`.")


def divergence_message(run: RunDir, cfg: TrainConfig, step: int, record: dict, window_start: int) -> str:
    lower = f"{cfg.learning_rate / 10:g}"
    what = f"the training loss became {record['loss']}" if not math.isfinite(record["loss"]) else "the gradients became non-finite"
    steps = run.checkpoint_steps()
    if steps:
        exists = (f"The latest checkpoint, step {steps[-1]} ({run.file(RunDir.CHECKPOINTS) / str(steps[-1])}), was saved "
                  "while loss and gradients were finite: continue from it with a lower learning rate")
    else:
        exists = (f"No checkpoint was saved yet (the first is due at step {cfg.checkpoint_every}), so nothing is lost: "
                  "start the run again from step 0 with a lower learning rate")
    when = f"at step {step}" if window_start == step else f"between steps {window_start} and {step}"
    return (f"{what} {when}; stopped without saving anything more. {exists}: "
            f"`unet-jax train --resume {run} --learning-rate {lower}`.")


def is_out_of_memory(error: BaseException) -> bool:
    """Whether `error` is the host (numpy's MemoryError) or a device (XLA's RESOURCE_EXHAUSTED) out of memory."""
    return isinstance(error, MemoryError) or (isinstance(error, jax.errors.JaxRuntimeError) and "RESOURCE_EXHAUSTED" in str(error))


def out_of_memory_message(error: BaseException, run: RunDir) -> str:
    """What to say when training ran out of memory: what it was, what the run directory kept, what to change."""
    what = str(error).strip().splitlines()[0][:200] if str(error).strip() else type(error).__name__
    steps = run.checkpoint_steps()
    if steps:
        kept = (f"the checkpoints up to step {steps[-1]} in {run.file(RunDir.CHECKPOINTS)}; a resumed run keeps its batch and "
                f"network, so `unet-jax train --resume {run}` needs more free memory than this try had")
    else:
        kept = f"nothing trained ({run} holds no checkpoint)"
    return (f"training ran out of memory ({what}). Kept: {kept}. Fix: start a new run (another --run-dir) with a smaller "
            "--batch-size or --tile-size, fewer --features, --remat blocks or --dtype bfloat16, or spread it over more "
            "devices (--devices, --fsdp); `unet-jax plan` with the new options estimates the step's memory before compiling")
