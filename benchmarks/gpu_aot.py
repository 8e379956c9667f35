"""The JAX train step compiled for an NVIDIA GPU on a machine without one (deviceless ahead-of-time).

    pip install "jax[cuda13]==<this jax's version>"      # the CUDA PJRT plugin (a second venv is fine)
    python -m benchmarks.gpu_aot --out benchmarks/results/gpu-aot-h200 --what-if relu-output-barrier \\
        --compare benchmarks/results/nvidia-h200-fair/results.json benchmarks/results/nvidia-h200-sweep/results.json
    python -m benchmarks.gpu_aot --variants jax-bf16 --batch 2 --size 188 --features 8 --out /tmp/aot   # ~1 min

Each job (a JAX train variant of benchmarks/variants.py at one batch size) is the product's own step
(`make_train_step(make_loss("ce"))` on `seed_train_state`, what benchmarks.jax_step times), lowered
against abstract inputs placed on a compile-only device of the target (`jax.experimental.topologies`,
`--target`: a GpuTargetConfigProto, benchmarks/gpu_targets/h200.txtpb) and compiled by XLA's GPU
compiler. For each it records:

- `compiled.memory_analysis()`: temporaries, arguments, outputs and the outputs aliased to the
  donated state, the figures benchmarks.jax_step records on a device (`--compare` puts a device's
  measured ones beside them);
- the buffer assignment's memory-usage report (XLA's dump of the same compile): its total and its
  largest allocations with the values that share them (`<job>.memory.txt`);
- the optimized HLO (`compiled.as_text()`): cuDNN custom calls by kind (is the convolution fused with
  its bias and ReLU?), fusions by kind, and every `input_reduce_select_fusion` (the layer it belongs
  to, its outputs and operands, the operations inside and the bytes it reads and writes).

It also lists every kernel of the step that holds part of the max-pool's backward pass (the pool is
traced inside a name scope, so its instructions are named wherever XLA fuses them): its kind, what it
reads and writes, and whether the bias gradient's reduction shares it; and the bytes all the step's
kernels read and write together (operands and results of each, as XLA's plan: a fusion's own reuse
and caches unseen).

`--what-if NAME ...` adds each job once more per change that is not a model option
(benchmarks/gpu_what_ifs.py: the ReLU's saved output behind an optimization barrier, and forms of the
max-pool's backward pass; the same function each). Compile-only experiments: no default changes on
their account. `--merge` keeps the rows of an earlier gpu_aot.json in --out that this run does not
compile again.

CAVEAT: with no device, XLA cannot autotune: cuDNN convolution algorithms, Triton GEMM tilings and
the fusion decisions that depend on them are XLA's defaults, not what a device compile picks, and
the scratch space and buffer sizes follow from those choices. Compile times are this machine's CPU.
Every figure here is a compile-time account, never a measurement of a step.

Without the CUDA plugin the command exits 2 and says what to install. The plugin checks its CUDA
libraries against the driver when it starts; with no driver that check fails, so this module sets
JAX_SKIP_CUDA_CONSTRAINTS_CHECK=1 before JAX looks for plugins. benchmarks/test_gpu_aot.py checks
the parsing and the errors everywhere, and compiles a small step only where the plugin is installed
(CI has none).
"""

from __future__ import annotations

import argparse
import collections
import contextlib
import gzip
import json
import os
import re
import sys
import tempfile
import time
from pathlib import Path

import jax
import jax.numpy as jnp

from benchmarks.devices import write_measurement
from benchmarks.gpu_what_ifs import POOL_SCOPE, WHAT_IFS, what_if
from benchmarks.jax_state import seed_train_state
from benchmarks.variants import VARIANTS
from unet_jax.config import UNetConfig
from unet_jax.model.unet import UNet
from unet_jax.training.losses import make_loss
from unet_jax.training.step import make_train_step

GiB = 2**30
DEFAULT_TARGET = Path(__file__).parent / "gpu_targets" / "h200.txtpb"
DEFAULT_VARIANTS = ("jax-bf16", "jax-bf16-remat-dots", "jax-bf16-remat-blocks", "jax-fp32")
CAVEAT = ("deviceless compile: no autotuning (cuDNN algorithms, Triton GEMM tilings and the fusions that follow from "
          "them are XLA's defaults, not a device compile's); a compile-time account, not a measurement")
MEMORY_FIELDS = ("temp", "argument", "output", "alias", "generated_code")
TOP_ALLOCATIONS = 12

