"""Tests of the benchmark harness: the FLOP count (by hand and by two independent counters),
the derived arithmetic, the job planning, and a `--quick` run end to end (a smoke test: it
asserts that every part runs and reports, never a timing)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tarfile

import jax
import numpy as np
import pytest
import torch
from torch.utils.flop_counter import FlopCounterMode

from benchmarks import devices, flops, jax_step, kernels, plan, report, run, timing
from benchmarks.derive import apply_run_ceiling, ceiling_summary, derived_figures
from benchmarks.variants import CPU_PLAN, FAIR_PLAN, FULL_PLAN, PLANS, QUICK_PLAN, UNPLANNED, VARIANTS, jobs
from unet_jax.config import UNetConfig
from unet_jax.model import unet as model_module
from unet_jax.model.unet import UNet
from unet_jax.runtime import hugepages
from unet_torch.model import UNet as TorchUNet

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TINY_CONFIGS = [  # (UNetConfig fields, a valid input side)
    (dict(features=4, depth=2), 44),
    (dict(features=4, depth=2, upsample="bilinear"), 44),
    (dict(features=4, depth=2, norm="batch"), 44),
    (dict(features=4, depth=2, padding="same"), 16),
    (dict(in_channels=3, num_classes=5, features=4, depth=2), 60),
]


def torch_counted_flops(fields: dict, size: int, backward: bool = False) -> int:
    """torch's own FLOP counter on meta tensors: shapes only, so the seed at 572 is instant."""
    with torch.device("meta"):
        model = TorchUNet(**fields)
        images = torch.zeros(1, model.config.in_channels, size, size)
    with FlopCounterMode(display=False) as counter:
        logits = model(images)
        if backward:
            logits.sum().backward()
    return counter.get_total_flops()


def test_seed_network_is_300_9_gflop_forward_and_3x_for_training():
    # The per-layer arithmetic is written out in benchmarks/flops.py's docstring:
    # 150.43 G multiply-adds x 2 = 300.86 GFLOP forward; training 3x = 902.57 GFLOP.
    seed = UNetConfig()
    assert flops.forward_flops(seed, 572) / 1e9 == pytest.approx(300.9, abs=0.05)
    assert flops.forward_flops(seed, 572) == 300_856_848_896
    assert flops.train_flops(seed, 572) / 1e9 == pytest.approx(902.6, abs=0.05)
    assert len(flops.conv_layers(seed, 572)) == 23  # 18 3x3 convs, 4 up-convs, the head


def test_seed_count_matches_torch_flop_counter_forward_and_backward():
    seed_forward = torch_counted_flops({}, 572)
    assert flops.forward_flops(UNetConfig(), 572) == seed_forward
    # Backward skips the first conv's input gradient, so the 3x convention is a hair high.
    assert flops.train_flops(UNetConfig(), 572) / torch_counted_flops({}, 572, backward=True) == pytest.approx(
        1.0, rel=1e-3
    )


@pytest.mark.parametrize("fields,size", TINY_CONFIGS)
def test_tiny_configs_match_torch_flop_counter_exactly(fields, size):
    assert flops.forward_flops(UNetConfig(**fields), size) == torch_counted_flops(fields, size)


@pytest.mark.parametrize("fields,size", [c for c in TINY_CONFIGS if c[0].get("padding") != "same"])
def test_tiny_configs_agree_with_xla_cost_analysis(fields, size, monkeypatch):
    # XLA counts a convolution as 2 FLOPs per multiply-add too (taps on "same" padding
    # excluded, hence valid padding only here), but adds ~1 FLOP per element for every
    # elementwise op -- bias add, ReLU, pooling compares, BatchNorm, resize -- which the analytic
    # count leaves out. So XLA must exceed it, by a few FLOPs per conv output element.
    # XLA:CPU's count wherever this runs (on a GPU machine too): the bound was set from it, and
    # XLA:GPU's cost analysis sees library calls (cuDNN) and fusions instead of plain HLO ops.
    # Every conv as a convolution: XLA counts the multiply-adds that inference computes for
    # convs of up to 4 input channels (cpu_kernels.few_channel_conv) as separate element-wise ops.
    monkeypatch.setattr(model_module, "FEW_CHANNELS", 0)
    config = UNetConfig(**fields)
    model = UNet(config)
    images = jax.device_put(np.zeros((1, size, size, config.in_channels), np.float32), jax.devices("cpu")[0])
    variables = jax.eval_shape(model.init, jax.random.key(0), images)
    xla = jax.jit(model.apply).lower(variables, images).compile().cost_analysis()["flops"]
    analytic = flops.forward_flops(config, size)
    elements = sum(layer.output_elements for layer in flops.conv_layers(config, size))
    assert 0 < xla - analytic <= 8 * elements


