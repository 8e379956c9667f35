"""The real training loop against the bare step: `unet-jax train --data DIR` timed from its own log.

The harness (benchmarks.jax_step) times the train step on a batch already on the device. A user
runs `unet-jax train`, which reads images, cuts tiles on the host, moves them to the device and
logs. This benchmark writes a folder of real-size images (benchmarks.loop_data), then per
configuration runs, each in a fresh process and under one time budget:

- the CLI, `unet-jax train --preset P --dtype D --data DIR` (with --loss weighted-ce --elastic for
  the third configuration), stopped with Ctrl-C (the CLI's own stop between steps) once its
  metrics.jsonl covers the timed steps. The throughput is the CLI's own: every record of
  metrics.jsonl holds the wall time of its window of steps (synchronised once per window), the
  compile step left out; the first window (warm-up) is dropped, the next ones cover `--steps`;
- the harness's bare step of the same network, dtype and batch (`benchmarks.jax_step`, the
  variant jax-bf16 or jax-fp32: cross-entropy, no augmentation, so for the weight-map + elastic
  configuration the ratio also holds what those cost on the device);
- the host time per batch: the trainer's own `batch_at` on the same folder, in this process.

    python -m benchmarks.train_loop --out DIR                       # the seed network, 120 s budget
    python -m benchmarks.train_loop --out DIR --preset demo --budget-s 400   # a CPU
    python -m benchmarks.train_loop --out DIR --quick               # a tiny network: plumbing only

Jobs run in the order of JOBS (bf16 first) while the budget holds one more of their kind (the
longest of that kind so far); the rest are recorded as skipped. Writes `train_loop.{json,md}`
after every job, so a run cut short keeps what it measured.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import re
import signal
import subprocess
import sys
import tempfile
import time
import types
from pathlib import Path
from typing import Optional

import numpy as np

from benchmarks import subproc
from benchmarks.devices import write_measurement
from benchmarks.loop_data import write_cells_folder
from benchmarks.run import REPO_ROOT, child_command, child_env
from benchmarks.timing import summarize_ms
from benchmarks.variants import VARIANTS


@dataclasses.dataclass(frozen=True)
class LoopConfig:
    name: str
    dtype: str  # --dtype
    options: tuple[str, ...]  # further CLI options
    bare_variant: str  # the harness variant of the same network and dtype


CONFIGS = {c.name: c for c in (
    LoopConfig("bf16", "bfloat16", (), "jax-bf16"),
    LoopConfig("bf16-weighted-elastic", "bfloat16", ("--loss", "weighted-ce", "--elastic"), "jax-bf16"),
    LoopConfig("fp32", "float32", (), "jax-fp32"),
)}
# Most wanted first: bf16 (the GPU's speed), its weight-map + elastic run (same bare step), then fp32.
JOBS = (("cli", "bf16"), ("bare", "jax-bf16"), ("cli", "bf16-weighted-elastic"), ("cli", "fp32"), ("bare", "jax-fp32"))
QUICK_NETWORK = {"features": 4, "depth": 2, "tile_size": 60, "batch_size": 2}
FIRST_STEP = re.compile(r"first step, compilation included: ([0-9.]+) s")


@dataclasses.dataclass(frozen=True)
class Network:
    features: int
    depth: int
    tile_size: int
    batch_size: int

    @classmethod
    def of(cls, preset: str, quick: bool) -> "Network":
        from unet_jax.training.presets import PRESETS

        cfg = PRESETS[preset]
        values = {"features": cfg.model.features, "depth": cfg.model.depth, "tile_size": cfg.tile_size,
                  "batch_size": cfg.batch_size}
        return cls(**{**values, **(QUICK_NETWORK if quick else {})})

    def cli_options(self) -> list[str]:
        return [x for k, v in dataclasses.asdict(self).items() for x in ("--" + k.replace("_", "-"), str(v))]


# ------------------------------------------------------------------ the CLI's run
def train_records(metrics: Path) -> list[dict]:
    """The training records of metrics.jsonl so far (a line still being written is left for later)."""
    if not metrics.exists():
        return []
    records = []
    for line in metrics.read_text().splitlines():
        try:
            record = json.loads(line)
        except json.JSONDecodeError:
            break
        if record.get("split") == "train":
            records.append(record)
    return records


def loop_throughput(records: list[dict], warm_until: int, until: int, batch: int) -> dict:
    """The CLI's throughput over the windows after step `warm_until` up to `until`, from its own records:
    each record's window ran (step - previous step) steps in (those steps / steps_per_s) seconds."""
    windows = []
    previous = warm_until
    for r in records:
        if warm_until < r["step"] <= until:
            steps = r["step"] - previous
            windows.append({"step": r["step"], "steps": steps, "seconds": steps / r["steps_per_s"],
                            "img_per_s": r["img_per_s"], "data_ms_per_step": r["data_ms_per_step"]})
            previous = r["step"]
        elif r["step"] > warm_until:
            previous = r["step"]
    if not windows:
        return {"timed_steps": 0}
    steps, seconds = sum(w["steps"] for w in windows), sum(w["seconds"] for w in windows)
    rates = np.array([w["img_per_s"] for w in windows])
    return {
        "timed_steps": steps, "timed_s": seconds, "windows": len(windows),
        "img_per_s": steps * batch / seconds,
        "window_img_per_s": {"median": float(np.median(rates)), "p10": float(np.percentile(rates, 10)),
                             "p90": float(np.percentile(rates, 90)), "min": float(rates.min()), "max": float(rates.max())},
        "step_ms": 1e3 * seconds / steps,
        # The training thread's wait for each batch (the trainer's data_ms_per_step), step-weighted.
        "host_wait_ms_per_step": sum(w["data_ms_per_step"] * w["steps"] for w in windows) / steps,
    }