# Entry instructions that are no kernel of their own (their bytes are counted where a kernel reads or writes them).
NOT_KERNELS = ("parameter", "get-tuple-element", "tuple", "bitcast", "constant", "copy-start", "copy-done")
# add_any, the sum of the gradients of a value with two consumers (the pool's input is the skip connection's too),
# is the autodiff's, named after the scope that reads the value: not the pool's.
POOL_BACKWARD = re.compile(r'op_name="[^"]*transpose\([^"]*/' + POOL_SCOPE + r'/(?!add_any")')


class NoCudaPlugin(RuntimeError):
    pass


def compile_only_sharding(target_config: str):
    """A sharding on the one compile-only device of a 1x1x1 topology of the target GPU."""
    from jax.experimental import topologies
    from jax.sharding import NamedSharding, PartitionSpec

    os.environ.setdefault("JAX_SKIP_CUDA_CONSTRAINTS_CHECK", "1")  # no driver to check the CUDA libraries against
    try:
        topology = topologies.get_topology_desc(platform="cuda", target_config=target_config, topology="1x1x1")
    except NotImplementedError as error:  # jax: "topology not implemented for cuda" when no plugin registered
        raise NoCudaPlugin(str(error)) from error
    return NamedSharding(topologies.make_mesh(topology, (1,), ("batch",)), PartitionSpec())


def abstract_inputs(model: UNet, batch: int, size: int, sharding) -> tuple:
    """(state, images, masks) as shapes on the target's device; nothing is computed or allocated."""
    state = jax.eval_shape(lambda: seed_train_state(model, size))
    state = jax.tree.map(lambda leaf: jax.ShapeDtypeStruct(leaf.shape, leaf.dtype, sharding=sharding), state)
    images = jax.ShapeDtypeStruct((batch, size, size, model.config.in_channels), jnp.float32, sharding=sharding)
    masks = jax.ShapeDtypeStruct((batch, size, size), jnp.int32, sharding=sharding)
    return state, images, masks


def compile_job(variant_name: str, batch: int, config: UNetConfig, size: int, sharding, dump_dir: Path) -> tuple:
    """(compiled executable, seconds to lower and compile) for one variant at one batch size."""
    variant = VARIANTS[variant_name]
    if variant.framework != "jax" or variant.task != "train":
        raise ValueError(f"{variant_name} is not a JAX train variant")
    if variant.xla_flags:
        raise ValueError(f"{variant_name} sets XLA flags ({variant.xla_flags}): one process compiles every job here")
    # batch_groups=1: what default_batch_groups gives on a GPU (its groups exist for XLA:CPU only).
    model = UNet(config, dtype=jnp.bfloat16 if variant.dtype == "bf16" else jnp.float32, remat=variant.remat,
                 pin_relu_output=variant.pin_relu_output, batch_groups=variant.batch_groups or 1)
    args = abstract_inputs(model, batch, size, sharding)
    precision = jax.default_matmul_precision(variant.precision) if variant.precision else contextlib.nullcontext()
    start = time.perf_counter()
    with precision:  # a trace-time setting, as in benchmarks.jax_step
        lowered = make_train_step(make_loss("ce")).lower(*args)
    compiled = lowered.compile(compiler_options={"xla_dump_to": str(dump_dir), "xla_dump_hlo_as_text": True})
    return compiled, time.perf_counter() - start


def memory_figures(compiled) -> dict:
    stats = compiled.memory_analysis()
    return {f"{name}_bytes": int(getattr(stats, f"{name}_size_in_bytes")) for name in MEMORY_FIELDS}


def usage_report(dump_dir: Path) -> str:
    """The train step's buffer-assignment memory-usage report from XLA's dump."""
    reports = sorted(dump_dir.glob("*jit_train_step*memory-usage-report.txt"))
    if not reports:
        raise FileNotFoundError(f"no memory-usage report of jit_train_step in {dump_dir}")
    return reports[-1].read_text()


def usage_summary(report: str) -> dict:
    """Total bytes and the largest allocations (size, number of values, shapes) of the report."""
    total = re.search(r"Total bytes: (\d+)", report)
    rows = []
    for line in report.splitlines():
        fields = [field.strip() for field in line.split(";")]
        if len(fields) == 5 and fields[3].isdigit():
            rows.append({"size": fields[1], "values": int(fields[3]), "shapes": fields[4]})
        if len(rows) == TOP_ALLOCATIONS:
            break
    return {"total_bytes": int(total.group(1)) if total else None, "largest": rows}


