"""unet_jax.runtime.xla_cpu: which flags, when they are set, and that jaxlib's defaults still pass parity.

The suite itself runs with the flags (conftest.py), as `unet-jax` does; the last test runs the
float64-referenced forward and gradient parity tests in a fresh process under jaxlib's own
defaults, the path a library user who never calls `apply()` takes.
"""

from __future__ import annotations

import jaxlib
import pytest

from unet_jax.runtime import xla_cpu

FLAG = "--xla_cpu_experimental_ynn_fusion_type=-individual_convolution"


@pytest.mark.parametrize("version, expected", [
    ("0.10.2", (FLAG,)),
    ("0.10.2.dev20260101", (FLAG,)),
    ("0.10.1", ()),  # never measured: its flag names are unknown, and XLA aborts on an unknown one
    ("0.11.2", ()),  # its YNNPACK convolutions are as fast as XLA's own
    ("0.4.30", ()),
])
def test_flags_are_set_only_for_the_measured_jaxlib_versions(version, expected):
    assert xla_cpu.flags_for(version) == expected


@pytest.fixture
def jaxlib_0_10_2(monkeypatch):
    monkeypatch.setattr(jaxlib, "__version__", "0.10.2")
    monkeypatch.setattr(xla_cpu, "_backends_started", lambda: False)


def test_apply_appends_to_the_users_flags_once(jaxlib_0_10_2):
    environ = {"XLA_FLAGS": "--xla_dump_to=/tmp/dump"}
    assert xla_cpu.apply(environ) == (FLAG,)
    assert environ["XLA_FLAGS"] == f"--xla_dump_to=/tmp/dump {FLAG}"
    assert xla_cpu.apply(environ) == ()  # a second call (the CLI's after conftest's) adds nothing
    assert environ["XLA_FLAGS"] == f"--xla_dump_to=/tmp/dump {FLAG}"


def test_the_users_own_value_of_the_flag_wins(jaxlib_0_10_2):
    environ = {"XLA_FLAGS": "--xla_cpu_experimental_ynn_fusion_type=+individual_convolution"}
    assert xla_cpu.apply(environ) == ()
    assert environ["XLA_FLAGS"] == "--xla_cpu_experimental_ynn_fusion_type=+individual_convolution"


@pytest.mark.parametrize("value", ["0", "off", "False"])
def test_the_off_switch(jaxlib_0_10_2, value):
    environ = {xla_cpu.OFF_SWITCH: value}
    assert xla_cpu.apply(environ) == ()
    assert "XLA_FLAGS" not in environ


def test_ynnpack_convolutions_are_those_of_jaxlib_0_10_without_the_flag(monkeypatch):
    monkeypatch.setattr(jaxlib, "__version__", "0.10.2")
    assert xla_cpu.ynnpack_convolutions({})
    assert not xla_cpu.ynnpack_convolutions({"XLA_FLAGS": FLAG})
    assert not xla_cpu.ynnpack_convolutions({"XLA_FLAGS": "--xla_cpu_experimental_ynn_fusion_type=+dot"})  # the user's
    monkeypatch.setattr(jaxlib, "__version__", "0.11.2")
    assert not xla_cpu.ynnpack_convolutions({})  # YNNPACK's, but fast ones


def test_too_late_is_an_error_that_says_so(jaxlib_0_10_2, monkeypatch):
    monkeypatch.setattr(xla_cpu, "_backends_started", lambda: True)
    environ = {}
    with pytest.raises(RuntimeError, match=r"before creating any array.*UNET_JAX_XLA_CPU_FLAGS=0"):
        xla_cpu.apply(environ)
    assert "XLA_FLAGS" not in environ
