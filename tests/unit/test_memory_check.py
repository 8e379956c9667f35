"""The memory check (`unet_jax.training.memory_check`): the budget it reads, and advice that offers only what fits."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import jax
import pytest

from unet_jax.config import ConfigError, UNetConfig
from unet_jax.runtime import memory as device_memory
from unet_jax.training.memory_check import MemoryCheck, largest_batch, largest_tile
from unet_jax.training.memory_plan import StepLayout, estimate

TINY = UNetConfig(features=4, depth=2)


def test_budget_variable_takes_sizes_and_names_itself_when_wrong(monkeypatch):
    monkeypatch.setenv(device_memory.BUDGET_VARIABLE, "512MiB")
    assert device_memory.budget_override() == 512 * 2**20
    assert device_memory.device_budget(jax.devices()[0]) == (512 * 2**20, f"${device_memory.BUDGET_VARIABLE}")
    monkeypatch.setenv(device_memory.BUDGET_VARIABLE, "lots")
    with pytest.raises(ConfigError, match=device_memory.BUDGET_VARIABLE):
        device_memory.budget_override()


def test_a_cpu_budget_is_what_the_host_has_free():
    budget, source = device_memory.device_budget(jax.devices("cpu")[0])
    total = int(Path("/proc/meminfo").read_text().split("MemTotal:")[1].split()[0]) * 1024
    assert 0 < budget <= total and "host" in source


def test_largest_batch_is_the_last_that_fits():
    layout = StepLayout(TINY, 60, 20, 64, devices=2)
    budget = estimate(dataclasses.replace(layout, batch_size=10)).total
    batch = largest_batch(layout, budget)
    assert batch % 2 == 0 and estimate(dataclasses.replace(layout, batch_size=batch)).total <= budget
    assert estimate(dataclasses.replace(layout, batch_size=batch + 2)).total > budget


def test_largest_tile_is_the_last_valid_size_that_fits():
    layout = StepLayout(UNetConfig(features=4, depth=2), 124, 84, 4)
    budget = estimate(dataclasses.replace(layout, tile_size=92, label_size=52)).total
    assert largest_tile(layout, budget) == 92  # valid sizes step by 2**depth = 4: 96 does not fit


def test_the_refusal_names_estimate_budget_batch_and_only_options_that_fit():
    layout = StepLayout(TINY, 60, 20, 16, dtype="float32", backend="cpu")
    memory = estimate(layout)
    bfloat16 = estimate(dataclasses.replace(layout, dtype="bfloat16")).total
    budget = (bfloat16 + memory.total) // 2  # bfloat16 fits; on the CPU remat changes nothing, so it never does
    check = MemoryCheck(memory, budget, "a test's budget")
    message = check.refusal()
    assert not check.fits
    assert f"--batch-size {largest_batch(layout, budget)}" in message and "a test's budget" in message
    assert "--dtype bfloat16" in message and "--remat" not in message and "--devices" not in message
    assert "--no-memory-check" in message and "unet-jax plan" in message


def test_more_gpu_devices_are_advised_only_where_they_fit():
    layout = StepLayout(TINY, 60, 20, 16, dtype="bfloat16", remat="blocks", backend="gpu")
    memory = estimate(layout)
    on_two = estimate(dataclasses.replace(layout, devices=2)).total
    assert "--devices 2; this machine has 1" in MemoryCheck(memory, on_two, "test", 1).advice()
    on_all = estimate(dataclasses.replace(layout, devices=16)).total  # one image per device: the most devices can do
    assert "--devices" not in MemoryCheck(memory, on_all - 1, "test", 1).advice()


def test_a_pinned_relu_output_is_advised_on_a_gpu_where_it_fits_and_never_on_the_cpu():
    gpu = StepLayout(TINY, 60, 20, 16, dtype="bfloat16", backend="gpu")
    pinned = estimate(dataclasses.replace(gpu, pin_relu_output=True)).total
    assert pinned < estimate(gpu).total  # the compile-only factor of the pinned step is the smaller
    assert "--pin-relu-output" in MemoryCheck(estimate(gpu), pinned, "test").advice()
    assert "--pin-relu-output" not in MemoryCheck(estimate(gpu), pinned - 1, "test").advice()
    cpu = dataclasses.replace(gpu, backend="cpu")
    assert "--pin-relu-output" not in MemoryCheck(estimate(cpu), estimate(cpu).total - 1, "test").advice()
