"""One JAX variant at one batch size, in this process: build, compile, warm up, time.

Benchmarks the product's own step (`unet_jax.training.step.make_train_step`, which donates the
state) rather than a hand-written one, so the numbers are what users get. Compilation is
timed explicitly as `lower()` + `compile()` before the first call, so compile time never
mixes with step time. Usage: `python -m benchmarks.jax_step --variant jax-bf16 --batch 16`.
"""

from __future__ import annotations

import contextlib
import os
import time

import jax
import jax.numpy as jnp
import numpy as np

from benchmarks import devices, kernels, timing
from benchmarks.jax_state import seed_train_state
from benchmarks.variants import VARIANTS
from unet_jax.config import UNetConfig
from unet_jax.model.unet import UNet, default_batch_groups
from unet_jax.runtime import xla_cpu
from unet_jax.training.losses import make_loss
from unet_jax.training.step import make_train_step


def compile_timed(jitted, *args) -> tuple:
    """(executable, {lower_s, xla_compile_s, compile_s}), with the parent told when it starts."""
    timing.phase("compile-start")
    start = time.perf_counter()
    lowered = jitted.lower(*args)
    lowered_at = time.perf_counter()
    compiled = lowered.compile()
    done = time.perf_counter()
    timing.phase("compile-done")
    return compiled, {
        "lower_s": lowered_at - start,
        "xla_compile_s": done - lowered_at,
        "compile_s": done - start,
        "compile_method": "jitted.lower(...) + .compile() timed before the first call",
    }


def synthetic_batch(config: UNetConfig, batch: int, size: int):
    """Images [N, H, W, C] float32 and input-sized class masks [N, H, W], already on the device.

    Drawn with numpy: compiling jax.random for 4-D shapes takes seconds on XLA:CPU.
    """
    rng = np.random.default_rng(1)
    images = rng.standard_normal((batch, size, size, config.in_channels), dtype=np.float32)
    masks = rng.integers(0, config.num_classes, (batch, size, size), dtype=np.int32)
    return jax.block_until_ready(jax.device_put((images, masks)))


def compiled_memory(compiled) -> dict:
    """The compiled executable's own account: temporaries, arguments and outputs, in bytes."""
    try:
        stats = compiled.memory_analysis()
    except Exception as error:  # backend-specific; absent is not a failure of the step
        return {"compiled_memory_error": f"{type(error).__name__}: {error}"}
    if stats is None:
        return {"compiled_memory_error": "memory_analysis() returned None on this backend"}
    return {"compiled_temp_bytes": int(stats.temp_size_in_bytes), "compiled_argument_bytes": int(stats.argument_size_in_bytes),
            "compiled_output_bytes": int(stats.output_size_in_bytes), "compiled_alias_bytes": int(stats.alias_size_in_bytes)}


def bench_train(model: UNet, images, masks, warmup: int, steps: int, profile: bool = False) -> dict:
    state = seed_train_state(model, images.shape[1])
    step = make_train_step(make_loss("ce"))
    compiled, compile_info = compile_timed(step, state, images, masks)
    box = {"state": state}

    def one_step():
        # The step donates its state: always feed back the one it returned.
        box["state"], metrics = compiled(box["state"], images, masks)
        jax.block_until_ready((box["state"], metrics))

    return measure(compiled, compile_info, one_step, warmup, steps, profile)


def bench_predict(model: UNet, images, warmup: int, steps: int, profile: bool = False) -> dict:
    params = seed_train_state(model, images.shape[1]).params
    predict = jax.jit(lambda params, x: model.apply({"params": params}, x, train=False))
    compiled, compile_info = compile_timed(predict, params, images)

    def one_call():
        jax.block_until_ready(compiled(params, images))

    return measure(compiled, compile_info, one_call, warmup, steps, profile)


def measure(compiled, compile_info: dict, call, warmup: int, steps: int, profile: bool) -> dict:
    """A compiled job's figures: compile, memory (the compiled program's and the steps' own
    peak), timing, and with `profile` a kernel profile of one more call."""
    resident = ResidentBytes()
    result = {**compile_info, **compiled_memory(compiled), **timing.warmup_and_time(call, warmup, steps, resident)}
    result.update(resident.step_peak(result))
    if profile:
        result["kernels"] = kernels.guarded(kernels.profile_jax, call)
    return result