def test_flop_count_rejects_invalid_sizes():
    with pytest.raises(ValueError, match="Nearest valid input sizes"):
        flops.forward_flops(UNetConfig(), 570)


def test_derived_figures_arithmetic():
    variant = VARIANTS["jax-bf16"]
    step_ms = {"median": 100.0, "p10": 80.0, "p90": 200.0}
    peaks = devices.datasheet_peaks("NVIDIA H200")
    figures = derived_figures(variant, 16, step_ms, 1e12, peaks)
    assert figures["img_per_s"] == pytest.approx(160.0)
    assert figures["img_per_s_low_high"] == pytest.approx([80.0, 200.0])
    assert figures["achieved_tflops"] == pytest.approx(160.0)
    assert figures["mfu_datasheet"] == pytest.approx(160.0 / 989.0)
    assert figures["mfu_datasheet_peak"]["column"] == "bf16"
    cpu = derived_figures(VARIANTS["torch-fp32"], 1, step_ms, 1e12, None)
    assert cpu["mfu_datasheet"] is None and cpu["mfu_datasheet_null_reason"]


def test_one_matmul_ceiling_per_run_the_higher_of_the_two_frameworks():
    def job(framework, tflops, ceiling, precision="bf16"):
        return {"framework": framework, "achieved_tflops": tflops, "matmul_ceiling": {"median_tflops": ceiling},
                "compute_precision": precision}

    results = [job("jax", 200.0, 800.0), job("jax", 100.0, 820.0), job("jax", 50.0, 810.0),
               job("torch", 300.0, 1000.0), {"framework": "torch", "status": "skipped"}, job("jax", 150.0, 805.0, "tf32")]
    assert ceiling_summary(results) == {"jax": 810.0, "torch": 1000.0}
    assert apply_run_ceiling(results) == {"tflops": 1000.0, "framework": "torch"}
    # Both frameworks' rows are fractions of the same 1000 TFLOP/s, not of their own ceilings;
    # a TF32 row is not divided by a bf16 ceiling at all.
    assert [r.get("mfu_measured_bf16_ceiling") for r in results] == pytest.approx([0.2, 0.1, 0.05, 0.3, None, None])
    assert "mfu_measured_bf16_ceiling" not in results[-2]
    assert "tf32" in results[-1]["mfu_measured_bf16_ceiling_null_reason"]
    unmeasured = [{"framework": "jax", "achieved_tflops": 1.0, "dtype": "bf16"}]
    assert apply_run_ceiling(unmeasured) is None and unmeasured[0]["mfu_measured_bf16_ceiling"] is None


def test_datasheet_cards_from_driver_names():
    assert devices.datasheet_card("NVIDIA H100 80GB HBM3") == "H100 SXM"
    assert devices.datasheet_card("NVIDIA H100 PCIe") == "H100 PCIe"
    assert devices.datasheet_card("NVIDIA H200") == "H200"
    assert devices.datasheet_card("NVIDIA H100 NVL") is None  # unknown rather than a guess
    assert devices.datasheet_peaks("NVIDIA H100 PCIe")["tf32"] == 378.0
    assert devices.slug("NVIDIA H200") == "nvidia-h200"


def test_default_precision_fp32_is_judged_against_tf32():
    assert VARIANTS["jax-fp32"].peak == VARIANTS["torch-fp32"].peak == "tf32"
    assert VARIANTS["jax-fp32-highest"].peak == "fp32"