_INSTRUCTION = re.compile(r"^\s*(?:ROOT )?%(?P<name>[\w.\-]+) = (?P<shape>.+?) (?P<op>[\w\-]+)\((?P<operands>[^)]*)\)")
_ARRAY = re.compile(r"\b(pred|s8|u8|s16|u16|bf16|f16|s32|u32|f32|s64|u64|f64)\[([\d,]*)\]")
_BYTES = {"pred": 1, "s8": 1, "u8": 1, "s16": 2, "u16": 2, "bf16": 2, "f16": 2, "s32": 4, "u32": 4, "f32": 4,
          "s64": 8, "u64": 8, "f64": 8}


def shape_bytes(shape: str) -> int:
    """Bytes of every array in an HLO shape string ('(bf16[2,4]{1,0}, f32[8]{0})' -> 48)."""
    total = 0
    for dtype, dims in _ARRAY.findall(shape):
        count = 1
        for dim in filter(None, dims.split(",")):
            count *= int(dim)
        total += count * _BYTES[dtype]
    return total


def computations(hlo: str) -> dict:
    """{computation name: its instruction lines} of an HLO module's text."""
    found, current = {}, None
    for line in hlo.splitlines():
        header = re.match(r"^(?:ENTRY )?%([\w.\-]+) \(", line)
        if header:
            current = found.setdefault(header.group(1), [])
        elif line.startswith("}"):
            current = None
        elif current is not None:
            current.append(line)
    return found


def _operands(match) -> list:
    return [operand.strip().lstrip("%").split("#")[0] for operand in match["operands"].split(",") if operand.strip()]


def _io_bytes(match, shapes: dict) -> tuple:
    """(bytes read, bytes written) of one entry instruction: its operands' arrays and its result's."""
    return sum(shape_bytes(shapes.get(operand, "")) for operand in _operands(match)), shape_bytes(match["shape"])


def hlo_summary(hlo: str) -> dict:
    """cuDNN/cuBLAS custom calls by target, fusions by kind, each input_reduce_select_fusion, the kernels
    that hold the max-pool's backward pass, and the bytes all kernels read and write."""
    bodies = computations(hlo)
    entry = re.search(r"^ENTRY %([\w.\-]+) ", hlo, re.M).group(1)
    shapes, custom_calls, fusion_kinds, reduce_selects = {}, collections.Counter(), collections.Counter(), []
    activations = collections.Counter()  # cuDNN forward convolutions by the activation fused into them
    pool_kernels, kernel_bytes = [], 0
    for line in bodies[entry]:
        match = _INSTRUCTION.match(line)
        if not match:
            continue
        shapes[match["name"]] = match["shape"]
        if match["op"] not in NOT_KERNELS:
            kernel_bytes += sum(_io_bytes(match, shapes))
            if _holds_pool_backward(line, bodies):
                pool_kernels.append(pool_backward_kernel(match, line, shapes, bodies))
        target = re.search(r'custom_call_target="([^"]+)"', line)
        if target:
            custom_calls[target.group(1)] += 1
        if target and target.group(1) == "__cudnn$convBiasActivationForward":
            activations[re.search(r'"activation_mode":"(\w+)"', line).group(1)] += 1
        if match["op"] == "fusion":
            fusion_kinds[re.sub(r"\.\d+$", "", match["name"])] += 1
        if match["name"].startswith("input_reduce_select_fusion"):
            reduce_selects.append((match, line))
    fusions = [reduce_select_fusion(match, line, shapes, bodies) for match, line in reduce_selects]
    return {"custom_calls": dict(custom_calls.most_common()), "conv_bias_activation_modes": dict(activations.most_common()),
            "fusion_kinds": dict(fusion_kinds.most_common()), "fusions": sum(fusion_kinds.values()),
            "kernel_bytes_moved": kernel_bytes,
            "input_reduce_select_fusions": sorted(fusions, key=lambda f: -f["bytes_moved"]),
            "pool_backward_kernels": sorted(pool_kernels, key=lambda k: -k["bytes_moved"])}


def _called_lines(line: str, bodies: dict) -> list:
    """The instruction lines of the computation a fusion calls (none for an unfused instruction)."""
    called = re.search(r"calls=%([\w.\-]+)", line)
    return bodies.get(called.group(1), []) if called else []


