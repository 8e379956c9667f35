"""glibc's huge-page tunable, which `unet-jax` sets by starting itself once more (unet_jax/runtime/hugepages.py)."""

import os
import sys

import pytest

import unet_jax.__main__ as command
from unet_jax.runtime import hugepages

MADVISE_GLIBC_236 = ("madvise", (2, 36))  # (THP mode, glibc version)


def test_the_tunable_joins_the_users_and_never_replaces_one():
    assert hugepages.with_hugepages({}, MADVISE_GLIBC_236)["GLIBC_TUNABLES"] == "glibc.malloc.hugetlb=1"
    mine = {"GLIBC_TUNABLES": "glibc.malloc.arena_max=2", "OTHER": "kept"}
    assert hugepages.with_hugepages(mine, MADVISE_GLIBC_236) == {
        "GLIBC_TUNABLES": "glibc.malloc.arena_max=2:glibc.malloc.hugetlb=1", "OTHER": "kept"}
    assert mine["GLIBC_TUNABLES"] == "glibc.malloc.arena_max=2"  # a copy
    refused = {"GLIBC_TUNABLES": "glibc.malloc.hugetlb=0"}
    assert hugepages.with_hugepages(refused, MADVISE_GLIBC_236) == refused


@pytest.mark.parametrize("machine", [("always", (2, 36)), ("never", (2, 36)), (None, (2, 36)), ("madvise", (2, 34)),
                                     ("madvise", None)])
def test_nothing_where_the_kernel_or_glibc_would_not_act_on_it(machine):
    # `always`: huge pages come unasked; `never` or unknown: none come; glibc before 2.35, or musl: no tunable.
    assert hugepages.with_hugepages({}, machine) == {}


@pytest.mark.parametrize("value", ["0", "off", "false", "no"])
def test_the_off_switch(value):
    assert hugepages.with_hugepages({"UNET_JAX_HUGEPAGES": value}, MADVISE_GLIBC_236) == {"UNET_JAX_HUGEPAGES": value}


def test_the_kernels_mode_is_the_bracketed_word(tmp_path):
    modes = tmp_path / "enabled"
    modes.write_text("always [madvise] never\n")
    assert hugepages.thp_mode(str(modes)) == "madvise"
    assert hugepages.thp_mode(str(tmp_path / "absent")) is None


def test_the_command_starts_itself_again_before_it_imports_the_command_line(monkeypatch):
    started = []

    def execve(path, args, env):
        started.append((path, args, env))
        raise SystemExit(0)  # the real one does not return

    monkeypatch.setattr(hugepages, "useful", lambda environ: "GLIBC_TUNABLES" not in environ)
    monkeypatch.setattr(hugepages, "with_hugepages", lambda environ: {**environ, "GLIBC_TUNABLES": "glibc.malloc.hugetlb=1"})
    monkeypatch.setattr(os, "execve", execve)
    monkeypatch.delitem(sys.modules, "unet_jax.cli", raising=False)
    with pytest.raises(SystemExit):
        command.main()
    [(path, args, env)] = started
    assert path == sys.executable and args == [sys.executable, *sys.orig_argv[1:]]
    assert env["GLIBC_TUNABLES"] == "glibc.malloc.hugetlb=1" and env["PATH"] == os.environ["PATH"]
    assert "unet_jax.cli" not in sys.modules  # restarted before JAX and the command line were imported