def test_jobs_follow_the_plan_and_filters():
    full = jobs(FULL_PLAN)
    assert len(full) == len(set(full))
    assert {b for _, b in full} == {1, 4, 16}
    assert {v.name for plan in PLANS.values() for v, _ in jobs(plan)} == set(VARIANTS) - set(UNPLANNED)  # none left out
    assert [(v.name, b) for v, b in jobs(FULL_PLAN, ["jax-bf16"])] == [("jax-bf16", 16), ("jax-bf16", 1), ("jax-bf16", 4)]
    assert {b for _, b in jobs(FULL_PLAN, None, [8])} == {8}
    quick = {v.framework for v, _ in jobs(QUICK_PLAN)}
    assert quick == {"jax", "torch"}
    with pytest.raises(ValueError, match="unknown variants"):
        jobs(FULL_PLAN, ["nope"])


def test_rounds_alternate_the_plans_order():
    todo = jobs(CPU_PLAN)[:3]
    assert run.schedule(todo, 1) == [(1, v, b) for v, b in todo]
    assert [(r, v.name) for r, v, _ in run.schedule(todo, 3)] == [
        (r, todo[i][0].name) for r, order in ((1, (0, 1, 2)), (2, (2, 1, 0)), (3, (0, 1, 2))) for i in order]


def _job(variant, framework, ms, round_=1, task="train", status="ok", dtype="fp32", **extra):
    return {"variant": variant, "framework": framework, "task": task, "batch": 8, "round": round_, "status": status,
            "step_ms": {"median": ms}, "dtype": dtype, **extra}


def test_the_standing_pairs_jax_with_the_fastest_torch_variant_of_its_round_and_precision():
    results = [_job("jax-fp32", "jax", 100.0, 1), _job("torch-fp32", "torch", 90.0, 1), _job("torch-fp32-cl", "torch", 80.0, 1),
               _job("torch-fp32", "torch", 120.0, 2), _job("jax-fp32", "jax", 100.0, 2),
               _job("torch-bf16-cl", "torch", 40.0, 1, dtype="bf16"),  # faster, but not TF32: not jax-fp32's yardstick
               _job("jax-bf16", "jax", 50.0, 1, dtype="bf16"),
               _job("predict-jax-fp32", "jax", 10.0, 1, "predict"),  # no torch row to compare: left out
               _job("jax-bf16", "jax", 50.0, 2, status="failed", dtype="bf16")]
    assert report.standing(results) == {("train", 8, "jax-fp32"): {1: (pytest.approx(0.8), "torch-fp32-cl"),
                                                                   2: (pytest.approx(1.2), "torch-fp32")},
                                        ("train", 8, "jax-bf16"): {1: (pytest.approx(0.8), "torch-bf16-cl")}}
    table = "\n".join(report._standing(results, 2))
    assert "| train | 8 | tf32 | `jax-fp32` | `torch-fp32-cl`, `torch-fp32` | 0.80× | 1.20× | 1.00× |" in table
    assert "| train | 8 | bf16 | `jax-bf16` | `torch-bf16-cl` | 0.80× | – | 0.80× |" in table


def test_the_harness_is_checked_against_the_minimal_step_of_its_precision():
    results = [_job("torch-compile-bf16-cl-fused", "torch", 33.5, dtype="bf16", step_code="harness"),
               _job("torch-compile-bf16-cl", "torch", 37.0, dtype="bf16"),  # older records: no step_code, the harness
               _job("torch-minimal-compile-bf16-cl", "torch", 33.0, dtype="bf16", step_code="minimal"),
               _job("torch-compile-fp32-cl-fused", "torch", 70.0, step_code="harness")]  # no minimal fp32: no check
    ((batch, round_, precision, harness, minimal, ratio),) = report.harness_check(results)
    assert (batch, round_, precision, harness["variant"], minimal["variant"]) == (
        8, 1, "bf16", "torch-compile-bf16-cl-fused", "torch-minimal-compile-bf16-cl")
    assert ratio == pytest.approx(33.5 / 33.0)
    assert any(line.endswith("| 1.015 | yes |") for line in report._harness_check(results))
    results[0]["step_ms"]["median"] = 34.5  # 4.5% slower than the minimal step: the harness fails its check
    assert any(line.endswith("| 1.045 | no |") for line in report._harness_check(results))