def _holds_pool_backward(line: str, bodies: dict) -> bool:
    return any(POOL_BACKWARD.search(inner) for inner in [line, *_called_lines(line, bodies)])


def _layer(line: str):
    layer = re.search(r'op_name="[^"]*UNet\._network/([^"]+?)/[\w_]+"', line)
    return layer.group(1) if layer else None


def _body_ops(line: str, bodies: dict) -> collections.Counter:
    ops = collections.Counter()
    for body_line in _called_lines(line, bodies):
        inner = _INSTRUCTION.match(body_line)
        if inner:
            ops[inner["op"]] += 1
    return ops


def pool_backward_kernel(match, line: str, shapes: dict, bodies: dict) -> dict:
    """One kernel holding part of the max-pool's backward pass: what it is, reads, writes and holds."""
    ops = _body_ops(line, bodies)
    read, written = _io_bytes(match, shapes)
    return {"name": match["name"], "op": match["op"], "layer": _layer(line), "outputs": match["shape"],
            "ops": dict(ops.most_common()), "bias_gradient_reduction": ops["reduce"] > 0 or match["op"] == "reduce",
            "bytes_read": read, "bytes_written": written, "bytes_moved": read + written}


def reduce_select_fusion(match, line: str, shapes: dict, bodies: dict) -> dict:
    """One input_reduce_select_fusion: where it is, what it reads and writes, and what it holds."""
    operands = _operands(match)
    strided_slice = any(" slice(" in body_line and ":2]" in body_line for body_line in _called_lines(line, bodies))
    read, written = _io_bytes(match, shapes)
    return {"name": match["name"], "layer": _layer(line), "outputs": match["shape"],
            "operands": {operand: shapes.get(operand) for operand in operands},
            "ops": dict(_body_ops(line, bodies).most_common()),
            "max_pool_backward": strided_slice or _holds_pool_backward(line, bodies),
            "bytes_read": read, "bytes_written": written, "bytes_moved": read + written}


def run_job(variant: str, batch: int, config: UNetConfig, size: int, sharding, out: Path, change=None) -> dict:
    job = f"{variant}-b{batch}" + (f"-{change}" if change else "")
    with tempfile.TemporaryDirectory(prefix="gpu-aot-dump-") as dump, what_if(change):
        compiled, seconds = compile_job(variant, batch, config, size, sharding, Path(dump))
        report = usage_report(Path(dump))
    hlo = compiled.as_text()
    (out / f"{job}.memory.txt").write_text(report)
    with gzip.open(out / f"{job}.hlo.txt.gz", "wt") as f:
        f.write(hlo)
    row = {"variant": variant, "batch": batch, "what_if": change, "compile_s_this_cpu": round(seconds, 1), **memory_figures(compiled),
           "buffer_assignment": usage_summary(report), "hlo": hlo_summary(hlo)}
    print(f"{job}: temp {row['temp_bytes'] / GiB:.2f} GiB, compile {seconds:.0f} s", flush=True)
    return row


def device_figures(paths) -> dict:
    """{(variant, batch): the compiled_* figures a device run of benchmarks.run recorded}."""
    found = {}
    for path in paths:
        for result in json.loads(Path(path).read_text())["results"]:
            if result.get("compiled_temp_bytes") is not None:
                found[(result["variant"], result["batch"])] = {
                    "source": str(path), "temp_bytes": result["compiled_temp_bytes"],
                    "argument_bytes": result["compiled_argument_bytes"], "output_bytes": result["compiled_output_bytes"],
                    "alias_bytes": result["compiled_alias_bytes"], "step_peak_bytes": result.get("step_peak_memory_bytes")}
    return found


def _job_label(row: dict) -> str:
    return f"`{row['variant']}` b{row['batch']}" + (f" + what-if `{row['what_if']}`" if row.get("what_if") else "")


def _gib(size) -> str:
    return "–" if size is None else f"{size / GiB:.2f}"


