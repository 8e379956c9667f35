"""The memory plan (`unet_jax.training.memory_plan`): its exact parts, and its fitted part against compiled
steps it was not fitted to (CPU, compiled here) and against the committed H200 peaks.

Which check is which: `test_..._cpu_held_out` compiles configs that `benchmarks/memory_plan_fit.py`
never fitted to; `test_..._h200` reads the committed GPU results, its fitted rows named "fit" in the
test id (they check that the code applies the factors as fitted) and the others "held-out"; the
committed CPU seed figures are held out too. The ±15% is the issue's bound for a plan a user can act on.
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from benchmarks.memory_plan_fit import (
    HELD_OUT_CONFIGS,
    SMALLEST,
    compiled_cpu_step,
    cpu_committed_points,
    cpu_layout,
    gpu_compiled_points,
    gpu_points,
    step_buffers,
)
from unet_jax.config import UNetConfig
from unet_jax.model.unet import UNet
from unet_jax.training.losses import make_loss
from unet_jax.training.memory_plan import StepLayout, compared, compiled_bytes, estimate
from unet_jax.training.step import create_train_state, make_optax_optimizer, make_train_step

BOUND = 0.15  # the issue's: within ±15% of the compiled or measured figure
TINY = UNetConfig(features=4, depth=2)


def _relative(estimated: int, measured: int) -> float:
    return estimated / measured - 1


# ------------------------------------------------------------------ the exact parts
@pytest.mark.parametrize("optimizer, norm", [("adam", None), ("sgd", "batch")])
def test_state_parts_are_the_bytes_of_a_real_train_state(optimizer, norm):
    """Parameters (with BatchNorm statistics), optimizer state and gradients, against arrays really made."""
    model = UNetConfig(features=4, depth=2, norm=norm)
    state = create_train_state(UNet(model), make_optax_optimizer(optimizer), 0, 60)
    nbytes = lambda tree: sum(np.asarray(leaf).nbytes for leaf in jax.tree.leaves(tree))  # noqa: E731
    memory = estimate(StepLayout(model, 60, 20, 4, optimizer=optimizer))
    assert memory.parameters == nbytes(state.params) + nbytes(state.batch_stats)
    assert memory.optimizer_state == nbytes(state.opt_state)
    assert memory.gradients == nbytes(state.params)


def test_batch_part_is_the_trainers_arrays_and_splits_over_devices():
    layout = StepLayout(TINY, 60, 20, 8, weight_maps=True)
    images = np.zeros((8, 60, 60, 1), np.float32)
    labels = np.zeros((8, 20, 20), np.int32)  # masks; weight maps are float32 of the same shape
    assert estimate(layout).batch == images.nbytes + 2 * labels.nbytes
    assert estimate(dataclasses.replace(layout, devices=4)).batch == (images.nbytes + 2 * labels.nbytes) // 4


def test_kept_activations_are_the_residuals_of_the_step_at_that_batch():
    """Per image from batches 1 and 2, times the batch: equal to the residuals traced at batch 3, less the weights'."""
    layout = StepLayout(TINY, 60, 20, 3)
    model = UNet(TINY)
    variables = jax.eval_shape(model.init, jax.random.key(0), jax.ShapeDtypeStruct((1, 60, 60, 1), jnp.float32))

    def residual_bytes(batch):
        def residuals(variables, images, masks):
            loss = lambda p: jnp.mean(make_loss("ce")(model.apply({"params": p}, images, train=True), masks))  # noqa: E731
            return jax.vjp(loss, variables["params"])[1]

        shapes = jax.eval_shape(residuals, variables, jax.ShapeDtypeStruct((batch, 60, 60, 1), jnp.float32),
                                jax.ShapeDtypeStruct((batch, 20, 20), jnp.int32))
        return [leaf.size * leaf.dtype.itemsize for leaf in jax.tree.leaves(shapes)]

    # The residuals that grow with the batch: those whose size at batch 3 is three times their size at batch 1.
    at_one, at_three = residual_bytes(1), residual_bytes(3)
    assert estimate(layout).kept == sum(b for a, b in zip(at_one, at_three) if b == 3 * a)


# ------------------------------------------------------------------ the fitted part, checked
def test_estimate_within_15_percent_of_the_compiled_step_cpu_tiny_without_augmentation():
    """Held out, and fast: the tiny network's step without augmentation (whose compile takes XLA:CPU ~10 s), compiled here."""
    layout = StepLayout(TINY, 60, 20, 2)
    state = jax.eval_shape(lambda: create_train_state(UNet(TINY), make_optax_optimizer("adam"), 0, 60))
    compiled = make_train_step(make_loss("ce")).lower(state, jax.ShapeDtypeStruct((2, 60, 60, 1), jnp.float32),
                                                      jax.ShapeDtypeStruct((2, 20, 20), jnp.int32)).compile()
    figure = compiled_bytes(compiled)
    assert abs(_relative(estimate(layout).total, figure)) <= BOUND, (estimate(layout).total, figure)


