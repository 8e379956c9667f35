"""The human-readable outputs of a run: a markdown table and an img/s bar plot.

Both are rebuilt from `results.json` alone, so a run that was killed half-way can still be
reported: `python -m benchmarks.report benchmarks/results/nvidia-h200`.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics

from benchmarks.derive import apply_run_ceiling, ceiling_summary, compute_precision, run_ceiling
from benchmarks.kernels import MIN_SHARE

RESULTS_JSON, RESULTS_MD, PLOT_PNG = "results.json", "results.md", "img_per_s.png"
GIB = 2.0**30


def _num(value, fmt: str, missing: str = "–") -> str:
    return missing if value is None else format(value, fmt)


def _memory(record: dict) -> str:
    if record.get("peak_memory_bytes") is not None:
        return f"{record['peak_memory_bytes'] / GIB:.2f} GiB"
    if record.get("process_peak_rss_bytes") is not None:
        return f"RSS {record['process_peak_rss_bytes'] / GIB:.2f} GiB (process)"
    return "–"


def _row(r: dict, rounds: int) -> str:
    ok = r["status"] == "ok"
    step = r.get("step_ms") or {}
    timing = f"{step['median']:.2f} ({step['p10']:.2f}–{step['p90']:.2f})" if ok else "–"
    status = "ok" if ok else f"{r['status']}: {r.get('status_detail', '')}"
    cells = [
        r["task"], f"`{r['variant']}`" + (f" (round {r.get('round', 1)})" if rounds > 1 else ""), str(r["batch"]), status, timing,
        _num(r.get("img_per_s"), ".1f"), _num(r.get("achieved_tflops"), ".2f"),
        _num(r.get("mfu_datasheet"), ".1%"), _num(r.get("mfu_measured_bf16_ceiling"), ".1%"),
        _num(r.get("compile_s"), ".1f") + (" (warm)" if str(r.get("compile_cache", "")).startswith("warm") else ""),
        _num(r.get("warmup_s"), ".1f"), _memory(r) if ok else "–",
        _num(r["step_peak_memory_bytes"] / GIB if r.get("step_peak_memory_bytes") is not None else None, ".2f"),
        _num(r["compiled_temp_bytes"] / GIB if r.get("compiled_temp_bytes") is not None else None, ".2f"),
    ]
    return "| " + " | ".join(cells) + " |"


def markdown(doc: dict) -> str:
    device, env, cfg = doc["device"], doc["environment"], doc["config"]
    versions = env["versions"]
    ceilings = ceiling_summary(doc["results"])
    ceiling = run_ceiling(doc["results"])
    peaks = device.get("datasheet_peaks_tflops")
    n = cfg.get("ceiling_n")
    lines = [
        f"# U-Net benchmark: {device['name']}" + (" (quick smoke run: not a measurement)" if doc["quick"] else ""),
        "",
        f"- Model: UNetConfig(features={cfg['features']}, depth={cfg['depth']}), {cfg['size']}×{cfg['size']} tiles; "
        "train = Adam(1e-3) + cross-entropy step, predict = forward in inference mode; synthetic data on the device.",
        f"- FLOPs per image (analytic, `benchmarks/flops.py`): forward {doc['flops']['forward_per_image'] / 1e9:.2f} "
        f"GFLOP, train {doc['flops']['train_per_image'] / 1e9:.2f} GFLOP (3× forward).",
        f"- Method: one process per row; warm-up excluded; median of {cfg['steps']} synchronised steps, "
        f"spread p10–p90; {cfg['warmup']} warm-up calls; cold compiles (JAX jobs turn the persistent "
        "compilation cache off, torch.compile jobs get empty inductor/triton caches)"
        + ("; except that torch.compile jobs share one inductor/triton cache (`--shared-compile-cache`): "
           "their compile times after the run's first are warm, marked so." if cfg.get("shared_compile_cache") else "."),
        "- Datasheet peaks: " + (
            f"{peaks['card']}: bf16 {peaks['bf16']}, tf32 {peaks['tf32']}, fp32 {peaks['fp32']} TFLOP/s dense "
            f"({peaks['source']})" if peaks else "none for this device, so no datasheet MFU."),
        f"- Measured bf16 matmul ceiling ({n}³, median over rows): "
        + (", ".join(f"{fw} {v:.2f} TFLOP/s" for fw, v in sorted(ceilings.items())) or "not measured")
        + (f"; \"MFU vs bf16 matmul\" divides every row by the higher one, {ceiling['tflops']:.2f} TFLOP/s "
           f"({ceiling['framework']})" if ceiling else ""),
        "- Versions: " + ", ".join(f"{k} {v}" for k, v in versions.items() if v is not None),
        f"- XLA_FLAGS: `{env['xla']['XLA_FLAGS'] or '(empty)'}`; jax config: "
        + ", ".join(f"{k}={v}" for k, v in env.get("jax_config", {}).items()),
        *_job_flags(doc["results"]),
        *_job_tunables(doc["results"]),
        f"- Run: {doc['started_utc']}, {doc.get('wall_s', 0):.0f} s wall, budget "
        f"{_num(doc.get('budget_s'), '.0f', 'none')}{' s' if doc.get('budget_s') else ''}; "
        f"command `{doc['command']}`.",
        "",
        "| task | variant | batch | status | step ms median (p10–p90) | img/s | TFLOP/s | MFU datasheet "
        "| MFU vs bf16 matmul | compile s | warm-up s | peak memory | step peak GiB | XLA temporaries GiB |",
        "| --- | --- | ---: | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    lines += [_row(r, cfg.get("rounds", 1)) for r in doc["results"]]
    lines += _standing(doc["results"], cfg.get("rounds", 1))
    lines += _harness_check(doc["results"])
    lines += _kernel_sections(doc["results"])
    lines += [
        "",
        "compile s: JAX `lower()+compile()` before the first call; torch.compile: warm-up time beyond "
        "steady-state steps; eager: none. warm-up s: wall time of the untimed calls. Peak memory: "
        "device allocator peak over the whole run, autotuning included (jax `peak_bytes_in_use`, "
        "`torch.cuda.max_memory_allocated`), or on CPU the process RSS peak, labelled. Step peak (GPU): the "
        "timed steps alone, without the compile's and cudnn.benchmark's algorithm search: torch's allocator "
        "peak reset after the warm-up; for JAX, which cannot reset its peak, the bytes live after the warm-up "
        "plus the compiled step's temporaries and new outputs. XLA temporaries: the compiled JAX step's "
        "`memory_analysis()`.",
        "",
    ]
    return "\n".join(lines)


def _job_flags(results) -> list:
    """One line per XLA_FLAGS that JAX jobs ran under beyond the run's own: the library's
    (`unet_jax.runtime.xla_cpu`, as `unet-jax` sets them) and the variants'."""
    flags = {}
    for r in results:
        if r.get("framework") == "jax" and r.get("xla_flags") is not None:
            flags.setdefault(r["xla_flags"], []).append(f"`{r['variant']}`")
    if len(flags) == 1 and "" in flags:
        return []
    return [f"- JAX jobs' XLA_FLAGS: `{value or '(empty)'}` in {', '.join(dict.fromkeys(names))}"
            for value, names in flags.items()]