def to_markdown(report: dict) -> str:
    result = report["result"]
    versions = ", ".join(f"{k} {report['versions'].get(k)}" for k in ("jax", "jaxlib", "flax", "optax"))
    lines = [f"# The JAX train step compiled for {result['target_name']} without a device", "",
             f"{result['config']}, {result['size']} px; target `{result['target']}`; {versions}, "
             f"jax-cuda plugin {result['plugin']}; compiled on {report['device']['name']}, {report['measured_utc']}; "
             + "; ".join(f"`{command}`" for command in result.get("commands", [report["command"]])) + ".", "",
             f"**Caveat: {CAVEAT}.**", "",
             "| job | temporaries GiB | arguments GiB | outputs GiB (aliased) | buffer assignment total GiB "
             "| device-measured temporaries GiB | compile s (this CPU) |", "| --- | ---: | ---: | ---: | ---: | ---: | ---: |"]
    for row in result["rows"]:
        measured = row.get("device_measured") or {}
        lines.append(f"| {_job_label(row)} | {_gib(row['temp_bytes'])} | {_gib(row['argument_bytes'])} | "
                     f"{_gib(row['output_bytes'])} ({_gib(row['alias_bytes'])}) | "
                     f"{_gib(row['buffer_assignment']['total_bytes'])} | {_gib(measured.get('temp_bytes'))} | "
                     f"{row['compile_s_this_cpu']} |")
    lines += ["", "Device-measured: `compiled.memory_analysis()` of the same step compiled on the device (with autotuning), "
              "from the results named in the JSON.", ""]
    lines += pool_backward_table(result["rows"])
    for row in result["rows"]:
        hlo = row["hlo"]
        lines += [f"## {_job_label(row)}", "",
                  "custom calls: " + ", ".join(f"`{k}` {v}" for k, v in hlo["custom_calls"].items()), "",
                  "activation fused into cuDNN's conv+bias: "
                  + ", ".join(f"`{k}` {v}" for k, v in hlo["conv_bias_activation_modes"].items()), "",
                  f"fusions ({hlo.get('fusions', sum(hlo['fusion_kinds'].values()))}): "
                  + ", ".join(f"`{k}` {v}" for k, v in hlo["fusion_kinds"].items()), "",
                  "| input_reduce_select_fusion | layer | outputs | MB read | MB written | max-pool backward inside |",
                  "| --- | --- | --- | ---: | ---: | --- |"]
        for fusion in hlo["input_reduce_select_fusions"]:
            lines.append(f"| `{fusion['name']}` | {fusion['layer']} | `{re.sub(r'{[^}]*}', '', fusion['outputs'])}` | "
                         f"{fusion['bytes_read'] / 1e6:.0f} | {fusion['bytes_written'] / 1e6:.0f} | "
                         f"{'yes' if fusion['max_pool_backward'] else 'no'} |")
        lines += ["", "Largest buffer-assignment allocations (size; values sharing it; shapes):", ""]
        lines += [f"- {a['size']}; {a['values']}; `{a['shapes'][:160]}`" for a in row["buffer_assignment"]["largest"][:6]]
        lines.append("")
    return "\n".join(lines)


def _gb(size) -> str:
    return f"{size / 1e9:.2f}"


def pool_backward_table(rows: list) -> list:
    """Per job: fusions, the bytes every kernel reads and writes, and the kernels holding the pool's backward."""
    lines = ["Where the max-pool's backward pass lands (kernels holding an instruction of the pool's backward, "
             "by the name scope; `+ reduce`: the bias gradient's reduction shares the kernel), and the bytes all "
             "kernels read and write (operands and results, as XLA plans them):", "",
             "| job | temporaries GiB | fusions | all kernels GB read + written | pool-backward kernels: GB read + written |",
             "| --- | ---: | ---: | ---: | --- |"]
    for row in rows:
        hlo = row["hlo"]
        if "kernel_bytes_moved" not in hlo:
            continue
        kernels = hlo["pool_backward_kernels"]
        said = "not named (HLO compiled before the pool's name scope)" if kernels is None else "; ".join(
            f"`{k['name']}` {_gb(k['bytes_moved'])}" + (" + reduce" if k["bias_gradient_reduction"] else "") for k in kernels)
        lines.append(f"| {_job_label(row)} | {_gib(row['temp_bytes'])} | {hlo['fusions']} | {_gb(hlo['kernel_bytes_moved'])} "
                     f"| {said} |")
    return lines + [""]


