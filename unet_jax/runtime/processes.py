"""The processes of a multi-host run: joining them (`initialize`, `jax.distributed`), exchanging
text through the coordination service before any device work, and leaving together on an error.
Only process 0 (`is_primary`) writes the run directory.
"""

from __future__ import annotations

import contextlib
import itertools
import os
import socket
import sys
import threading
import time
from typing import Iterator, Optional

import jax

from unet_jax.config import UNetError

# Beside JAX's own JAX_COORDINATOR_ADDRESS; SLURM, Open MPI and Cloud TPU are detected by JAX itself.
ENV_COORDINATOR, ENV_NUM_PROCESSES, ENV_PROCESS_ID = "JAX_COORDINATOR_ADDRESS", "JAX_NUM_PROCESSES", "JAX_PROCESS_ID"
_PROCESS_COUNT_KEY = "unet_jax/num_processes/"


class DistributedError(UNetError):
    """Devices, batch or processes that don't fit together; the message names the fix."""


# ------------------------------------------------------------------ processes
def initialize(
    coordinator_address: Optional[str] = None,
    num_processes: Optional[int] = None,
    process_id: Optional[int] = None,
    timeout_s: int = 300,
) -> None:
    """Join a multi-process run through `jax.distributed.initialize`, before any device is used.

    Unset arguments come from JAX_COORDINATOR_ADDRESS, JAX_NUM_PROCESSES and JAX_PROCESS_ID, then
    from JAX's cluster detection (SLURM, Open MPI, Cloud TPU). Every wait is bounded by
    `timeout_s`: a coordinator that can't be reached, or processes that disagree on their number,
    end in a DistributedError (or, inside JAX's coordination service, an abort naming
    DEADLINE_EXCEEDED), never in a hang.
    """
    coordinator_address = coordinator_address or os.environ.get(ENV_COORDINATOR)
    num_processes = num_processes if num_processes is not None else _env_int(ENV_NUM_PROCESSES)
    process_id = process_id if process_id is not None else _env_int(ENV_PROCESS_ID)
    if num_processes is not None and num_processes < 1:
        raise DistributedError(f"--num-processes must be at least 1, got {num_processes}")
    if timeout_s <= 0:  # JAX waited for ever
        raise DistributedError(f"--coordinator-timeout must be a positive number of seconds, got {timeout_s}")
    if num_processes is not None and process_id is not None and not 0 <= process_id < num_processes:
        raise DistributedError(
            f"--process-id {process_id} is outside 0..{num_processes - 1} (--num-processes {num_processes}). "
            "Fix: number the processes 0, 1, ..., N-1, with process 0 on the coordinator's host"
        )
    if coordinator_address is not None and process_id not in (None, 0):
        _wait_for_coordinator(coordinator_address, timeout_s)
    if coordinator_address is not None and process_id == 0:
        _check_port_free(coordinator_address)
    # A process id that process 0's count has no room for ends this process inside JAX's C++
    # client (a fatal log, "Unexpected task registered"), which Python cannot catch: say first
    # what that message will mean.
    if coordinator_address is not None and process_id not in (None, 0) and num_processes is not None:
        print(f"unet-jax: joining {coordinator_address} as process {process_id} of {num_processes}; should JAX stop "
              "with 'Unexpected task registered', process 0 was started with fewer processes: start every process with "
              "the same --num-processes", file=sys.stderr, flush=True)
    try:
        # A process that stops waits at most timeout_s for the others, and one that died is noticed
        # within JAX's default heartbeat of 100 s, or timeout_s if shorter.
        with _leave_after(timeout_s, _join_timeout_message(coordinator_address, num_processes, process_id, timeout_s)):
            jax.distributed.initialize(coordinator_address, num_processes, process_id, initialization_timeout=timeout_s,
                                       shutdown_timeout_seconds=timeout_s, heartbeat_timeout_seconds=min(100, timeout_s))
    except (ValueError, TypeError, RuntimeError) as error:
        raise DistributedError(
            f"could not join the multi-process run: {error}. Fix: pass --coordinator-address HOST:PORT, --num-processes "
            f"and --process-id (or set {ENV_COORDINATOR}, {ENV_NUM_PROCESSES}, {ENV_PROCESS_ID}), or run under SLURM / "
            "Open MPI / a Cloud TPU slice"
        ) from None
    _check_process_count(timeout_s)


@contextlib.contextmanager
def _leave_after(timeout_s: float, message: str) -> Iterator[None]:
    """End the process with `message` (exit status 2, the command line's for an error) if the block
    has not finished within `timeout_s`. JAX's client, when its own wait runs out, ends the process
    from C++ (a "Check failure" abort) some seconds later, and Python cannot catch that: this comes first.
    The wait inside JAX releases the GIL, so the timer's thread runs."""
    def leave():
        print(f"unet-jax: error: {message}", file=sys.stderr, flush=True)
        os._exit(2)

    timer = threading.Timer(timeout_s, leave)
    timer.daemon = True
    timer.start()
    try:
        yield
    finally:
        timer.cancel()


