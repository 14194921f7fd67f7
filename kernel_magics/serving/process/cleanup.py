"""Stopping processes we started, by PID only: the tests' and the benchmark's last resort after a
polite stop (``kernel-magics serve stop``) did not finish the job.

A PID read from a file may have been reused by an unrelated process since: ``is_ours`` checks
the command line before anything is signalled. Nothing here imports torch, numpy or mlflow.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import time
from collections.abc import Iterable
from pathlib import Path

from kernel_magics.serving.process.pids import pid_alive

_POLL_S = 0.05


def alive(pid: int) -> bool:
    """Running (not a zombie). A finished child of this process is reaped on the way."""
    if pid <= 0:  # os.kill(0, ...) would address our whole process group
        return False
    with contextlib.suppress(ChildProcessError):
        done, _ = os.waitpid(pid, os.WNOHANG)
        if done == pid:
            return False
    return pid_alive(pid)


def is_ours(pid: int) -> bool:
    """Alive and running kernel-magics code (a supervisor, a worker, a kernel-magics CLI)."""
    try:
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return False
    return (b"kernel_magics" in cmdline or b"kernel-magics" in cmdline) and alive(pid)


def state_pids(state_file: Path) -> list[int]:
    """The PIDs an inference process's state file (``server.json``) names: workers first, then
    the supervisor. Empty when there is no readable state file."""
    try:
        state = json.loads(state_file.read_text())
    except (OSError, ValueError):
        return []
    if not isinstance(state, dict):
        return []
    pids: list[int] = []
    for key in ("worker_pids", "workers", "pid"):
        value = state.get(key)
        for pid in value if isinstance(value, list) else [value]:
            if isinstance(pid, int) and not isinstance(pid, bool) and pid not in pids:
                pids.append(pid)
    return pids


def stop_pids(
    pids: Iterable[int], grace: float = 5.0, group: bool = False, only_ours: bool = True
) -> bool:
    """SIGTERM each PID (its process group if ``group``), SIGKILL what is still running after
    ``grace`` seconds. ``only_ours`` (the default) skips PIDs that do not run kernel-magics code.
    True when all are gone."""
    check = is_ours if only_ours else alive
    kill = os.killpg if group else os.kill
    targets = [pid for pid in pids if check(pid)]
    for sig, wait in ((signal.SIGTERM, grace), (signal.SIGKILL, grace)):
        for pid in targets:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                kill(pid, sig)
        deadline = time.monotonic() + wait
        while targets and time.monotonic() < deadline:
            time.sleep(_POLL_S)
            targets = [pid for pid in targets if alive(pid)]
        if not targets:
            return True
    return False


def stop_state_pids(state_file: Path, grace: float = 5.0) -> bool:
    """``stop_pids`` on what ``state_file`` names (only kernel-magics processes)."""
    return stop_pids(state_pids(state_file), grace=grace)