def merged_rows(out: Path, rows: list) -> list:
    """This run's rows after the rows of out/gpu_aot.json that it did not compile again; their HLO
    accounts read anew from the HLO files they left (no compile)."""
    earlier = out / "gpu_aot.json"
    if not earlier.is_file():
        return rows
    done = {(row["variant"], row["batch"], row["what_if"]) for row in rows}
    kept = []
    for row in json.loads(earlier.read_text())["result"]["rows"]:
        if (row["variant"], row["batch"], row["what_if"]) in done:
            continue
        job = f"{row['variant']}-b{row['batch']}" + (f"-{row['what_if']}" if row["what_if"] else "")
        hlo_file = out / f"{job}.hlo.txt.gz"
        if hlo_file.is_file():
            with gzip.open(hlo_file, "rt") as f:
                row["hlo"] = hlo_summary(f.read())
            if not row["hlo"]["pool_backward_kernels"]:  # compiled before the pool had a name scope
                row["hlo"]["pool_backward_kernels"] = None
        kept.append(row)
    return kept + rows


def plugin_version() -> str:
    import importlib.metadata

    for name in ("jax-cuda13-plugin", "jax-cuda12-plugin"):
        try:
            return f"{name} {importlib.metadata.version(name)}"
        except importlib.metadata.PackageNotFoundError:
            continue
    return "none"


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, required=True, help="directory for gpu_aot.json/.md and each job's files")
    parser.add_argument("--target", type=Path, default=DEFAULT_TARGET, help="GpuTargetConfigProto text (default: H200)")
    parser.add_argument("--variants", nargs="+", default=list(DEFAULT_VARIANTS), help="JAX train variants (benchmarks/variants.py)")
    parser.add_argument("--batch", nargs="+", type=int, default=[16, 1])
    parser.add_argument("--size", type=int, default=572)
    parser.add_argument("--features", type=int, default=64)
    parser.add_argument("--depth", type=int, default=4)
    parser.add_argument("--what-if", nargs="*", choices=WHAT_IFS, default=[],
                        help="each job once more with this compile-only change (see the module's docstring)")
    parser.add_argument("--compare", nargs="*", default=[], help="results.json files of device runs (benchmarks.run)")
    parser.add_argument("--what-ifs-only", action="store_true", help="compile the --what-if rows only (with --merge: "
                        "the jobs as they are kept from the earlier run)")
    parser.add_argument("--merge", action="store_true",
                        help="keep the rows of --out's earlier gpu_aot.json that this run does not compile again")
    args = parser.parse_args(argv)
    unknown = [v for v in args.variants if v not in VARIANTS]
    if unknown:
        print(f"--variants: unknown {unknown}; see benchmarks/variants.py", file=sys.stderr)
        return 2
    if not args.target.is_file():
        print(f"--target {args.target}: no such file (a GpuTargetConfigProto in text format)", file=sys.stderr)
        return 2
    target_config = args.target.read_text()
    try:
        sharding = compile_only_sharding(target_config)
    except NoCudaPlugin as error:
        print(f"no CUDA PJRT plugin ({error}): pip install \"jax[cuda13]=={jax.__version__}\" (or cuda12)", file=sys.stderr)
        return 2
    config = UNetConfig(features=args.features, depth=args.depth)
    config.check_input_size(args.size, args.size)
    args.out.mkdir(parents=True, exist_ok=True)
    measured = device_figures(args.compare)
    rows = []
    seed_at_572 = (args.features, args.depth, args.size) == (64, 4, 572)  # what the device runs measured
    for variant in args.variants:
        for batch in args.batch:
            for change in (() if args.what_ifs_only else (None,)) + tuple(args.what_if):
                row = run_job(variant, batch, config, args.size, sharding, args.out, change)
                row["device_measured"] = measured.get((variant, batch)) if seed_at_572 and change is None else None
                rows.append(row)
    command = "python -m benchmarks.gpu_aot " + " ".join(sys.argv[1:] if argv is None else argv)
    commands = [command]
    if args.merge and (args.out / "gpu_aot.json").is_file():
        earlier = json.loads((args.out / "gpu_aot.json").read_text())
        commands = [*earlier["result"].get("commands", [earlier["command"]]), command]
        rows = merged_rows(args.out, rows)
    name = re.search(r'device_description_str: "([^"]+)"', target_config)
    result = {"target": os.path.relpath(args.target), "target_name": name.group(1) if name else str(args.target),
              "plugin": plugin_version(),
              "config": str(config), "size": args.size, "caveat": CAVEAT, "commands": commands, "rows": rows}
    write_measurement(args.out, "gpu_aot", result, to_markdown, echo=False, command=command)
    print((args.out / "gpu_aot.md").read_text())
    return 0


if __name__ == "__main__":
    sys.exit(main())