def test_kernel_labels_never_print_two_kernels_alike():
    long = "void at::native::elementwise_kernel<128, 4, at::native::gpu_kernel_impl_nocast<at::native::"
    names = [long + "direct_copy_kernel_cuda(at::TensorIteratorBase&)::{lambda()#3}" + "x" * 60,
             long + "direct_copy_kernel_cuda(at::TensorIteratorBase&)::{lambda()#3}" + "x" * 59 + "y",
             long + "BUnaryFunctor<float, float, float, at::native::binary_internal::MulFunctor<float> > >", "short"]
    labels = report.kernel_labels(names)
    assert len(set(labels)) == len(names) and labels[-1] == "short"
    assert labels[0].startswith("elementwise_kernel<128, 4, gpu_kernel_impl_nocast<direct_copy_kernel_cuda")
    assert labels[0] == names[0].removeprefix("void ").replace("at::native::", "")  # differs from [1] only at its end
    assert len(labels[2]) == 81 and labels[2].endswith("…")


def test_kernel_tables_list_every_kernel_of_at_least_one_percent():
    totals = {f"kernel_{i}": 100.0 for i in range(30)} | {f"tiny_{i}": 1.0 for i in range(50)}
    profile = kernels._top(totals, {name: 1 for name in totals}, "test")
    assert len(profile["top"]) == 30 and profile["rest"]["kernels"] == 50  # 100 of 3050 each: 3.3%
    assert profile["rest"]["ms"] == pytest.approx(0.05)
    table = "\n".join(report._kernel_sections([{"variant": "v", "batch": 1, "kernels": profile}]))
    assert table.count("| `kernel_") == 30 and "| 50 more, each under 1% | 0.05 |" in table


def test_jax_jobs_and_the_hugepages_torch_variants_start_with_glibcs_huge_page_tunable(monkeypatch):
    # As `unet-jax` runs (unet_jax/runtime/hugepages.py), where this machine acts on it; PyTorch's default
    # variants as its users run it. The report says which jobs had it.
    monkeypatch.delenv("GLIBC_TUNABLES", raising=False)
    monkeypatch.setattr(hugepages, "this_machine", lambda: ("madvise", (2, 36)))
    tunables = {name: run.child_env(VARIANTS[name])[0].get("GLIBC_TUNABLES")
                for name in ("jax-fp32", "predict-jax-fp32", "torch-fp32", "torch-fp32-hugepages")}
    assert tunables == {"jax-fp32": "glibc.malloc.hugetlb=1", "predict-jax-fp32": "glibc.malloc.hugetlb=1",
                        "torch-fp32": None, "torch-fp32-hugepages": "glibc.malloc.hugetlb=1"}
    rows = [{"variant": name, "glibc_tunables": value} for name, value in tunables.items()]
    assert report._job_tunables(rows) == [
        "- Jobs' GLIBC_TUNABLES: `glibc.malloc.hugetlb=1` in `jax-fp32`, `predict-jax-fp32`, `torch-fp32-hugepages`",
        "- Jobs without GLIBC_TUNABLES: `torch-fp32`"]


def test_planner_skips_what_does_not_fit_and_shortens_compile_bounds():
    planner = plan.Planner(True, {"train": 902.6e9, "predict": 300.9e9}, steps=30, warmup=3, compile_timeout=150)
    assert planner.decide(VARIANTS["jax-fp32"], 16, remaining_s=5).run is False
    assert "run budget" in planner.decide(VARIANTS["jax-fp32"], 16, remaining_s=5).reason
    squeezed = planner.decide(VARIANTS["torch-compile-autotune-bf16-cl"], 16, remaining_s=100)
    assert squeezed.run and plan.MIN_COMPILE_BOUND_S <= squeezed.compile_bound_s < 150
    assert squeezed.timeout_s <= 100


