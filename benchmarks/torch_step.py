"""One PyTorch variant at one batch size, in this process: build, warm up, time.

Eager variants run the reference step `unet_torch.train_step.train_step` as it is. Compiled
variants wrap that same whole step (zero_grad, forward under autocast, loss, backward, Adam)
in `torch.compile`, or (compile_scope "forward-loss", for CUDA graphs) its forward and loss
(`unet_torch.train_step.step_loss`), so compilation happens lazily inside the first warm-up
calls; the parent bounds that phase with its own timeout. The "minimal" variant runs
`benchmarks.torch_minimal`'s separately written step instead. Usage:
`python -m benchmarks.torch_step --variant torch-bf16-cl --batch 16`.
"""

from __future__ import annotations

import torch

from benchmarks import kernels, timing
from benchmarks.torch_minimal import build_minimal_step
from benchmarks.variants import VARIANTS
from unet_torch.model import UNet
from unet_torch.train_step import make_torch_optimizer, step_loss, train_step


def allow_tf32() -> dict:
    """TF32 for float32 convolutions and matmuls (both frameworks' GPU default for convs).

    Set through the legacy flags, which torch (2.9 to at least 2.13) mirrors into the per-backend
    `fp32_precision` settings, so both views agree. Setting only the new ones leaves
    `torch.get_float32_matmul_precision()` at "highest" against matmul "tf32", and torch then
    raises ("a mix of the legacy and new APIs") wherever the legacy view is read: in torch 2.11,
    inductor's max-autotune does (select_algorithm's precompile key), so the autotuned
    torch.compile variant would fail on the GPU. Returns both views, as read back.
    """
    torch.backends.cudnn.allow_tf32 = True
    torch.backends.cuda.matmul.allow_tf32 = True
    settings = {"cudnn.allow_tf32": torch.backends.cudnn.allow_tf32,
                "cuda.matmul.allow_tf32": torch.backends.cuda.matmul.allow_tf32,
                "float32_matmul_precision": torch.get_float32_matmul_precision()}
    if hasattr(torch.backends.cudnn, "conv"):  # torch >= 2.9
        settings["cudnn.conv.fp32_precision"] = torch.backends.cudnn.conv.fp32_precision
        settings["cuda.matmul.fp32_precision"] = torch.backends.cuda.matmul.fp32_precision
    return settings


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def synthetic_batch(model: UNet, batch: int, size: int, device, channels_last: bool):
    """Images [N, C, H, W] float32 and input-sized int64 masks [N, H, W], on the device."""
    generator = torch.Generator().manual_seed(1)
    images = torch.randn(batch, model.config.in_channels, size, size, generator=generator)
    masks = torch.randint(0, model.config.num_classes, (batch, size, size), generator=generator)
    images, masks = images.to(device), masks.to(device)
    if channels_last:
        # Not .contiguous(memory_format=...): a 1-channel [N, 1, H, W] tensor already counts as
        # channels_last-contiguous, so that keeps NCHW strides, which cuDNN then reads as NCHW.
        images = images.to(memory_format=torch.channels_last)
    return images, masks


def build_train_call(variant, model, images, masks, device):
    optimizer = make_torch_optimizer(model.parameters(), "adam", 1e-3, fused=variant.fused_adam)
    autocast = torch.bfloat16 if variant.dtype == "bf16" else None
    if variant.compile_scope == "forward-loss":
        return build_forward_loss_call(variant, model, optimizer, images, masks, device, autocast)

    def whole_step(images, masks):
        return train_step(model, optimizer, images, masks, autocast_dtype=autocast)

    step = whole_step if variant.compile_mode is None else torch.compile(whole_step, mode=variant.compile_mode)

    def one_step():
        step(images, masks)
        synchronize(device)

    return one_step


def build_forward_loss_call(variant, model, optimizer, images, masks, device, autocast):
    """The same step with only forward and loss compiled (AOTAutograd compiles the backward
    with them). Under mode "reduce-overhead" both run as CUDA graphs; fused Adam runs eagerly
    after the backward, its in-place updates outside any graph; each step is marked as a new
    iteration before its forward (torch.compiler.cudagraph_mark_step_begin), after the previous
    step's gradients, which live in the graphs' memory, were dropped by zero_grad(set_to_none)."""
    model.train()
    loss_of = torch.compile(lambda images, masks: step_loss(model, images, masks, autocast), mode=variant.compile_mode)

    def one_step():
        optimizer.zero_grad(set_to_none=True)
        torch.compiler.cudagraph_mark_step_begin()
        loss_of(images, masks).backward()
        optimizer.step()
        synchronize(device)

    return one_step


def build_minimal_call(model, images, masks, device):
    step = build_minimal_step(model, images, masks)

    def one_step():
        step()
        synchronize(device)

    return one_step


def build_predict_call(variant, model, images, device):
    model.eval()
    autocast = torch.bfloat16 if variant.dtype == "bf16" else None

    def one_call():
        with torch.inference_mode(), torch.autocast(device.type, dtype=autocast, enabled=autocast is not None):
            model(images)
        synchronize(device)

    return one_call


