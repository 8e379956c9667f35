"""The variants: one declarative table, read by the runner, the step scripts and the report.

A *variant* fixes framework, task, compute precision, layout and (torch) compile mode; a *job*
is a variant at one batch size, run in its own process. `peak` names the datasheet column an
MFU is taken against: default-precision float32 convolutions run as TF32 on NVIDIA tensor
cores in both frameworks, so their honest ceiling is the TF32 peak, not the FP32 one.
"""

from __future__ import annotations

import dataclasses
from typing import Optional


@dataclasses.dataclass(frozen=True)
class Variant:
    name: str
    framework: str  # "jax" | "torch"
    task: str  # "train" (Adam + cross-entropy step) | "predict" (forward, inference mode)
    dtype: str  # compute dtype: "fp32" | "bf16" (parameters stay float32 in both)
    peak: str  # datasheet column for MFU: "tf32" | "fp32" | "bf16"
    layout: str  # "NHWC" (jax) | "NCHW" | "channels_last" (torch)
    precision: Optional[str] = None  # jax: "highest" for strict float32 convs and matmuls
    compile_mode: Optional[str] = None  # torch.compile mode; None = eager
    description: str = ""
    remat: str = "none"  # jax: UNet(remat=...), a memory/compute trade that keeps the function
    pin_relu_output: bool = False  # jax: UNet(pin_relu_output=...), which buffers XLA keeps; the same function
    xla_flags: str = ""  # jax: appended to XLA_FLAGS in the job's process (a flag set to compare)
    batch_groups: Optional[int] = None  # jax: UNet(batch_groups=...); None: the library's default_batch_groups
    xla_cpu_flags: bool = True  # jax: unet_jax.runtime.xla_cpu.apply() in the job's process, as `unet-jax` does
    # glibc's huge-page tunable in the job's environment (unet_jax/runtime/hugepages.py). None: as each
    # framework's users run it, on for JAX (`unet-jax` sets it) and off for PyTorch.
    hugepages: Optional[bool] = None
    # torch: Adam as torch.optim.Adam builds it by default (foreach), or with fused=True (one
    # multi-tensor kernel set per step), the choice a PyTorch performance engineer makes on a GPU.
    fused_adam: bool = False
    # torch.compile: "step" compiles the whole step (zero_grad, forward, loss, backward, Adam);
    # "forward-loss" compiles forward and loss (AOTAutograd compiles the backward with it) and
    # runs fused Adam eagerly: the recipe for mode "reduce-overhead", whose CUDA graphs then hold
    # forward and backward without capturing the optimizer's in-place updates.
    compile_scope: str = "step"
    # torch: "harness" runs unet_torch.train_step (the reference step); "minimal" a separately
    # written ~20-line step (benchmarks/torch_minimal.py) against which the harness is checked.
    step_code: str = "harness"

    @property
    def with_hugepages(self) -> bool:
        return self.framework == "jax" if self.hugepages is None else self.hugepages


