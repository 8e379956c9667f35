"""`python -m benchmarks.run`: plan the jobs, run each in its own process, write the results.

    python -m benchmarks.run                     # the GPU run (~7 min budget), 572x572 seed network
    python -m benchmarks.run --quick --out DIR   # CPU smoke run (< 60 s): small network, few steps
    python -m benchmarks.run --variants jax-bf16 torch-bf16-cl --batch 16 --steps 50
    python -m benchmarks.run --dry-run           # print the plan and time estimate only
    python -m benchmarks.run --plan fair --profile --shared-compile-cache --budget-s 220   # JAX against PyTorch at
                                                 # its best, same precision (scripts/gpu_check.sh fair)

This process never imports torch or starts a JAX backend (JAX would preallocate the GPU);
the children do the work and print one JSON line each. results.json / results.md are rewritten
after every job, so a run cut short still leaves everything measured so far.
"""

from __future__ import annotations

import argparse
import datetime
import os
import shlex
import shutil
import signal
import sys
import tempfile
import time
from typing import Optional

from benchmarks import devices, flops, plan, report, subproc
from benchmarks.derive import derived_figures
from benchmarks.variants import PLANS, VARIANTS, jobs
from unet_jax.config import UNetConfig
from unet_jax.runtime import hugepages

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
FULL = {"steps": 30, "warmup": 3, "size": 572, "features": 64, "depth": 4, "budget_s": 420.0}
QUICK = {"steps": 8, "warmup": 2, "size": 188, "features": 8, "depth": 4, "budget_s": 50.0, "ceiling_n": 512}


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--quick", action="store_true", help="CPU smoke subset: small network, few steps, no torch.compile")
    p.add_argument("--plan", choices=sorted(PLANS), help="which jobs (default: full; quick with --quick); "
                                                         "sweep = benchmarks.sweep's options and flag sets")
    p.add_argument("--profile", action="store_true", help="profile one extra step per job: its top kernels (benchmarks.kernels)")
    where = p.add_mutually_exclusive_group()
    where.add_argument("--out", help="directory for results.json/.md/.png (default: --out-root/<device slug>)")
    where.add_argument("--out-root", default=os.path.join(REPO_ROOT, "benchmarks", "results"))
    p.add_argument("--log-dir", help="one log per job goes here (default: <out>/logs); scripts/gpu_check.sh "
                                     "keeps them out of $OUT, which brings back only a few files")
    p.add_argument("--variants", nargs="+", metavar="NAME", help=f"subset of: {' '.join(VARIANTS)}")
    p.add_argument("--batch", nargs="+", type=int, help="batch sizes (default: the plan's 16 1 4)")
    p.add_argument("--steps", type=int, help="timed steps per job (default 30; quick 8)")
    p.add_argument("--warmup", type=int, help="untimed calls after compilation (default 3; quick 2)")
    p.add_argument("--compile-timeout", type=float, default=150.0, help="bound on one job's compilation, s")
    p.add_argument("--shared-compile-cache", action="store_true",
                   help="one inductor/triton cache for all torch.compile jobs of the run (the fair plan's budget): "
                        "kernels compiled by an earlier job are reused, and later jobs' compile times are labelled warm")
    p.add_argument("--rounds", type=int, default=1,
                   help="run the plan this many times, every second round in reverse order, so that a machine whose "
                        "speed drifts weighs on every variant alike; the report gives each round's ratios (default 1)")
    p.add_argument("--budget-s", type=float, help="stop starting jobs past this wall time (default 420; quick 50; 0: none)")
    p.add_argument("--size", type=int, help="input tile side (default 572; quick 188)")
    p.add_argument("--features", type=int, help="UNetConfig.features (default 64; quick 8)")
    p.add_argument("--depth", type=int, help="UNetConfig.depth (default 4)")
    p.add_argument("--ceiling-n", type=int, help="side of the bf16 matmul ceiling (default 8192 on GPU, 512 on CPU)")
    p.add_argument("--dry-run", action="store_true", help="print the plan and estimate, run nothing")
    p.add_argument("--assume-gpu", action="store_true", help="estimate with the GPU priors (for --dry-run on a CPU)")
    args = p.parse_args(argv)
    defaults = QUICK if args.quick else FULL
    for key, value in defaults.items():
        if getattr(args, key, None) is None:
            setattr(args, key, value)
    return args


