"""Run one variant's process with two clocks: a bound on compilation and one on the whole job.

The child announces `compile-start` and then `compile-done` or `timing-start` on stderr
(`benchmarks.timing`); the compile bound runs between them, so a torch.compile mode that
autotunes for minutes is killed and recorded as "compile timed out after N s" while a slow but
compiling job is not. The child runs in its own session and the whole group is killed on a
time-out, taking inductor's compile workers with it.
"""

from __future__ import annotations

import json
import os
import queue
import shlex
import signal
import subprocess
import threading
import time
from typing import Optional

from benchmarks.timing import PHASE_PREFIX, RESULT_PREFIX

COMPILE_END_PHASES = ("compile-done", "timing-start")


def _pump(stream, tag: str, lines: queue.Queue) -> None:
    for line in iter(stream.readline, ""):
        lines.put((tag, line.rstrip("\n")))
    lines.put((tag, None))


def _kill_group(proc: subprocess.Popen) -> None:
    for sig in (signal.SIGTERM, signal.SIGKILL):
        try:
            os.killpg(proc.pid, sig)
        except ProcessLookupError:
            return
        try:
            proc.wait(timeout=5)
            return
        except subprocess.TimeoutExpired:
            continue


def run_child(
    command: list[str],
    env: dict,
    cwd: str,
    compile_bound_s: Optional[float],
    timeout_s: Optional[float],
    log_path: Optional[str] = None,
) -> dict:
    """{"status", "status_detail", "result" (the child's JSON or None), "wall_s", "output_tail"}.

    status: "ok", "failed" (non-zero exit or no result line), "compile_timeout", "timeout".
    """
    start = time.monotonic()
    proc = subprocess.Popen(
        command, cwd=cwd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True
    )
    lines: queue.Queue = queue.Queue()
    for stream, tag in ((proc.stdout, "out"), (proc.stderr, "err")):
        threading.Thread(target=_pump, args=(stream, tag, lines), daemon=True).start()

    output, result, open_streams = [], None, 2
    compile_started: Optional[float] = None
    status, detail = None, ""
    try:
        while open_streams:
            now = time.monotonic()
            deadlines = [start + timeout_s] if timeout_s else []
            if compile_started is not None and compile_bound_s:
                deadlines.append(compile_started + compile_bound_s)
            wait = max(0.0, min(deadlines) - now) if deadlines else None
            try:
                tag, line = lines.get(timeout=wait)
            except queue.Empty:
                now = time.monotonic()
                if compile_started is not None and compile_bound_s and now >= compile_started + compile_bound_s:
                    status, detail = "compile_timeout", f"compile timed out after {compile_bound_s:.0f} s"
                else:
                    status, detail = "timeout", f"timed out after {timeout_s:.0f} s"
                _kill_group(proc)
                break
            if line is None:
                open_streams -= 1
                continue
            output.append(line)
            if tag == "out" and line.startswith(RESULT_PREFIX):
                result = json.loads(line[len(RESULT_PREFIX):])
            elif tag == "err" and line.startswith(PHASE_PREFIX):
                name = line[len(PHASE_PREFIX):].split(" ", 1)[0]
                if name == "compile-start":
                    compile_started = time.monotonic()
                elif name in COMPILE_END_PHASES:
                    compile_started = None
    except BaseException:  # e.g. the parent's SIGTERM: never leave a child on the GPU
        _kill_group(proc)
        raise
    returncode = proc.wait()
    if not open_streams:  # both pumps are done with them (after a time-out one may still be reading)
        proc.stdout.close()
        proc.stderr.close()
    if status is None:
        if returncode == 0 and result is not None:
            status = "ok"
        else:
            status = "failed"
            detail = f"exit code {returncode}" + ("" if result is not None else ", no result line")
    if log_path:
        with open(log_path, "w") as f:
            f.write("$ " + shlex.join([os.path.basename(command[0])] + command[1:]) + "\n" + "\n".join(output) + "\n")
    tail = "\n".join(line for line in output if not line.startswith(RESULT_PREFIX))[-3000:]
    return {
        "status": status,
        "status_detail": detail,
        "result": result if status == "ok" else None,
        "wall_s": time.monotonic() - start,
        "output_tail": tail if status != "ok" else "",
    }