def test_torch_children_turn_tf32_on_in_both_of_torchs_apis():
    # A fresh process: the setting is global. Every view must read without raising (torch
    # raises on reading one API while the other disagrees: inductor's max-autotune reads the
    # legacy one) and without a warning, and all must say TF32.
    check = """if True:
        import json, torch
        from benchmarks.torch_step import allow_tf32
        allow_tf32()
        views = {"legacy_conv": torch.backends.cudnn.allow_tf32, "legacy_matmul": torch.backends.cuda.matmul.allow_tf32,
                 "float32_matmul_precision": torch.get_float32_matmul_precision()}
        if hasattr(torch.backends.cudnn, "conv"):
            views["conv"] = torch.backends.cudnn.conv.fp32_precision
            views["matmul"] = torch.backends.cuda.matmul.fp32_precision
        print(json.dumps(views))
    """
    proc = subprocess.run([sys.executable, "-W", "error", "-c", check], cwd=REPO_ROOT, capture_output=True, text=True,
                          timeout=120, env={**os.environ, "PYTHONPATH": REPO_ROOT})
    assert proc.returncode == 0, proc.stderr[-3000:]
    views = json.loads(proc.stdout.strip().splitlines()[-1])
    assert views.pop("float32_matmul_precision") in ("high", "medium")
    assert set(views.values()) <= {True, "tf32"}, views


def test_step_statistics():
    stats = timing.summarize_ms([0.001 * i for i in range(1, 101)])
    assert stats["n"] == 100 and stats["min"] == pytest.approx(1.0) and stats["max"] == pytest.approx(100.0)
    assert stats["median"] == pytest.approx(50.5) and stats["p10"] < stats["p90"]


def test_the_memory_peak_is_reset_between_warm_up_and_timed_steps():
    """The step peak must leave out the warm-up's autotuning: the hook runs after the last
    warm-up call and before the first timed one."""
    calls = []
    timing.warmup_and_time(lambda: calls.append("step"), 2, 3, after_warmup=lambda: calls.append("reset"))
    assert calls == ["step", "step", "reset", "step", "step", "step"]


def test_jax_step_peak_is_live_bytes_plus_temporaries_plus_fresh_outputs():
    resident = jax_step.ResidentBytes()
    resident.between_steps = 1000  # state and batch, as bytes_in_use reads them on a GPU
    compiled = {"compiled_temp_bytes": 300, "compiled_output_bytes": 410, "compiled_alias_bytes": 400}
    assert resident.step_peak(compiled)["step_peak_memory_bytes"] == 1000 + 300 + 10
    assert jax_step.ResidentBytes().step_peak(compiled) == {}  # a CPU: no allocator statistics