_TABLE = (
    Variant("jax-fp32", "jax", "train", "fp32", "tf32", "NHWC", description="jax.jit, fp32 at default precision"),
    Variant("jax-fp32-highest", "jax", "train", "fp32", "fp32", "NHWC", precision="highest",
            description="jax.jit under default_matmul_precision('highest'): strict fp32"),
    Variant("jax-bf16", "jax", "train", "bf16", "bf16", "NHWC", description="UNet(dtype=bfloat16), float32 params"),
    Variant("torch-fp32", "torch", "train", "fp32", "tf32", "NCHW", description="eager, fp32 with TF32 allowed"),
    Variant("torch-fp32-cl", "torch", "train", "fp32", "tf32", "channels_last", description="eager, TF32, channels_last"),
    Variant("torch-bf16", "torch", "train", "bf16", "bf16", "NCHW", description="eager, bf16 autocast"),
    Variant("torch-bf16-cl", "torch", "train", "bf16", "bf16", "channels_last",
            description="eager, bf16 autocast, channels_last"),
    Variant("torch-compile-bf16-cl", "torch", "train", "bf16", "bf16", "channels_last", compile_mode="default",
            description="torch.compile(whole step), bf16 autocast, channels_last"),
    Variant("torch-compile-fp32", "torch", "train", "fp32", "tf32", "NCHW", compile_mode="default",
            description="torch.compile(whole step), fp32 with TF32"),
    Variant("torch-compile-autotune-bf16-cl", "torch", "train", "bf16", "bf16", "channels_last",
            compile_mode="max-autotune-no-cudagraphs",
            description="torch.compile(whole step, max-autotune-no-cudagraphs), bf16 autocast, channels_last"),
    Variant("torch-compile-bf16-cl-fused", "torch", "train", "bf16", "bf16", "channels_last", compile_mode="default",
            fused_adam=True, description="torch.compile(whole step), bf16 autocast, channels_last, Adam(fused=True)"),
    Variant("torch-compile-cudagraphs-bf16-cl-fused", "torch", "train", "bf16", "bf16", "channels_last",
            compile_mode="reduce-overhead", fused_adam=True, compile_scope="forward-loss",
            description="torch.compile(forward+loss, reduce-overhead: CUDA graphs), bf16 autocast, channels_last, "
                        "Adam(fused=True) eager"),
    Variant("torch-compile-autotune-bf16-cl-fused", "torch", "train", "bf16", "bf16", "channels_last",
            compile_mode="max-autotune-no-cudagraphs", fused_adam=True,
            description="torch.compile(whole step, max-autotune-no-cudagraphs), bf16 autocast, channels_last, Adam(fused=True)"),
    Variant("torch-compile-fp32-cl-fused", "torch", "train", "fp32", "tf32", "channels_last", compile_mode="default",
            fused_adam=True, description="torch.compile(whole step), fp32 with TF32, channels_last, Adam(fused=True)"),
    Variant("torch-minimal-compile-bf16-cl", "torch", "train", "bf16", "bf16", "channels_last", compile_mode="default",
            fused_adam=True, step_code="minimal",
            description="benchmarks/torch_minimal.py: a separately written torch.compile step (bf16 autocast, "
                        "channels_last, Adam(fused=True), cross-entropy on float logits), the harness's yardstick"),
    Variant("jax-fp32-jaxlib-flags", "jax", "train", "fp32", "tf32", "NHWC", xla_cpu_flags=False,
            description="jax-fp32 under jaxlib's own XLA:CPU defaults (without unet_jax.runtime.xla_cpu's flags)"),
    Variant("predict-jax-fp32", "jax", "predict", "fp32", "tf32", "NHWC", description="jit(model.apply), train=False"),
    Variant("predict-jax-fp32-jaxlib-flags", "jax", "predict", "fp32", "tf32", "NHWC", xla_cpu_flags=False,
            description="predict-jax-fp32 under jaxlib's own XLA:CPU defaults"),
    Variant("predict-jax-bf16", "jax", "predict", "bf16", "bf16", "NHWC", description="jit(model.apply), bf16 compute"),
    Variant("predict-torch-fp32", "torch", "predict", "fp32", "tf32", "NCHW", description="inference_mode, TF32"),
    Variant("predict-torch-fp32-cl", "torch", "predict", "fp32", "tf32", "channels_last",
            description="inference_mode, TF32, channels_last"),
    Variant("torch-fp32-hugepages", "torch", "train", "fp32", "tf32", "NCHW", hugepages=True,
            description="torch-fp32 with glibc's huge-page tunable, as `unet-jax` runs"),
    Variant("predict-torch-fp32-hugepages", "torch", "predict", "fp32", "tf32", "NCHW", hugepages=True,
            description="predict-torch-fp32 with glibc's huge-page tunable"),
    Variant("predict-torch-bf16-cl", "torch", "predict", "bf16", "bf16", "channels_last",
            description="inference_mode, bf16 autocast, channels_last"),
)