def _join_timeout_message(address: Optional[str], num_processes: Optional[int], process_id: Optional[int], timeout_s: float) -> str:
    where = f" at {address}" if address else ""
    if process_id == 0:
        return (f"the other processes did not join the coordinator{where} within --coordinator-timeout {timeout_s:g} s "
                f"(process 0 waits for all {num_processes or 'of them'}). Fix: start every process, each with the same "
                "--coordinator-address and --num-processes, within that time of each other")
    return (f"this process could not join the coordinator{where} within --coordinator-timeout {timeout_s:g} s: its port "
            "accepted the connection but no JAX coordinator let this process in (another program on that port, or process 0 "
            "started with another --num-processes). Fix: give the --coordinator-address of process 0, and the same "
            "--num-processes to every process")


def _env_int(name: str) -> Optional[int]:
    value = os.environ.get(name)
    if value is None:
        return None
    try:
        return int(value)
    except ValueError:
        raise DistributedError(f"the environment variable {name}={value!r} is not an integer") from None


def _wait_for_coordinator(address: str, timeout_s: float) -> None:
    """Return once the coordinator's port accepts connections; DistributedError after `timeout_s`.

    JAX's own client aborts the process from C++ when the coordinator stays away; this check
    turns the common cause (process 0 not started, a wrong address or port) into a message.
    """
    port = _port_of(address)
    host = address.rpartition(":")[0]
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            with socket.create_connection((host.strip("[]"), port), timeout=min(5.0, timeout_s)):
                return
        except OSError as error:
            if time.monotonic() >= deadline:
                raise DistributedError(
                    f"the coordinator {address} could not be reached within {timeout_s:g} s ({error}). Fix: start process 0 "
                    "(it serves the coordinator) on that host and port, check the address and that the port is open"
                ) from None
            time.sleep(0.2)


def _check_port_free(address: str) -> None:
    """DistributedError if the coordinator's port is taken on this host: JAX's coordination service
    would fail to serve it and end the process from C++ ("Failed to add port to server", a segfault)."""
    port = _port_of(address)
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # a port a finished run left in TIME_WAIT is free
        try:
            probe.bind(("", port))
        except OSError as error:
            raise DistributedError(
                f"the coordinator's port {port} (--coordinator-address {address}) is taken on this host ({error.strerror}); "
                "process 0 serves the coordinator there. Fix: give every process another free port, or stop what holds it"
            ) from None


def _port_of(address: str) -> int:
    host, _, port = address.rpartition(":")
    if not host or not port.isdigit():
        raise DistributedError(f"--coordinator-address {address!r} is not HOST:PORT (e.g. 10.0.0.1:1234)")
    return int(port)


def _check_process_count(timeout_s: int) -> None:
    """Every process must have been started with the same process count: compare each with process 0's."""
    # JAX keeps its coordination client (and the key-value store the processes share) private; the
    # public alternatives (multihost_utils) run on the devices, whose set-up already waits for every process.
    from jax._src import distributed as jax_distributed

    state = jax_distributed.global_state
    client = state.client
    if client is None:
        return
    count, me = state.num_processes, state.process_id
    if me == 0:
        client.key_value_set(_PROCESS_COUNT_KEY + "0", str(count))
        return
    coordinators = int(client.blocking_key_value_get(_PROCESS_COUNT_KEY + "0", timeout_s * 1000))
    if coordinators != count:
        raise DistributedError(
            f"process {me} was started with --num-processes {count}, process 0 with {coordinators}. "
            "Fix: start every process with the same --num-processes"
        )


_GATHERS = itertools.count()  # each gather's own keys; every process gathers the same times, in the same order


def gather_text(text: str, timeout_s: int = 3600) -> list[str]:
    """Every process's `text`, in process order ([text] alone outside a multi-process run).

    It goes through the key-value store of `jax.distributed`'s coordination service, not the
    devices: what the processes exchange before training (their data's statistics, or the error
    one of them met reading its share) needs no device and no compiled collective. A process
    that died is noticed by JAX's heartbeat (see `initialize`); `timeout_s` bounds the wait for a
    slow one.
    """
    from jax._src import distributed as jax_distributed  # the client is private; see _check_process_count

    state = jax_distributed.global_state
    if state.client is None:
        return [text]
    key = f"unet_jax/gather/{next(_GATHERS)}/"
    state.client.key_value_set(key + str(state.process_id), text)
    return [text if p == state.process_id else state.client.blocking_key_value_get(key + str(p), timeout_s * 1000)
            for p in range(state.num_processes)]


class EveryProcessError(UNetError):
    """An error that every process of the run raises at the same point (one process met it and
    told the others, e.g. through `gather_text`), so that they can leave together."""


def leave_if_joined(exit_status: int, error: Optional[BaseException] = None) -> None:
    """A process that joined a multi-process run and cannot go on leaves at once.

    Alone, it must not run JAX's shutdown barrier, which would wait for the other processes and
    then abort. When every process stops on the same `EveryProcessError`, they leave through that
    barrier together: process 0 serves the coordination service, and leaving before the others
    have read what it told them would cut their last call short.
    """
    if not jax.distributed.is_initialized():
        return
    if isinstance(error, EveryProcessError):
        jax.distributed.shutdown()
    os._exit(exit_status)


def is_primary() -> bool:
    """Process 0 writes the run directory (logs, plots, summary, weights); the others only compute."""
    return jax.process_index() == 0