class ResidentBytes:
    """The step's own memory peak, without the compile's: XLA's GPU autotuner tries convolution
    algorithms with scratch buffers while compiling, and `peak_bytes_in_use` (which cannot be
    reset) keeps that high-water mark: on an H200 the fp32 seed step at batch 1 showed a 33 GiB
    peak around 1.4 GiB of live state and temporaries. Called after the warm-up (timing's
    `after_warmup`), it records the bytes live between steps (state and batch); a step adds its
    temporaries and the outputs that do not reuse a donated input's buffer (memory_analysis)."""

    def __init__(self):
        self.between_steps = None

    def __call__(self):
        stats = jax.devices()[0].memory_stats() or {}
        self.between_steps = stats.get("bytes_in_use")

    def step_peak(self, compiled: dict) -> dict:
        if self.between_steps is None or "compiled_temp_bytes" not in compiled:
            return {}
        fresh_outputs = compiled["compiled_output_bytes"] - compiled["compiled_alias_bytes"]
        return {"step_peak_memory_bytes": int(self.between_steps + compiled["compiled_temp_bytes"] + fresh_outputs),
                "step_peak_memory_source": "jax bytes_in_use after warm-up + compiled temporaries + outputs not "
                                           "aliased to donated inputs"}


def peak_memory(device) -> dict:
    stats = device.memory_stats()
    if stats and "peak_bytes_in_use" in stats:
        return {"peak_memory_bytes": int(stats["peak_bytes_in_use"]),
                "peak_memory_source": "jax device.memory_stats()['peak_bytes_in_use']"}
    return {"peak_memory_bytes": None,
            "peak_memory_null_reason": f"jax {device.platform} backend reports no memory_stats; see process_peak_rss_bytes"}


def matmul_ceiling(n: int) -> dict:
    """bf16 n^3 matmul rate in this process: the achievable tensor-core ceiling for MFU."""
    a, b = jax.random.normal(jax.random.key(2), (2, n, n), jnp.bfloat16)
    matmul = jax.jit(jnp.matmul).lower(a, b).compile()
    for _ in range(3):
        jax.block_until_ready(matmul(a, b))
    times = timing.timed_calls(lambda: jax.block_until_ready(matmul(a, b)), 20)
    return timing.matmul_tflops(times, n)


def runtime_info(device) -> dict:
    return {
        "framework": "jax",
        "device_name": device.device_kind,
        "device_platform": device.platform,
        "device_count": jax.device_count(),
        "backend_platform_version": getattr(getattr(device, "client", None), "platform_version", None),
        "jax_config": devices.jax_config_values(),
    }


def main() -> None:
    args = timing.child_parser(__doc__).parse_args()
    variant = VARIANTS[args.variant]
    assert variant.framework == "jax", variant
    if variant.xla_cpu_flags:  # what `unet-jax` runs; before JAX starts its backend, which reads them
        xla_cpu.apply()
    # Cold compiles on every run: a persistent cache would make compile time meaningless.
    if "jax_enable_compilation_cache" in jax.config.values:
        jax.config.update("jax_enable_compilation_cache", False)
    device = jax.devices()[0]
    config = UNetConfig(features=args.features, depth=args.depth)
    # The library's own grouping (`default_batch_groups`, which follows the XLA:CPU flags above): what `unet-jax train` runs.
    groups = variant.batch_groups or default_batch_groups(1, config.norm, train=variant.task == "train")
    model = UNet(config, dtype=jnp.bfloat16 if variant.dtype == "bf16" else jnp.float32, remat=variant.remat,
                 pin_relu_output=variant.pin_relu_output, batch_groups=groups)
    images, masks = synthetic_batch(config, args.batch, args.size)
    precision = jax.default_matmul_precision(variant.precision) if variant.precision else contextlib.nullcontext()
    with precision:  # a trace-time setting: it must wrap lower(), which it does
        if variant.task == "train":
            result = bench_train(model, images, masks, args.warmup, args.steps, args.profile)
        else:
            result = bench_predict(model, images, args.warmup, args.steps, args.profile)
    result.update(peak_memory(device))
    result["batch_groups"] = groups
    result["xla_flags"] = os.environ.get("XLA_FLAGS", "")  # the job's own, with the library's and the variant's
    result["process_peak_rss_bytes"] = timing.process_peak_rss_bytes()
    result["runtime"] = runtime_info(device)
    if args.ceiling_n:
        result["matmul_ceiling"] = matmul_ceiling(args.ceiling_n)
    timing.emit(result)


if __name__ == "__main__":
    main()