def _job_tunables(results) -> list:
    """One line per GLIBC_TUNABLES that jobs ran under (unet_jax/runtime/hugepages.py), where any did."""
    tunables = {}
    for r in results:
        if "glibc_tunables" in r:  # results from before this field have none to show
            tunables.setdefault(r["glibc_tunables"], []).append(f"`{r['variant']}`")
    if set(tunables) <= {None}:
        return []
    return [f"- Jobs' GLIBC_TUNABLES: `{value}` in {', '.join(dict.fromkeys(names))}" if value else
            f"- Jobs without GLIBC_TUNABLES: {', '.join(dict.fromkeys(names))}"
            for value, names in tunables.items()]


def fastest_torch(results: list) -> dict:
    """{(task, batch, round, compute precision): the fastest ok torch record of that key}."""
    fastest = {}
    for r in results:
        if r["status"] == "ok" and r["framework"] == "torch":
            key = (r["task"], r["batch"], r.get("round", 1), compute_precision(r))
            if key not in fastest or r["step_ms"]["median"] < fastest[key]["step_ms"]["median"]:
                fastest[key] = r
    return fastest


def standing(results: list) -> dict:
    """{(task, batch, jax variant): {round: (speed, torch variant)}}: the JAX job against the fastest
    torch variant of the same task, batch, round and compute precision (bf16 with bf16, TF32 with
    TF32), where speed = the torch step's median time / the JAX step's: above 1, JAX is ahead.
    Rounds pair jobs that ran minutes apart rather than a whole run apart."""
    fastest = fastest_torch(results)
    ratios = {}
    for r in results:
        key = (r["task"], r["batch"], r.get("round", 1), compute_precision(r))
        if r["status"] == "ok" and r["framework"] == "jax" and key in fastest:
            torch_row = fastest[key]
            ratios.setdefault((r["task"], r["batch"], r["variant"]), {})[key[2]] = (
                torch_row["step_ms"]["median"] / r["step_ms"]["median"], torch_row["variant"])
    return ratios