def environment(host: dict) -> dict:
    versions = devices.package_versions()
    versions["nvidia_driver"] = host.get("driver")
    versions["driver_cuda"] = host.get("driver_cuda_version")
    return {
        "versions": versions,
        "xla": devices.xla_environment(),
        "child_env": dict(CHILD_ENV),  # set in every job's process on top of the above
        "jax_config": devices.jax_config_values(),
        "jax_config_all": devices.jax_config_values(subset=False),
    }


def schedule(todo: list, rounds: int) -> list[tuple[int, object, int]]:
    """(round, variant, batch) for every job of every round; even rounds run the plan backwards,
    so that on a machine that drifts during the run early and late jobs trade places."""
    return [(r, v, b) for r in range(1, rounds + 1) for v, b in (todo if r % 2 else todo[::-1])]


def child_command(variant, batch: int, args) -> list[str]:
    module = "benchmarks.jax_step" if variant.framework == "jax" else "benchmarks.torch_step"
    options = {"variant": variant.name, "batch": batch, "steps": args.steps, "warmup": args.warmup,
               "size": args.size, "features": args.features, "depth": args.depth, "ceiling-n": args.ceiling_n}
    command = [sys.executable, "-m", module] + [str(x) for k, v in options.items() for x in (f"--{k}", v)]
    return command + (["--profile"] if args.profile else [])


# Set in every child. JAX allocates on demand rather than taking 75% of the GPU when it starts:
# a child must not fail for memory that something else on the card holds (a pytest process that
# runs this harness holds JAX itself; a killed job's memory may not be back yet). Only the pool
# differs, not the kernels: step times and the allocator's peak_bytes_in_use are unaffected.
CHILD_ENV = {"XLA_PYTHON_CLIENT_PREALLOCATE": "false"}


def child_env(variant, shared_cache: Optional[str] = None) -> tuple[dict, list[str]]:
    """The parent's environment with CHILD_ENV, the repo on PYTHONPATH, and (torch.compile)
    empty caches, so that every compile time is a cold one; or, with `shared_cache`, the run's
    one cache (the caller labels the compile times warm)."""
    env = {**os.environ, **CHILD_ENV}
    env["PYTHONPATH"] = os.pathsep.join(p for p in (REPO_ROOT, env.get("PYTHONPATH")) if p)
    if variant.xla_flags:  # after the user's own flags, so that the variant's win
        env["XLA_FLAGS"] = " ".join(f for f in (env.get("XLA_FLAGS"), variant.xla_flags) if f)
    if variant.with_hugepages:  # glibc reads it when the job's process starts
        env = hugepages.with_hugepages(env)
    scratch = []
    if variant.compile_mode is not None:
        cache = shared_cache or tempfile.mkdtemp(prefix="unet-bench-inductor-")
        env["TORCHINDUCTOR_CACHE_DIR"] = cache
        env["TRITON_CACHE_DIR"] = os.path.join(cache, "triton")
        if not shared_cache:
            scratch.append(cache)
    return env, scratch


def compile_cache_label(shared_cache: Optional[str], compiled_before: int) -> str:
    """What a torch.compile job's compile time measured: "cold", or "warm" where earlier jobs of the
    run had filled the shared cache (kernels and graphs of the same code load instead of compiling)."""
    if shared_cache is None or compiled_before == 0:
        return "cold"
    return f"warm (inductor/triton cache shared with {compiled_before} earlier torch.compile job(s) of this run)"