# The GPU speed-up candidates that `benchmarks.sweep` compares with the defaults above: each one
# changes only how the same function is computed (a remat policy, or XLA GPU flags).
_SWEEP_OPTIONS = (
    Variant("jax-bf16-remat-blocks", "jax", "train", "bf16", "bf16", "NHWC", remat="blocks",
            description="jax-bf16, UNet(remat='blocks'): each conv block recomputed in the backward pass"),
    Variant("jax-fp32-remat-blocks", "jax", "train", "fp32", "tf32", "NHWC", remat="blocks",
            description="jax-fp32, UNet(remat='blocks')"),
    Variant("jax-bf16-remat-dots", "jax", "train", "bf16", "bf16", "NHWC", remat="dots",
            description="jax-bf16, UNet(remat='dots'): jax's dots_saveable, conv and matmul outputs kept, "
                        "ReLU, pooling and concatenation recomputed (not yet measured on a GPU)"),
    Variant("jax-bf16-pinned-relu", "jax", "train", "bf16", "bf16", "NHWC", pin_relu_output=True,
            description="jax-bf16, UNet(pin_relu_output=True): each ReLU's kept output behind an optimization barrier, "
                        "so XLA keeps it instead of recomputing it and cuDNN fuses the ReLU (compiled without a device: "
                        "-1.7 GiB of temporaries at batch 16)"),
    Variant("jax-fp32-pinned-relu", "jax", "train", "fp32", "tf32", "NHWC", pin_relu_output=True,
            description="jax-fp32, UNet(pin_relu_output=True)"),
    Variant("jax-bf16-no-autotune", "jax", "train", "bf16", "bf16", "NHWC", xla_flags="--xla_gpu_autotune_level=0",
            description="jax-bf16 without XLA's GPU autotuning (what autotuning buys, and costs in compile time)"),
    Variant("jax-bf16-no-command-buffers", "jax", "train", "bf16", "bf16", "NHWC",
            xla_flags="--xla_gpu_enable_command_buffer=",
            description="jax-bf16 without CUDA-graph command buffers (their effect at batch 1)"),
    Variant("jax-bf16-no-triton-gemm", "jax", "train", "bf16", "bf16", "NHWC", xla_flags="--xla_gpu_enable_triton_gemm=false",
            description="jax-bf16 with cuBLAS instead of Triton for matmul fusions (the up-convolutions)"),
    Variant("jax-bf16-latency-hiding", "jax", "train", "bf16", "bf16", "NHWC",
            xla_flags="--xla_gpu_enable_latency_hiding_scheduler=true",
            description="jax-bf16 with XLA's latency-hiding scheduler"),
)
VARIANTS = {v.name: v for v in _TABLE + _SWEEP_OPTIONS}

# The GPU run, most informative first: the runner stops starting jobs when its time budget
# would be exceeded and records the rest as skipped. Each entry: (variant names, batches).
FULL_PLAN = (
    (("torch-fp32", "torch-bf16-cl", "jax-fp32", "jax-bf16", "torch-compile-bf16-cl"), (16, 1)),
    (("predict-jax-fp32", "predict-jax-bf16", "predict-torch-fp32", "predict-torch-bf16-cl"), (16,)),
    (("torch-compile-autotune-bf16-cl",), (16,)),
    (("jax-fp32-highest", "torch-fp32-cl", "torch-bf16"), (16,)),
    (("torch-fp32", "torch-bf16-cl", "jax-fp32", "jax-bf16", "torch-compile-bf16-cl"), (4,)),
    (("jax-fp32-highest", "torch-fp32-cl", "torch-bf16"), (1, 4)),
    (("predict-jax-fp32", "predict-jax-bf16", "predict-torch-fp32", "predict-torch-bf16-cl"), (1, 4)),
    (("torch-compile-fp32",), (16, 1, 4)),
)

# The CPU smoke test: three variants per framework, alternating so that a tight budget still
# leaves both frameworks. Left out because their CPU compiles alone would blow the 60 s bound on
# two cores: torch.compile (inductor's C++ build) and the jax bf16 train step (~16 s); bf16 in
# JAX is still exercised through predict.
QUICK_PLAN = (
    (("jax-fp32", "torch-fp32", "predict-jax-fp32", "predict-torch-fp32", "predict-jax-bf16", "torch-bf16-cl"),
     (1,)),
)


# benchmarks.sweep (GPU, one device call): the JAX step under each option against the best
# PyTorch variant in the same run, seed network at 572 px, most informative first.
SWEEP_PLAN = (
    (("jax-bf16", "torch-compile-bf16-cl"), (16, 1)),
    (("jax-bf16-remat-blocks",), (16,)),
    (("jax-fp32", "torch-compile-fp32"), (16,)),
    (("jax-bf16-no-command-buffers",), (1,)),
    # jax-bf16-no-autotune stays in the table but not in the plan (UNPLANNED).
    (("jax-bf16-no-triton-gemm", "jax-bf16-latency-hiding"), (16,)),
    (("jax-fp32-remat-blocks",), (16,)),
    (("jax-bf16-remat-dots",), (16,)),
)

# In the table, in no plan: on the H200 (2026-12-04) the seed step did not compile within 205 s
# without autotuning (benchmarks/NOTES.md, the 2026-12-04 sweep); `--variants` still runs it.
UNPLANNED = ("jax-bf16-no-autotune",)