def _standing(results: list, rounds: int) -> list:
    ratios = standing(results)
    if not ratios:
        return []
    header = " | ".join(f"round {i}" for i in range(1, rounds + 1))
    lines = ["", "## JAX against the fastest PyTorch variant of the same task, batch, round and compute precision",
             "", "Speed: PyTorch's median step time / JAX's; above 1×, JAX is ahead. Precision: bf16 against bf16, "
             "default-precision float32 (TF32 on NVIDIA tensor cores) against the same; a JAX job without a PyTorch job "
             "of its precision has no row.", "",
             f"| task | batch | precision | JAX variant | fastest PyTorch variant | {header} | median |",
             "| --- | ---: | --- | --- | --- | " + "---: | " * rounds + "---: |"]
    precision = {(r["task"], r["batch"], r["variant"]): compute_precision(r) for r in results}
    for (task, batch, variant), by_round in ratios.items():
        cells = [f"{by_round[i][0]:.2f}×" if i in by_round else "–" for i in range(1, rounds + 1)]
        against = ", ".join(dict.fromkeys(f"`{name}`" for _, name in by_round.values()))
        median = statistics.median(speed for speed, _ in by_round.values())
        lines.append(f"| {task} | {batch} | {precision[task, batch, variant]} | `{variant}` | {against} | "
                     f"{' | '.join(cells)} | {median:.2f}× |")
    return lines


HARNESS_TOLERANCE = 0.03  # the fair plan's check: the harness's best within 3% of the minimal step


def harness_check(results: list) -> list:
    """[(batch, round, precision, harness record, minimal record, harness time / minimal time)]:
    the fastest torch variant of the harness's own step against the separately written minimal
    step (benchmarks/torch_minimal.py) of the same task, batch, round and precision."""
    harness = fastest_torch([r for r in results if r.get("step_code", "harness") == "harness"])
    minimal = fastest_torch([r for r in results if r.get("step_code") == "minimal"])
    return [(key[1], key[2], key[3], harness[key], row, harness[key]["step_ms"]["median"] / row["step_ms"]["median"])
            for key, row in minimal.items() if key in harness]


def _harness_check(results: list) -> list:
    checks = harness_check(results)
    if not checks:
        return []
    lines = ["", "## The harness's best PyTorch against the minimal step",
             "", f"Harness / minimal median step time; within {HARNESS_TOLERANCE:.0%} the harness gives PyTorch its best.",
             "", "| batch | round | precision | harness's fastest | minimal | ratio | within |",
             "| ---: | ---: | --- | --- | --- | ---: | --- |"]
    for batch, round_, precision, h, m, ratio in checks:
        lines.append(f"| {batch} | {round_} | {precision} | `{h['variant']}` {h['step_ms']['median']:.2f} ms | "
                     f"`{m['variant']}` {m['step_ms']['median']:.2f} ms | {ratio:.3f} | "
                     f"{'yes' if ratio <= 1 + HARNESS_TOLERANCE else 'no'} |")
    return lines


def kernel_labels(names: list, shortest: int = 80) -> list:
    """Each kernel name as printed: without "void " and "at::native::" (which every PyTorch kernel
    repeats), cut after `shortest` characters or as much later as it takes for no two names of the
    list to print alike; the JSON keeps the full names."""
    trimmed = [n.removeprefix("void ").replace("at::native::", "") for n in names]
    if len(set(trimmed)) < len(set(names)):  # the trimming made two names one: print them whole
        trimmed = list(names)
    labels = []
    for i, name in enumerate(trimmed):
        others = [o for j, o in enumerate(trimmed) if j != i and o != name]
        length = shortest
        while length < len(name) and any(o[:length] == name[:length] for o in others):
            length += 8
        labels.append(name if length >= len(name) else name[:length] + "…")
    return labels


