"""`python -m benchmarks.sweep`: every GPU speed-up candidate of the JAX step against the best
PyTorch variant, in one run that fits one device call (7 minutes), with a kernel profile per job.

The candidates are declared in `benchmarks.variants` (`_SWEEP_OPTIONS`: remat policies and XLA
GPU flag sets) and ordered by `SWEEP_PLAN`: JAX bf16 against `torch.compile` bf16 channels_last at
batch 16 and 1 first, then each option. It is `benchmarks.run --plan sweep --profile`: the same
processes, budget and report, so every row is comparable with the others of its run; each job
also profiles one extra step after its timed ones (`benchmarks.kernels`: the top kernels and their
share of the step), and JAX jobs record the compiled step's temporaries. Writes results.json
and results.md (and the plot) to `--out` (default benchmarks/results/<device>-sweep).

    python -m benchmarks.sweep                        # on the GPU (scripts/gpu_check.sh sweep)
    python -m benchmarks.sweep --quick --out /tmp/s   # CPU smoke run: small network, no torch.compile
"""

from __future__ import annotations

import os
import sys

from benchmarks import devices, run


def main(argv=None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    quick = "--quick" in args
    command = ["--plan", "sweep-quick" if quick else "sweep", "--profile"]
    if not any(a == "--out" or a.startswith("--out=") for a in args):
        slug = devices.host_device()["slug"] + ("-quick" if quick else "")
        command += ["--out", os.path.join(run.REPO_ROOT, "benchmarks", "results", f"{slug}-sweep")]
    return run.main(command + args)


if __name__ == "__main__":
    sys.exit(main())