@pytest.mark.slow
def test_quick_run_reports_both_frameworks(tmp_path):
    """`benchmarks.run --quick` through `scripts/gpu_check.sh bench`, the GPU machine's command
    (QUICK=1: the same steps on the quick plan), so that its output layout is checked too: the
    device tool brings back at most 8 files, at most 2 folders below $OUT."""
    out = tmp_path / "out"
    env = {**os.environ, "PYTHONPATH": REPO_ROOT, "OUT": str(out), "PYTHON": sys.executable, "QUICK": "1"}
    env.pop("XLA_PYTHON_CLIENT_PREALLOCATE", None)  # the script must set it itself
    proc = subprocess.run(
        ["bash", "scripts/gpu_check.sh", "bench"], cwd=REPO_ROOT, env=env, capture_output=True, text=True, timeout=400,
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    files = [p for p in out.rglob("*") if p.is_file()]
    assert len(files) <= 8 and all(len(p.relative_to(out).parts) <= 3 for p in files), files
    (folder,) = out.iterdir()
    assert sorted(p.name for p in folder.iterdir()) == [
        "bench_logs.tar.gz", "img_per_s.png", "results.json", "results.md", "system.txt"]
    doc = json.loads((folder / "results.json").read_text())
    ok = [r for r in doc["results"] if r["status"] == "ok"]
    for framework in ("jax", "torch"):
        rows = [r for r in ok if r["framework"] == framework]
        assert rows, f"no {framework} variant succeeded: {[(r['variant'], r['status']) for r in doc['results']]}"
        assert all(r["img_per_s"] > 0 and r["step_ms"]["n"] == doc["config"]["steps"] for r in rows)
    for r in doc["results"]:
        assert {"python", "jax", "jaxlib", "flax", "optax", "torch"} <= set(r["versions"])
        assert r["versions"]["python"] and r["device"]["name"] and "XLA_FLAGS" in r["xla"]
    for r in ok:
        assert r["peak_memory_bytes"] is not None or r["peak_memory_null_reason"]
        assert r["process_peak_rss_bytes"] > 0 and r["matmul_ceiling"]["median_tflops"] > 0
    assert doc["environment"]["child_env"]["XLA_PYTHON_CLIENT_PREALLOCATE"] == "false"
    markdown = (folder / "results.md").read_text()
    assert "| task | variant | batch |" in markdown and "jax-fp32" in markdown
    assert (folder / "img_per_s.png").stat().st_size > 0
    with tarfile.open(folder / "bench_logs.tar.gz") as tar:
        names = set(tar.getnames())
    assert {"./run.log", "./input_pipeline.json", "./input_pipeline.md"} <= names
    assert {f"./logs/{r['variant']}-b{r['batch']}.log" for r in doc["results"] if r["status"] != "skipped"} <= names
    assert f"device_slug: {folder.name}\n" in (folder / "system.txt").read_text()


def test_channels_last_input_has_channels_last_strides_even_with_one_channel():
    from benchmarks.torch_step import synthetic_batch

    images, _ = synthetic_batch(TorchUNet(features=4, depth=2), 2, 44, torch.device("cpu"), channels_last=True)
    assert images.shape == (2, 1, 44, 44) and images.stride() == (44 * 44, 1, 44, 1)
    nchw = torch.zeros(2, 1, 44, 44)  # what .contiguous(memory_format=...) would have kept
    assert nchw.contiguous(memory_format=torch.channels_last).stride() == nchw.stride()


def test_the_minimal_step_trains_as_the_harness_step_does():
    """Uncompiled (the compiler is its argument), one step of the minimal step and of
    unet_torch.train_step under the same bf16 autocast and fused Adam: the same weights after."""
    from benchmarks.torch_minimal import build_minimal_step
    from benchmarks.torch_step import synthetic_batch
    from unet_torch.train_step import make_torch_optimizer, train_step

    torch.manual_seed(0)
    reference = TorchUNet(features=4, depth=2)
    minimal = TorchUNet(features=4, depth=2)
    minimal.load_state_dict(reference.state_dict())
    images, masks = synthetic_batch(reference, 2, 44, torch.device("cpu"), channels_last=False)
    build_minimal_step(minimal, images, masks, compiler=lambda f: f)()
    optimizer = make_torch_optimizer(reference.parameters(), "adam", 1e-3, fused=True)
    train_step(reference.to(memory_format=torch.channels_last), optimizer, images.to(memory_format=torch.channels_last),
               masks, autocast_dtype=torch.bfloat16)
    moved = 0
    for (name, a), b in zip(reference.named_parameters(), minimal.parameters()):
        torch.testing.assert_close(a, b, rtol=0, atol=0, msg=name)  # the same ops in the same order: bit for bit
        moved += 1
    assert moved == len(list(reference.parameters())) and optimizer.defaults["fused"] is True


def test_torch_compile_jobs_get_a_cold_cache_or_the_runs_shared_one_labelled_warm():
    env, scratch = run.child_env(VARIANTS["torch-compile-bf16-cl-fused"])
    assert scratch == [env["TORCHINDUCTOR_CACHE_DIR"]]
    for path in scratch:
        os.rmdir(path)
    env, scratch = run.child_env(VARIANTS["torch-compile-bf16-cl-fused"], "/tmp/shared")
    assert env["TORCHINDUCTOR_CACHE_DIR"] == "/tmp/shared" and scratch == []  # the run removes it at its end
    assert run.compile_cache_label(None, 3) == run.compile_cache_label("/tmp/shared", 0) == "cold"
    assert run.compile_cache_label("/tmp/shared", 2).startswith("warm")
    row = report._row({"task": "train", "variant": "v", "batch": 1, "status": "ok", "compile_s": 12.0,
                       "compile_cache": run.compile_cache_label("/tmp/shared", 1),
                       "step_ms": {"median": 1.0, "p10": 1.0, "p90": 1.0}}, 1)
    assert "| 12.0 (warm) |" in row


def test_the_fair_plan_leads_with_bf16_batch_16_and_compares_like_with_like():
    fair = jobs(FAIR_PLAN)
    assert [(v.name, b) for v, b in fair[:6]] == [
        ("jax-bf16", 16), ("torch-compile-bf16-cl-fused", 16), ("torch-minimal-compile-bf16-cl", 16),
        ("jax-bf16-pinned-relu", 16), ("jax-bf16", 1), ("torch-compile-cudagraphs-bf16-cl-fused", 1)]
    for variant, batch in fair:  # every JAX job has a PyTorch job of its precision and batch in the plan
        if variant.framework == "jax":
            assert any(v.framework == "torch" and v.peak == variant.peak and b == batch for v, b in fair), variant.name
        else:  # and PyTorch at its best: compiled, fused Adam, channels_last
            assert variant.compile_mode and variant.fused_adam and variant.layout == "channels_last", variant.name
    assert VARIANTS["torch-compile-cudagraphs-bf16-cl-fused"].compile_mode == "reduce-overhead"


def test_a_cuda_only_setting_run_on_a_cpu_says_so():
    from benchmarks.torch_step import cpu_substitutions

    cpu, gpu = torch.device("cpu"), torch.device("cuda")
    assert "no CUDA graphs" in cpu_substitutions(VARIANTS["torch-compile-cudagraphs-bf16-cl-fused"], cpu)[0]
    assert cpu_substitutions(VARIANTS["torch-compile-bf16-cl-fused"], cpu) == []
    assert cpu_substitutions(VARIANTS["torch-compile-cudagraphs-bf16-cl-fused"], gpu) == []


@pytest.mark.slow
def test_the_fair_mode_of_gpu_check_runs_the_fair_plan_with_a_shared_cache(tmp_path):
    """`scripts/gpu_check.sh fair`, the device command, on this CPU at a tiny size: JAX bf16, the
    harness's fused-Adam torch.compile step and the minimal step (two torch.compile jobs, the
    second on the warm shared cache), each reported against its own precision, at most 8 files
    back in at most 2 folders."""
    out = tmp_path / "out"
    env = {**os.environ, "PYTHONPATH": REPO_ROOT, "OUT": str(out), "PYTHON": sys.executable, "QUICK": "1", "BENCH_S": "900"}
    variants = ["jax-bf16", "torch-compile-bf16-cl-fused", "torch-minimal-compile-bf16-cl"]
    proc = subprocess.run(
        ["bash", "scripts/gpu_check.sh", "fair", "--variants", *variants, "--batch", "2", "--size", "44", "--features", "4",
         "--depth", "2", "--steps", "3", "--warmup", "2"], cwd=REPO_ROOT, env=env, capture_output=True, text=True, timeout=1000)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    files = [p for p in out.rglob("*") if p.is_file()]
    assert len(files) <= 8 and all(len(p.relative_to(out).parts) <= 3 for p in files), files
    (folder,) = out.iterdir()
    assert folder.name.endswith("-fair")
    doc = json.loads((folder / "results.json").read_text())
    assert doc["plan_name"] == "fair" and doc["config"]["shared_compile_cache"]
    assert [(r["variant"], r["status"]) for r in doc["results"]] == [(v, "ok") for v in variants]
    caches = [r["compile_cache"] for r in doc["results"] if r["framework"] == "torch"]
    assert caches[0] == "cold" and caches[1].startswith("warm")
    assert all(r["kernels"]["top"] for r in doc["results"])
    markdown = (folder / "results.md").read_text()
    assert "| train | 2 | bf16 | `jax-bf16` |" in markdown and "## The harness's best PyTorch against the minimal step" in markdown