def job_record(variant, batch: int, outcome: dict, doc: dict, round_: int = 1) -> dict:
    record = {
        "variant": variant.name, "framework": variant.framework, "task": variant.task, "batch": batch, "round": round_,
        "dtype": variant.dtype, "layout": variant.layout,
        "matmul_precision": (variant.precision or "default") if variant.framework == "jax" else None,
        "compile_mode": variant.compile_mode, "description": variant.description,
        "remat": variant.remat if variant.framework == "jax" else None,
        "pin_relu_output": variant.pin_relu_output if variant.framework == "jax" else None,
        "variant_xla_flags": variant.xla_flags or None,
        "compute_precision": variant.peak,
        **({"fused_adam": variant.fused_adam, "compile_scope": variant.compile_scope if variant.compile_mode else None,
            "step_code": variant.step_code} if variant.framework == "torch" else {}),
        "glibc_tunables": outcome.get("glibc_tunables"),
        **({"compile_cache": outcome["compile_cache"]} if "compile_cache" in outcome else {}),
        "status": outcome["status"], "status_detail": outcome.get("status_detail", ""),
        "wall_s": outcome.get("wall_s"),
    }
    child = outcome.get("result")
    if child:
        record.update(child)
        flops_per_image = doc["flops"]["train_per_image" if variant.task == "train" else "forward_per_image"]
        record.update(derived_figures(variant, batch, child["step_ms"], flops_per_image,
                                      doc["device"].get("datasheet_peaks_tflops")))
    elif outcome.get("output_tail"):
        record["output_tail"] = outcome["output_tail"]
    runtime = record.get("runtime", {})
    record["device"] = {k: doc["device"].get(k) for k in ("name", "slug", "kind")}
    record["device"]["framework_device"] = runtime.get("device_name")
    record["versions"] = {**doc["environment"]["versions"],
                          **{k: runtime[k] for k in ("torch_cuda", "cudnn", "backend_platform_version") if k in runtime}}
    record["xla"] = {"XLA_FLAGS": doc["environment"]["xla"]["XLA_FLAGS"], "jax_config": runtime.get("jax_config")}
    return record