def _kernel_sections(results: list) -> list:
    """Per profiled job: where one step's device time went (benchmarks.kernels): every kernel of at
    least 1% of the step (older results: the 12 they kept), and for PyTorch the ops that launched it."""
    lines = []
    for r in results:
        profile = r.get("kernels")
        if profile and "error" in profile:
            lines += ["", f"**{r['variant']}, batch {r['batch']}**: no profile ({profile['error']})"]
        if not profile or "top" not in profile:
            continue
        shown = [k for k in profile["top"] if k["share"] is None or k["share"] >= MIN_SHARE]
        launched = any(k.get("launched_by") for k in shown)
        lines += ["", f"**{r['variant']}, batch {r['batch']}**: {profile['total_ms']:.1f} ms in one profiled step "
                  f"({profile['source']})", "",
                  "| kernel / op | ms | calls | share |" + (" launched by |" if launched else ""),
                  "| --- | ---: | ---: | ---: |" + (" --- |" if launched else "")]
        for k, label in zip(shown, kernel_labels([k["name"] for k in shown])):
            cells = [f"`{label}`".replace("|", "\\|"), f"{k['ms']:.2f}", str(k["calls"]), _num(k["share"], ".1%")]
            if launched:
                cells.append("; ".join(k.get("launched_by", [])).replace("|", "\\|") or "–")
            lines.append("| " + " | ".join(cells) + " |")
        rest = profile.get("rest")
        below = len(profile["top"]) - len(shown) + (rest["kernels"] if rest else 0)
        rest_ms = sum(k["ms"] for k in profile["top"][len(shown):]) + (rest["ms"] if rest else 0.0)
        if below:
            lines.append(f"| {below} more, each under {MIN_SHARE:.0%} | {rest_ms:.2f} | | "
                         f"{_num(rest_ms / profile['total_ms'] if profile['total_ms'] else None, '.1%')} |"
                         + (" |" if launched else ""))
    return ["", "## Where one step's time goes"] + lines if lines else []


def plot(doc: dict, path: str) -> None:
    """Grouped bars: img/s per variant, one bar per batch, train and predict side by side."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    tasks = [t for t in ("train", "predict") if any(r["task"] == t for r in doc["results"])]
    batches = sorted({r["batch"] for r in doc["results"]})
    fig, axes = plt.subplots(1, max(1, len(tasks)), figsize=(7 * max(1, len(tasks)), 5), squeeze=False)
    for ax, task in zip(axes[0], tasks):
        rows = [r for r in doc["results"] if r["task"] == task]
        names = list(dict.fromkeys(r["variant"] for r in rows))
        width = 0.8 / len(batches)
        for i, batch in enumerate(batches):
            for j, name in enumerate(names):
                r = next((r for r in rows if r["variant"] == name and r["batch"] == batch), None)
                x = j + (i - (len(batches) - 1) / 2) * width
                if r is not None and r["status"] == "ok":
                    ax.bar(x, r["img_per_s"], width, color=f"C{i}", label=f"batch {batch}" if j == 0 else None)
                elif r is not None:
                    ax.text(x, 0, r["status"].replace("_", " "), rotation=90, ha="center", va="bottom", fontsize=7)
        ax.set_xticks(range(len(names)), names, rotation=30, ha="right", fontsize=8)
        ax.set_ylabel("img/s (median step)")
        ax.set_title(f"{task}: {doc['config']['size']}×{doc['config']['size']}")
        handles, labels = ax.get_legend_handles_labels()
        if labels:
            ax.legend()
    rounds = doc["config"].get("rounds", 1)  # bars from the first record of each variant
    fig.suptitle(doc["device"]["name"] + (" (quick smoke run)" if doc["quick"] else "")
                 + (f" (round 1 of {rounds})" if rounds > 1 else ""))
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def write(doc: dict, out_dir: str, with_plot: bool = True) -> None:
    """results.json and results.md (and the plot): called after every job, so partial runs stay reported."""
    os.makedirs(out_dir, exist_ok=True)
    apply_run_ceiling(doc["results"])  # every row against the run's one ceiling, as it stands now
    for name, text in ((RESULTS_JSON, json.dumps(doc, indent=1)), (RESULTS_MD, markdown(doc))):
        tmp = os.path.join(out_dir, name + ".tmp")
        with open(tmp, "w") as f:
            f.write(text)
        os.replace(tmp, os.path.join(out_dir, name))  # never a half-written file, even if killed here
    if with_plot:
        plot(doc, os.path.join(out_dir, PLOT_PNG))


def main() -> None:
    parser = argparse.ArgumentParser(description="Rebuild results.md and the plot from results.json.")
    parser.add_argument("out_dir")
    args = parser.parse_args()
    with open(os.path.join(args.out_dir, RESULTS_JSON)) as f:
        doc = json.load(f)
    write(doc, args.out_dir)
    print(f"wrote {args.out_dir}/{RESULTS_MD} and {PLOT_PNG}")


if __name__ == "__main__":
    main()