class PeakAcrossWarmup:
    """The run's allocator peak, and the timed steps' own: cudnn.benchmark and torch.compile
    autotune inside the warm-up, and their workspaces set the run's peak (33 GiB for the fp32
    seed step at batch 1 on an H200, against <1 GiB in bf16). Called after the warm-up
    (timing's `after_warmup`): keeps the peak so far, then resets it for the steps."""

    def __init__(self, device):
        self.device, self.warmup = device, None

    def __call__(self):
        if self.device.type == "cuda":
            self.warmup = peak_memory(self.device)
            torch.cuda.reset_peak_memory_stats(self.device)

    def result(self) -> dict:
        steps = peak_memory(self.device)
        if self.warmup is None:
            return steps
        overall = {k: max(self.warmup[k], steps[k]) for k in ("peak_memory_bytes", "peak_memory_reserved_bytes")}
        return {**steps, **overall, "step_peak_memory_bytes": steps["peak_memory_bytes"],
                "step_peak_memory_source": "torch.cuda.max_memory_allocated over the timed steps (reset after warm-up)"}


def peak_memory(device) -> dict:
    if device.type == "cuda":
        return {
            "peak_memory_bytes": int(torch.cuda.max_memory_allocated(device)),
            "peak_memory_source": "torch.cuda.max_memory_allocated",
            "peak_memory_reserved_bytes": int(torch.cuda.max_memory_reserved(device)),
        }
    return {"peak_memory_bytes": None,
            "peak_memory_null_reason": "no device allocator on CPU; see process_peak_rss_bytes"}


def matmul_ceiling(n: int, device) -> dict:
    """bf16 n^3 matmul rate in this process: the achievable tensor-core ceiling for MFU."""
    torch.manual_seed(2)
    a, b = (torch.randn(n, n, device=device, dtype=torch.bfloat16) for _ in range(2))

    def one_matmul():
        torch.mm(a, b)
        synchronize(device)

    timing.timed_calls(one_matmul, 3)
    return timing.matmul_tflops(timing.timed_calls(one_matmul, 20), n)


def dynamo_counters() -> dict:
    """Graphs, graph breaks and recompiles of the compiled step: a recompile inside the timed
    steps would show here (and as an outlier in max); and how many graphs mode "reduce-overhead"
    ran without CUDA graphs (inductor's count; on a CPU: all of them)."""
    try:
        from torch._dynamo.utils import counters
    except ImportError:  # private API: absent is not an error
        return {}
    return {
        "unique_graphs": counters["stats"].get("unique_graphs", 0),
        "graph_breaks": sum(counters["graph_break"].values()),
        "recompiles": sum(counters["recompiles"].values()) if "recompiles" in counters else None,
        "cudagraph_skips": counters["inductor"].get("cudagraph_skips", 0),
    }


def cpu_substitutions(variant, device) -> list:
    """What a CUDA-only setting of `variant` became on this device: said, never silent."""
    if device.type == "cuda":
        return []
    notes = []
    if variant.compile_mode == "reduce-overhead":
        notes.append("mode reduce-overhead: inductor makes no CUDA graphs on a CPU, so the compiled forward+loss "
                     "ran as mode default would (dynamo.cudagraph_skips counts the graphs)")
    return notes


def runtime_info(device, tf32: dict) -> dict:
    return {
        "framework": "torch",
        "device_name": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
        "torch_cuda": torch.version.cuda,
        "cudnn": torch.backends.cudnn.version() if torch.backends.cudnn.is_available() else None,
        "cudnn_benchmark": torch.backends.cudnn.benchmark,
        "tf32": tf32,
        "num_threads": torch.get_num_threads(),
    }


def main() -> None:
    args = timing.child_parser(__doc__).parse_args()
    variant = VARIANTS[args.variant]
    assert variant.framework == "torch", variant
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    tf32 = allow_tf32()
    torch.backends.cudnn.benchmark = True  # fixed shapes: let cuDNN pick its fastest kernels
    torch.manual_seed(0)
    channels_last = variant.layout == "channels_last"
    model = UNet(features=args.features, depth=args.depth).to(device)
    minimal = variant.step_code == "minimal"  # its own step makes its own layouts
    if channels_last and not minimal:
        model = model.to(memory_format=torch.channels_last)
    images, masks = synthetic_batch(model, args.batch, args.size, device, channels_last and not minimal)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)

    if minimal:
        call = build_minimal_call(model, images, masks, device)
    elif variant.task == "train":
        call = build_train_call(variant, model, images, masks, device)
    else:
        call = build_predict_call(variant, model, images, device)
    if variant.compile_mode is not None:
        timing.phase("compile-start")  # lazy: compiles inside the warm-up calls, ends at timing-start
    peaks = PeakAcrossWarmup(device)
    result = timing.warmup_and_time(call, args.warmup, args.steps, peaks)
    if args.profile:
        result["kernels"] = kernels.guarded(kernels.profile_torch, call, on_gpu=device.type == "cuda")
    if variant.compile_mode is not None:
        result["compile_s"] = result["warmup_excess_s"]
        result["compile_method"] = (
            "torch.compile is lazy: wall time of the warm-up calls beyond the same number of steady-state steps"
        )
    else:
        result["compile_s"] = None
        result["compile_method"] = "eager: nothing compiled (warm-up includes cudnn.benchmark autotuning)"
    if variant.compile_mode is not None:
        result["dynamo"] = dynamo_counters()
    result["substitutions"] = cpu_substitutions(variant, device)
    if not minimal:  # the layout the harness's step was handed (channels_last: the C stride is 1)
        result["input_strides"] = list(images.stride())
    result.update(peaks.result())
    result["process_peak_rss_bytes"] = timing.process_peak_rss_bytes()
    result["runtime"] = runtime_info(device, tf32)
    if args.ceiling_n:
        result["matmul_ceiling"] = matmul_ceiling(args.ceiling_n, device)
    timing.emit(result)


if __name__ == "__main__":
    main()
