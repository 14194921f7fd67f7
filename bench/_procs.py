"""Starting and stopping the benchmark's processes, by PID only.

Every child is started in its own session (process group) and remembered, so that any exit of
the benchmark, a crash or the time budget included, stops exactly what it started and nothing
else on the machine.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import time
from pathlib import Path
from typing import Any

from _log import log

# Children started here (Popen), stopped by PID (their own process group) on any exit.
_children: list[subprocess.Popen] = []


def spawn(cmd: list[str], **kw: Any) -> subprocess.Popen:
    """Popen ``cmd`` in a new session and remember it for ``stop_children``."""
    proc = subprocess.Popen(cmd, start_new_session=True, **kw)
    _children.append(proc)
    return proc


def forget(proc: subprocess.Popen) -> None:
    """The caller has stopped or reaped ``proc`` itself."""
    if proc in _children:
        _children.remove(proc)


def stop_children() -> None:
    """Stop every child still remembered, newest first."""
    while _children:
        proc = _children.pop()
        if proc.poll() is None:
            stop_pid(proc.pid, group=True)
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.wait(timeout=2)


def stop_pid(pid: int, grace: float = 5.0, group: bool = False) -> None:
    """SIGTERM ``pid`` (its process group if ``group``), SIGKILL after ``grace`` seconds."""
    kill = os.killpg if group else os.kill
    try:
        kill(pid, signal.SIGTERM)
    except ProcessLookupError:
        return
    deadline = time.monotonic() + grace
    while time.monotonic() < deadline:
        if not _alive(pid):
            return
        time.sleep(0.05)
    with contextlib.suppress(ProcessLookupError):
        kill(pid, signal.SIGKILL)


def _alive(pid: int) -> bool:
    try:
        done, _ = os.waitpid(pid, os.WNOHANG)  # reap our own children
        if done == pid:
            return False
    except ChildProcessError:
        pass
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    try:  # a zombie that is not ours counts as gone
        return Path(f"/proc/{pid}/stat").read_text().split(") ")[-1][:1] != "Z"
    except OSError:
        return False


def is_inference_process(pid: int) -> bool:
    """Alive and a kernel-magics inference process (a remembered PID may have been reused)."""
    try:
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return False
    return b"kernel_magics.serving" in cmdline and _alive(pid)


def stop_leftover_server(home: Path) -> None:
    """Last resort (the run was cut short mid-stop): the inference process of the benchmark's
    own home, found through its state file, is stopped by PID, workers first."""
    try:
        state = json.loads((home / "server.json").read_text())
    except (OSError, ValueError):
        return
    pids = [
        p for p in (state.get("worker_pids") or state.get("workers") or []) if isinstance(p, int)
    ]
    if isinstance(state.get("pid"), int):
        pids.append(state["pid"])
    for pid in pids:
        if is_inference_process(pid):
            log(f"stopping leftover inference process PID {pid}")
            stop_pid(pid)