def run_cli(config: LoopConfig, network: Network, data: Path, work: Path, timed_steps: int, log_every: int,
            preset: str, deadline: float) -> dict:
    """One `unet-jax train` run, stopped by Ctrl-C once its log covers the warm-up window and `timed_steps`."""
    run_dir = Path(tempfile.mkdtemp(prefix=f"run-{config.name}-", dir=work)) / "run"  # fresh: no old metrics.jsonl
    log_path = work / f"cli-{config.name}.log"
    until = log_every * (1 + -(-timed_steps // log_every))  # whole windows: the warm-up one and the timed ones
    never = until + 100 * log_every  # the run's --steps: it is stopped long before, so no final evaluation is timed
    command = [sys.executable, "-m", "unet_jax", "train", "--preset", preset, "--dtype", config.dtype, "--data", str(data),
               "--run-dir", str(run_dir), "--no-progress", "--steps", str(never), "--log-every", str(log_every),
               "--eval-every", str(never), "--checkpoint-every", str(never), *network.cli_options(), *config.options]
    env, _ = child_env(VARIANTS[config.bare_variant])  # the bare step's environment (allocator, huge pages)
    start = time.monotonic()
    status, detail = "ok", ""
    with open(log_path, "w") as log:
        log.write("$ " + " ".join(command[1:]) + "\n")
        log.flush()
        proc = subprocess.Popen(command, env=env, cwd=REPO_ROOT, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        try:
            while True:
                records = train_records(run_dir / "metrics.jsonl")
                if records and records[-1]["step"] >= until:
                    proc.send_signal(signal.SIGINT)  # the CLI's Ctrl-C: it stops after the step it is in
                    _wait_or_kill(proc, min(60.0, max(5.0, deadline - time.monotonic())))
                    break
                if proc.poll() is not None:
                    status, detail = "failed", f"exit code {proc.returncode} before step {until}"
                    break
                if time.monotonic() > deadline:
                    status, detail = "timeout", f"the budget ran out at step {records[-1]['step'] if records else 0} of {until}"
                    subproc._kill_group(proc)
                    break
                time.sleep(0.2)
        except BaseException:  # never leave a run on the device
            subproc._kill_group(proc)
            raise
    output = log_path.read_text()
    first = FIRST_STEP.search(output)
    result = {"command": "unet-jax " + " ".join(command[3:]), "status": status, "status_detail": detail,
              "wall_s": time.monotonic() - start, "first_step_s": float(first.group(1)) if first else None,
              **loop_throughput(train_records(run_dir / "metrics.jsonl"), log_every, until, network.batch_size)}
    if status != "ok" or not result["timed_steps"]:
        result["output_tail"] = output[-3000:]
    return result


def _wait_or_kill(proc: subprocess.Popen, seconds: float) -> None:
    try:
        proc.wait(timeout=seconds)
    except subprocess.TimeoutExpired:
        subproc._kill_group(proc)


# ------------------------------------------------------------------ the harness's bare step
def run_bare(variant: str, network: Network, work: Path, steps: int, warmup: int, deadline: float) -> dict:
    """benchmarks.jax_step in its own process, as the harness runs it."""
    args = types.SimpleNamespace(steps=steps, warmup=warmup, size=network.tile_size, features=network.features,
                                 depth=network.depth, ceiling_n=0, profile=False)
    command = child_command(VARIANTS[variant], network.batch_size, args)
    env, _ = child_env(VARIANTS[variant])
    outcome = subproc.run_child(command, env, REPO_ROOT, compile_bound_s=None, timeout_s=max(1.0, deadline - time.monotonic()),
                                log_path=str(work / f"bare-{variant}.log"))
    result = {"variant": variant, "status": outcome["status"], "status_detail": outcome["status_detail"],
              "wall_s": outcome["wall_s"]}
    child = outcome["result"]
    if child:
        result.update({"step_ms": child["step_ms"], "compile_s": child["compile_s"], "batch_groups": child.get("batch_groups"),
                       "img_per_s": network.batch_size / (child["step_ms"]["median"] / 1e3)})
    else:
        result["output_tail"] = outcome["output_tail"]
    return result


# ------------------------------------------------------------------ the host's share
def host_batch_ms(config: LoopConfig, network: Network, data: Path, preset: str, batches: int) -> dict:
    """The trainer's `batch_at` for `batches` steps on the folder's images, normalised, as the run holds
    them: the host's work per batch. With a weight map, a float32 map per image stands in for it:
    cutting one costs the same whatever its values, and computing the real ones takes seconds."""
    from unet_jax.data import Normalization, index_folder
    from unet_jax.data.prefetch import Prefetcher
    from unet_jax.training.presets import resolve
    from unet_jax.training.sampling import batch_at

    overrides = {**dataclasses.asdict(network), "dtype": config.dtype, "data": str(data), "data_shards": 1}  # one process
    overrides.update({"loss": "weighted-ce", "elastic": True} if "--elastic" in config.options else {})
    cfg = resolve(preset, overrides)
    samples = index_folder(data, cfg.model.in_channels, cfg.model.num_classes).read()
    samples = samples.map_images(Normalization.from_images(samples.images).apply)
    weights = [mask.astype(np.float32) for mask in samples.masks] if cfg.separates_touching else None
    times = []
    for step in range(1, batches + 1):
        start = time.perf_counter()
        batch_at(samples, cfg, step, weights)
        times.append(time.perf_counter() - start)
    # What the trainer's prefetcher delivers on this host with its accelerator settings (2 workers, 2 ahead), back to back.
    start = time.perf_counter()
    with Prefetcher(lambda step: batch_at(samples, cfg, step, weights), range(1, batches + 1)) as feed:
        for step in range(1, batches + 1):
            feed.next(step)
    return {**summarize_ms(times), "prefetched_ms_per_batch": 1e3 * (time.perf_counter() - start) / batches,
            "sampling_threads": cfg.sampling_threads, "images": len(samples), "host_cpus": os.cpu_count()}


# ------------------------------------------------------------------ the plan under a budget
def run_plan(args, network: Network, data: Path, work: Path, deadline: float, save) -> dict:
    """Every job of JOBS that fits the budget, in order; `save(result)` after each."""
    result = {"preset": args.preset, "network": dataclasses.asdict(network), "timed_steps_asked": args.steps,
              "log_every": args.log_every, "budget_s": args.budget_s, "host_cpus": os.cpu_count(),
              "configs": {}, "bare": {}, "skipped": []}
    took: dict[str, list[float]] = {"cli": [], "bare": []}  # wall seconds of the jobs run so far, by kind
    for kind, name in JOBS:
        left = deadline - time.monotonic()
        expected = max(took[kind], default=args.first_job_s)  # one more job of a kind takes as long as the longest so far
        if left < expected:
            result["skipped"].append({"job": kind, "name": name,
                                      "why": f"{left:.0f} s of the budget left, a {kind} job takes about {expected:.0f} s"})
            save(result)
            continue
        if kind == "cli":
            config = CONFIGS[name]
            entry = {"cli": run_cli(config, network, data, work, args.steps, args.log_every, args.preset, deadline)}
            if entry["cli"]["status"] == "ok":
                entry["host_batch_ms"] = host_batch_ms(config, network, data, args.preset, args.host_batches)
            result["configs"][name] = entry
            job = entry["cli"]
        else:
            job = result["bare"][name] = run_bare(name, network, work, args.bare_steps, args.bare_warmup, deadline)
        took[kind].append(job["wall_s"])
        for config_name, entry in result["configs"].items():
            entry.update(ratio_of(entry, result["bare"].get(CONFIGS[config_name].bare_variant)))
        save(result)
    return result


def ratio_of(entry: dict, bare: Optional[dict]) -> dict:
    """The loop's throughput against the bare step's, where both were measured."""
    cli = entry["cli"].get("img_per_s")
    bare_rate = bare.get("img_per_s") if bare else None
    return {"cli_img_per_s": cli, "bare_step_img_per_s": bare_rate,
            "ratio": cli / bare_rate if cli and bare_rate else None}


# ------------------------------------------------------------------ the report
def _num(value, spec: str = ".1f") -> str:
    return "–" if value is None else format(value, spec)


def _spread(stats: Optional[dict], spec: str = ".1f") -> str:
    """"median (p10–p90)" of a summary, or a dash."""
    if not stats:
        return "–"
    return f"{stats['median']:{spec}} ({stats['p10']:{spec}}–{stats['p90']:{spec}})"


def config_row(name: str, entry: dict, bare: dict, batch: int) -> str:
    cli = entry["cli"]
    bare_rates = None
    if bare.get("step_ms"):  # img/s of the median, slowest-decile and fastest-decile steps
        ms = bare["step_ms"]
        bare_rates = {"median": batch * 1e3 / ms["median"], "p10": batch * 1e3 / ms["p90"], "p90": batch * 1e3 / ms["p10"]}
    status = cli["status"] + (f": {cli['status_detail']}" if cli["status_detail"] else "")
    return (f"| {name} | {_num(entry.get('cli_img_per_s'))} | {_spread(cli.get('window_img_per_s'))} | "
            f"{cli.get('timed_steps', 0)} | {_spread(bare_rates)} | **{_num(entry.get('ratio'), '.3f')}** | "
            f"{_num(cli.get('host_wait_ms_per_step'), '.2f')} | {_spread(entry.get('host_batch_ms'), '.2f')} | "
            f"{_num((entry.get('host_batch_ms') or {}).get('prefetched_ms_per_batch'), '.2f')} | "
            f"{_num(cli.get('first_step_s'))} | {status} |")


def to_markdown(report: dict) -> str:
    r = report["result"]
    net, data = r["network"], r.get("data", {})
    lines = [
        f"# The training loop against the bare step: {report['device']['name']}",
        "",
        f"`unet-jax train --preset {r['preset']}` (features {net['features']}, depth {net['depth']}, tiles "
        f"{net['tile_size']}, batch {net['batch_size']}) on {data.get('images')} images of {data.get('size')} px "
        f"({data.get('formats')}), budget {r['budget_s']:.0f} s; host CPUs {r.get('host_cpus')}; "
        f"versions: {', '.join(f'{k} {v}' for k, v in report['versions'].items() if v)}.",
        "",
        "| config | CLI img/s | CLI img/s per window, median (p10–p90) | timed steps | bare step img/s, median (p10–p90) "
        "| ratio | CLI wait for a batch, ms/step | host sampling, ms/batch (p10–p90) | prefetcher, ms/batch "
        "| first step with compile, s | CLI |",
        "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | --- |",
        *[config_row(name, e, r["bare"].get(CONFIGS[name].bare_variant) or {}, net["batch_size"])
          for name, e in r["configs"].items()],
        "",
    ]
    for variant, bare in r["bare"].items():
        ms = bare.get("step_ms")
        lines.append(f"- bare step {variant}: " + (
            f"{_spread(ms, '.2f')} ms ({ms['n']} steps), compile {bare['compile_s']:.1f} s, job {bare['wall_s']:.0f} s"
            if ms else f"{bare['status']}: {bare['status_detail']}"))
    lines += [f"- CLI {name}: job {e['cli']['wall_s']:.0f} s" for name, e in r["configs"].items()]
    lines += [f"- skipped: {s['job']} {s['name']} ({s['why']})" for s in r["skipped"]]
    lines += ["", "CLI img/s: from the CLI's own metrics.jsonl, its windows after the first (the compile step and a warm-up "
              "window left out), stopped by Ctrl-C before any validation or checkpoint. Bare step: benchmarks.jax_step, "
              "cross-entropy without augmentation on a batch resident on the device (so the weight-map + elastic ratio "
              "includes their device cost). Host sampling: the trainer's batch_at on the same folder, in the benchmark's "
              "process, one batch at a time; prefetcher: the same batches through the trainer's prefetcher as it runs for "
              "an accelerator (2 worker threads, back to back; on a CPU backend the trainer cuts on its own thread), the "
              "host's feeding capacity. The CLI's wait is what its training thread spent "
              "getting each batch.", ""]
    return "\n".join(lines)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--out", required=True, type=Path, help="folder for train_loop.{json,md}")
    parser.add_argument("--preset", default="seed", help="the network, tiles and batch (default: seed)")
    parser.add_argument("--budget-s", type=float, default=120.0, help="the whole run, data writing included")
    parser.add_argument("--steps", type=int, default=100, help="timed steps of each CLI run, after the warm-up window")
    parser.add_argument("--log-every", type=int, default=10, help="the CLI's --log-every: steps per timed window")
    parser.add_argument("--images", type=int, default=30)
    parser.add_argument("--image-size", type=int, default=1024)
    parser.add_argument("--bare-steps", type=int, default=30)
    parser.add_argument("--bare-warmup", type=int, default=3)
    parser.add_argument("--host-batches", type=int, default=20)
    parser.add_argument("--first-job-s", type=float, default=10.0, help="what a job is expected to take before one has run")
    parser.add_argument("--work", type=Path, help="keep the data, runs and logs here (default: a temporary folder)")
    parser.add_argument("--quick", action="store_true", help="a tiny network on small images: plumbing, not a measurement")
    return parser


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    if args.quick:
        args.images, args.image_size, args.steps, args.log_every = 4, 128, 6, 3
        args.bare_steps, args.bare_warmup, args.host_batches = 3, 1, 3
    deadline = time.monotonic() + args.budget_s
    network = Network.of(args.preset, args.quick)
    with tempfile.TemporaryDirectory(prefix="unet-loop-") as scratch:
        work = args.work or Path(scratch)
        work.mkdir(parents=True, exist_ok=True)
        started = time.monotonic()
        data = {**write_cells_folder(work / "data", args.images, args.image_size), "write_s": None}
        data["write_s"] = time.monotonic() - started

        def save(result: dict, echo: bool = False) -> dict:
            return write_measurement(args.out, "train_loop", {**result, "data": data}, to_markdown, echo=echo, quick=args.quick)

        result = run_plan(args, network, work / "data", work, deadline, save)
        save(result, echo=True)
    return 0 if any(e["cli"]["status"] == "ok" for e in result["configs"].values()) else 1


if __name__ == "__main__":
    raise SystemExit(main())