@pytest.mark.slow
def test_estimate_within_15_percent_of_the_compiled_step_cpu_smallest():
    """Held out: a config no factor was fitted to, compiled here as `unet-jax train` builds it (augmentation on)."""
    layout = cpu_layout(SMALLEST)
    compiled = compiled_cpu_step(layout)["compiled"]
    assert abs(_relative(estimate(layout).total, compiled)) <= BOUND, (estimate(layout).total, compiled)


@pytest.mark.slow
@pytest.mark.parametrize("config", HELD_OUT_CONFIGS, ids=str)
def test_estimate_within_15_percent_of_the_compiled_step_cpu_held_out(config):
    """Held out: benchmarks/memory_plan_fit.py never fitted to these; each is compiled here (~10-25 s on 2 cores)."""
    layout = cpu_layout(config)
    compiled = compiled_cpu_step(layout)["compiled"]
    assert abs(_relative(estimate(layout).total, compiled)) <= BOUND, (estimate(layout).total, compiled)


@pytest.mark.parametrize("point", cpu_committed_points(), ids=lambda p: f"held-out-{p['layout'].dtype}-{p['layout'].remat}")
def test_estimated_buffers_within_15_percent_of_the_committed_cpu_seed_step(point):
    """Held out: the seed network at 572 px, batch 16, compiled on a 2-core AMD EPYC (benchmarks/results/cpu-*/memory.json).
    That file records the temporaries alone, so the estimate's gradients, kept activations and temporaries face them."""
    buffers = step_buffers(estimate(point["layout"]))
    assert abs(_relative(buffers, point["temp"])) <= BOUND, (buffers, point["temp"], point["file"])


def test_the_committed_gpu_results_are_found():
    """The H200 check below reads them: a missing or renamed file must fail here, not leave that test empty."""
    points = gpu_points()
    assert {p["fit"] for p in points} == {True, False}
    assert all(p["device"] == "NVIDIA H200" for p in points)


@pytest.mark.parametrize("point", gpu_points(), ids=lambda p: f"{'fit' if p['fit'] else 'held-out'}-{p['layout'].dtype}-"
                                                              f"{p['layout'].remat}-b{p['layout'].batch_size}")
def test_estimate_within_15_percent_of_the_committed_peak_h200(point):
    """The seed network's step on one NVIDIA H200 (jax 0.11.2; benchmarks/results/nvidia-h200*/results.json): the step
    peak where the run recorded one, else the compiled figure. "fit" rows gave the GPU factors; the rest are held out."""
    total = estimate(point["layout"]).total
    assert abs(_relative(total, point["peak"])) <= BOUND, (total, point["peak"], point["peak_source"], point["file"])


# Held-out points the estimate misses, by how much: on the safe side of the budget check (an overestimate).
KNOWN_MISSES = {("bfloat16", "blocks", 1): "--remat blocks at batch 1 overestimated by 15.2% (pinned) and 15.6%: the factor comes "
                "from batch 16, and the recomputation's buffers do not scale with the batch (benchmarks/NOTES.md)"}


def _compiled_point(point):
    layout = point["layout"]
    name = (f"{'fit' if point['fit'] else 'held-out'}-{layout.dtype}-{layout.remat}-{'pinned-' if layout.pin_relu_output else ''}"
            f"b{layout.batch_size}")
    miss = KNOWN_MISSES.get((layout.dtype, layout.remat, layout.batch_size))
    return pytest.param(point, id=name, marks=[pytest.mark.xfail(reason=miss, strict=True)] if miss else [])


@pytest.mark.parametrize("point", [_compiled_point(p) for p in gpu_compiled_points()])
def test_estimate_within_15_percent_of_the_step_compiled_for_an_h200_without_a_device(point):
    """Settings no device measured (--remat dots, --pin-relu-output): the seed network's step compiled for an H200 on a
    CPU (benchmarks/results/gpu-aot-h200/, a compile-time figure, no autotuning). "fit" rows gave their factors."""
    total = estimate(point["layout"]).total
    assert abs(_relative(total, point["peak"])) <= BOUND, (total, point["peak"], point["file"])


def test_the_compiled_figure_costs_no_second_compile():
    """The trainer lowers and compiles the first step to read its memory; the call that follows must reuse it."""
    compiles = []
    jax.monitoring.register_event_duration_secs_listener(
        lambda event, _seconds, **_: compiles.append(event) if event == "/jax/core/compile/backend_compile_duration" else None)
    model = UNet(TINY)
    state = create_train_state(model, make_optax_optimizer("adam"), 0, 60)
    images, masks = jnp.zeros((2, 60, 60, 1)), jnp.zeros((2, 20, 20), jnp.int32)
    step = make_train_step(make_loss("ce"))
    figure = compiled_bytes(step.lower(state, images, masks).compile())
    before = len(compiles)
    step(state, images, masks)
    assert len(compiles) == before and figure > 0
    line = compared(estimate(StepLayout(TINY, 60, 20, 2)), figure)
    assert line.startswith("memory: compiled step") and "estimated" in line
