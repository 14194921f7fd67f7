"""Starting and stopping the benchmark's processes, by PID only.

Every child is started in its own session (process group) and remembered, so that any exit of
the benchmark, a crash or the time budget included, stops exactly what it started and nothing
else on the machine. The stopping itself is ``kernel_magics.serving.process.cleanup`` (shared
with the tests).
"""

from __future__ import annotations

import contextlib
import os
import subprocess
import tempfile
from pathlib import Path
from typing import Any

from _log import log

from kernel_magics.serving.process.cleanup import is_ours as is_inference_process
from kernel_magics.serving.process.cleanup import state_pids, stop_pids

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
    """SIGTERM ``pid`` (its process group if ``group``), SIGKILL after ``grace`` seconds: any
    process the benchmark started (mlflow's server too), not only kernel-magics ones."""
    stop_pids([pid], grace=grace, group=group, only_ours=False)


def stop_leftover_server(home: Path) -> None:
    """Last resort (the run was cut short mid-stop): the inference process of the benchmark's
    own home, found through its state file, is stopped by PID, workers first."""
    pids = [pid for pid in state_pids(home / "server.json") if is_inference_process(pid)]
    if pids:
        log(f"stopping leftover inference process PIDs {pids}")
        stop_pids(pids)


def private_home(prefix: str, **env: str) -> tuple[Path, Path]:
    """A fresh temporary folder and the kernel-magics home inside it, set for this process and
    every child: the embedded store (any MLFLOW_TRACKING_URI dropped), plus ``env``."""
    tmp = Path(tempfile.mkdtemp(prefix=prefix))
    home = tmp / "home"
    os.environ.pop("MLFLOW_TRACKING_URI", None)
    os.environ.update(KERNEL_MAGICS_HOME=str(home), **env)
    return tmp, home