def main(argv=None) -> int:
    args = parse_args(argv)
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))  # unwind: kill the child, keep results
    started = time.monotonic()
    host = devices.host_device()
    config = UNetConfig(features=args.features, depth=args.depth)
    if args.ceiling_n is None:
        args.ceiling_n = 8192 if host["kind"] == "gpu" else 512
    out_dir = args.out or os.path.join(args.out_root, host["slug"] + ("-quick" if args.quick else ""))
    if args.quick and not args.out and host["kind"] == "cpu":
        out_dir = os.path.join(args.out_root, "cpu-quick")
    flop_counts = {"forward_per_image": flops.forward_flops(config, args.size),
                   "train_per_image": flops.train_flops(config, args.size), "train_multiplier": flops.TRAIN_MULTIPLIER}
    if args.rounds < 1:
        raise SystemExit(f"--rounds must be at least 1, got {args.rounds}")
    todo = schedule(jobs(PLANS[args.plan or ("quick" if args.quick else "full")], args.variants, args.batch), args.rounds)
    budget = args.budget_s or None
    planner = plan.Planner(host["kind"] == "gpu" or args.assume_gpu,
                           {"train": flop_counts["train_per_image"], "predict": flop_counts["forward_per_image"]},
                           args.steps, args.warmup, args.compile_timeout)
    estimates = [planner.estimate(v, b) for _, v, b in todo]
    fits, planned_s = 0, 0.0
    for estimate in estimates:  # the runner skips a job that doesn't fit and tries the next
        if planned_s + estimate <= (budget or float("inf")):
            fits, planned_s = fits + 1, planned_s + estimate
    print(f"device: {host['name']} -> {out_dir}")
    print(f"plan: {len(todo)} jobs, estimated {sum(estimates):.0f} s in total; budget "
          f"{'none' if budget is None else f'{budget:.0f} s'}: about {fits} fit (~{planned_s:.0f} s), "
          "the rest are recorded as skipped")
    for (r, v, b), est in zip(todo, estimates):
        print(f"  {v.name:32s} batch {b:3d}" + (f"  round {r}" if args.rounds > 1 else "") + f"  ~{est:5.0f} s")
    if args.dry_run:
        return 0

    doc = {
        "schema": "unet-bench/1",
        "started_utc": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "command": shlex.join([os.path.basename(sys.executable), "-m", "benchmarks.run"] + sys.argv[1:]),
        "quick": args.quick, "plan_name": args.plan or ("quick" if args.quick else "full"), "budget_s": budget,
        "device": host, "environment": environment(host),
        "config": {**{k: getattr(args, k) for k in ("size", "features", "depth", "steps", "warmup", "ceiling_n",
                                                    "compile_timeout", "rounds", "shared_compile_cache")},
                   "model": {f: getattr(config, f) for f in ("in_channels", "num_classes", "features", "depth",
                                                               "padding", "upsample", "norm")}},
        "flops": flop_counts,
        "plan": {"jobs": len(todo), "estimate_s": sum(estimates)},
        "results": [],
    }
    log_dir = args.log_dir or os.path.join(out_dir, "logs")
    os.makedirs(log_dir, exist_ok=True)
    shared_cache = tempfile.mkdtemp(prefix="unet-bench-inductor-shared-") if args.shared_compile_cache else None
    compiled_before = 0  # torch.compile jobs that have filled the shared cache so far
    try:
        for index, (round_, variant, batch) in enumerate(todo, 1):
            remaining = None if budget is None else budget - (time.monotonic() - started)
            decision = planner.decide(variant, batch, remaining)
            label = f"[{index}/{len(todo)}] {variant.name} batch {batch}" + (f" round {round_}" if args.rounds > 1 else "")
            log_name = f"{variant.name}-b{batch}" + (f"-r{round_}" if args.rounds > 1 else "") + ".log"
            if not decision.run:
                outcome = {"status": "skipped", "status_detail": decision.reason}
            else:
                print(f"{label}: running (estimate {decision.estimate_s:.0f} s, compile bound "
                      f"{decision.compile_bound_s:.0f} s)", flush=True)
                env, scratch = child_env(variant, shared_cache)
                try:
                    outcome = subproc.run_child(
                        child_command(variant, batch, args), env, REPO_ROOT, decision.compile_bound_s,
                        decision.timeout_s, os.path.join(log_dir, log_name))
                    outcome["glibc_tunables"] = env.get("GLIBC_TUNABLES")
                    if variant.compile_mode is not None:
                        outcome["compile_cache"] = compile_cache_label(shared_cache, compiled_before)
                        compiled_before += shared_cache is not None
                except BaseException:  # SIGTERM / Ctrl-C: record what was cut, then unwind
                    doc["results"].append(job_record(variant, batch, {"status": "interrupted"}, doc, round_))
                    raise
                finally:
                    for path in scratch:
                        shutil.rmtree(path, ignore_errors=True)
            record = job_record(variant, batch, outcome, doc, round_)
            doc["results"].append(record)
            if outcome["status"] == "ok":
                planner.learn(variant, batch, outcome["wall_s"], record)
                print(f"{label}: ok in {outcome['wall_s']:.0f} s: {record['step_ms']['median']:.2f} ms/step, "
                      f"{record['img_per_s']:.1f} img/s, {record['achieved_tflops']:.2f} TFLOP/s", flush=True)
            else:
                print(f"{label}: {outcome['status']}: {outcome.get('status_detail', '')}", flush=True)
            doc["wall_s"] = time.monotonic() - started
            report.write(doc, out_dir, with_plot=False)
    finally:
        if shared_cache:
            shutil.rmtree(shared_cache, ignore_errors=True)
        doc["wall_s"] = time.monotonic() - started
        report.write(doc, out_dir, with_plot=True)
        print(f"wrote {out_dir}/{report.RESULTS_JSON}, {report.RESULTS_MD}, {report.PLOT_PNG} "
              f"after {doc['wall_s']:.0f} s")
    return 0 if any(r["status"] == "ok" for r in doc["results"]) else 1


if __name__ == "__main__":
    sys.exit(main())
