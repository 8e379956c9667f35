"""glibc's huge pages in a process that `unet-jax` started once more (unet_jax/runtime/hugepages.py)."""

import os
import subprocess
import sys
from pathlib import Path

import pytest

from unet_jax.runtime import hugepages

REPO = Path(__file__).resolve().parents[2]
ON_THIS_MACHINE = hugepages.useful({})
FAULTS = (
    "import ctypes, resource\n"
    "libc = ctypes.CDLL(None)\n"
    "libc.malloc.restype = ctypes.c_void_p\n"
    "before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt\n"
    "ctypes.memset(libc.malloc(64 * 2**20), 1, 64 * 2**20)\n"
    "print(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)\n"
)


@pytest.mark.skipif(not ON_THIS_MACHINE, reason="this kernel or C library would not act on the tunable")
def test_a_restarted_process_runs_on_huge_pages():
    # The whole path on this machine: reexec() restarts once (one line printed, by the second
    # start), with the tunable set, and glibc acts on it (a typo in its name would be ignored
    # silently): far fewer page faults for the same fresh 64 MiB than with it switched off.
    code = "import os\nfrom unet_jax.runtime import hugepages\nhugepages.reexec()\nprint(os.environ.get('GLIBC_TUNABLES'))\n" + FAULTS
    env = {k: v for k, v in os.environ.items() if k not in ("GLIBC_TUNABLES", hugepages.OFF_SWITCH)}

    def run(extra):
        done = subprocess.run([sys.executable, "-c", code], cwd=REPO, env={**env, **extra}, capture_output=True,
                              text=True, timeout=120)
        assert done.returncode == 0, done.stderr
        return done.stdout.split()

    tunables, faults_with = run({})
    off, faults_without = run({hugepages.OFF_SWITCH: "0"})
    assert tunables == "glibc.malloc.hugetlb=1" and off == "None"
    assert int(faults_without) > 10_000  # 16,384 pages of 4 KiB
    assert int(faults_with) < int(faults_without) / 4
