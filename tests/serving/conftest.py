"""Fixtures for the inference process: one real supervisor per test module, started through
the kernel-side client and stopped by PID at the end."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from servekit import kill_state_pids

from kernel_magics.config import Settings, load_settings
from kernel_magics.targets.local import ServingClient, pid_alive


@pytest.fixture(scope="module")
def settings(km_home: Path) -> Settings:
    return load_settings()


@pytest.fixture(scope="module")
def client(settings: Settings) -> Iterator[ServingClient]:
    """One running supervisor for the module; stopped (by PID) at the end."""
    c = ServingClient(settings)
    c.ensure_running(timeout=90)
    try:
        yield c
    finally:
        pid = json.loads(settings.state_file.read_text())["pid"] if c.url else None
        c.stop()
        kill_state_pids(settings)
        if pid:
            deadline = time.monotonic() + 5
            while pid_alive(pid) and time.monotonic() < deadline:
                time.sleep(0.05)