# Its CPU smoke test: the plumbing of options, flags and profiles, without torch.compile's
# minutes of C++ builds on two cores. XLA:CPU ignores the GPU flags, which is what lets this run.
SWEEP_QUICK_PLAN = ((("jax-fp32", "torch-fp32", "jax-fp32-remat-blocks"), (1,)),)

# The CPU standing (README, benchmarks/results/cpu-*-demo/): the JAX step against PyTorch eager as
# its users run it, with the same huge-page tunable as `unet-jax`, and channels_last (oneDNN's
# fastest layout on AVX-512 CPUs: 62 against 71 ms on the 2026-12-04 Intel Xeon; torch.compile was
# slower there than eager, 79.6 ms, so it is left out); the standing takes the fastest. JAX also
# runs under jaxlib's own XLA:CPU flags. One run: `--plan cpu --features 16 --depth 3 --size 124`.
CPU_PLAN = (
    (("jax-fp32", "jax-fp32-jaxlib-flags", "torch-fp32", "torch-fp32-hugepages", "torch-fp32-cl", "predict-jax-fp32",
      "predict-jax-fp32-jaxlib-flags", "predict-torch-fp32", "predict-torch-fp32-hugepages", "predict-torch-fp32-cl"), (8,)),
)

# The fair comparison (GPU, one device call of ~240 s): JAX against PyTorch as a performance
# engineer runs it (fused Adam, channels_last input, CUDA graphs where launches dominate), each
# JAX variant against PyTorch of the same compute precision, most informative first: bf16 at
# batch 16, JAX against the harness's best torch.compile step and the minimal step that checks
# it; batch 1 (launch-bound), JAX against CUDA graphs; then CUDA graphs at batch 16 (compute-bound:
# graphs are expected to matter little there) and mode default at batch 1; TF32 at batch 16;
# max-autotune last (its autotuning alone may take the whole compile bound). JAX's pinned-ReLU option
# (UNet.pin_relu_output, not yet timed on a device) follows each JAX row it may replace. Run with
# `--shared-compile-cache` (gpu_check.sh fair): a torch.compile job reuses the kernels that earlier
# ones compiled (the minimal step after the harness's, most of all), its compile time marked warm.
FAIR_PLAN = (
    (("jax-bf16", "torch-compile-bf16-cl-fused", "torch-minimal-compile-bf16-cl"), (16,)),
    (("jax-bf16-pinned-relu",), (16,)),
    (("jax-bf16", "torch-compile-cudagraphs-bf16-cl-fused"), (1,)),
    (("torch-compile-cudagraphs-bf16-cl-fused",), (16,)),
    (("torch-compile-bf16-cl-fused", "jax-bf16-pinned-relu"), (1,)),
    (("jax-fp32", "torch-compile-fp32-cl-fused"), (16,)),
    (("jax-fp32-pinned-relu",), (16,)),
    (("torch-compile-autotune-bf16-cl-fused",), (16,)),
)

PLANS = {"full": FULL_PLAN, "fair": FAIR_PLAN, "quick": QUICK_PLAN, "sweep": SWEEP_PLAN, "sweep-quick": SWEEP_QUICK_PLAN,
         "cpu": CPU_PLAN}


def jobs(plan, variants: Optional[list] = None, batches: Optional[list] = None) -> list[tuple[Variant, int]]:
    """(variant, batch) pairs of `plan` in its order, filtered, without repeats.

    A variant asked for by name runs at every requested batch (or every batch of the plan)
    even where the plan does not pair them, after the plan's own pairs; likewise a requested
    batch runs every selected variant.
    """
    unknown = sorted(set(variants or ()) - set(VARIANTS))
    if unknown:
        raise ValueError(f"unknown variants {unknown}; known: {sorted(VARIANTS)}")
    pairs = [(name, batch) for names, plan_batches in plan for batch in plan_batches for name in names]
    all_batches = list(dict.fromkeys(batch for _, batch in pairs))
    if variants:
        pairs = [p for p in pairs if p[0] in variants]
        pairs += [(name, batch) for name in variants for batch in (batches or all_batches)]
    if batches:
        names = list(dict.fromkeys(name for name, _ in pairs))
        pairs = [p for p in pairs if p[1] in batches] + [(name, batch) for batch in batches for name in names]
    return [(VARIANTS[name], batch) for name, batch in dict.fromkeys(pairs)]
