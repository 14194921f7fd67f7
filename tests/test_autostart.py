"""``%load_ext kernel_magics`` starts the inference process in the background (the default), so
the first ``%deploy`` finds it running; a second load reattaches instead of starting another;
while the extension is loaded, a supervisor that dies is brought back without a call."""

from __future__ import annotations

import json
import os
import signal
import time
from pathlib import Path

import pytest

from kernel_magics import api
from kernel_magics.records import ServerStatus
from kernel_magics.serving.process.pids import pid_alive


def _wait_ready(timeout: float = 90.0) -> ServerStatus:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        status = api.server_status()
        if status and status.ready:
            return status
        time.sleep(0.2)
    raise AssertionError(f"no ready inference process {timeout:.0f} s after %load_ext")


def _state_after(path: Path, old_pid: int, timeout: float = 60.0) -> dict:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            state = json.loads(path.read_text())
        except (OSError, ValueError):
            state = {}
        if state.get("pid") not in (None, old_pid) and state.get("status") == "ready":
            return state
        time.sleep(0.1)
    raise AssertionError(f"no new inference process {timeout:.0f} s after the old one died")


def test_load_ext_starts_the_inference_process(
    km_home: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from IPython.core.history import HistoryAccessor
    from IPython.core.interactiveshell import InteractiveShell

    monkeypatch.setenv("KERNEL_MAGICS_AUTOSTART", "1")
    HistoryAccessor.enabled = False
    shell = InteractiveShell.instance()
    assert api.server_status() is None
    shell.run_line_magic("load_ext", "kernel_magics")
    try:
        status = _wait_ready()
        assert status.models == {}
        assert (km_home / "server.json").is_file()
        # Loading again (a second notebook on the same home) reattaches to the same process.
        shell.run_line_magic("unload_ext", "kernel_magics")
        shell.run_line_magic("load_ext", "kernel_magics")
        time.sleep(1.0)  # give a (wrong) second start the time to replace the state file
        assert _wait_ready().pid == status.pid
        # The supervisor dies without its clean stop: the kernel's watchdog brings it back,
        # with no call from the user (only the state file is read here).
        os.kill(status.pid, signal.SIGKILL)
        state = _state_after(km_home / "server.json", status.pid)
        assert state["status"] == "ready"
        assert pid_alive(state["pid"])
        assert state["url"] == status.url  # same port: scripts keep their URL
        assert _wait_ready().pid == state["pid"]
    finally:
        shell.run_line_magic("unload_ext", "kernel_magics")
