"""Fixtures for the inference process: one real supervisor per test module, started through
the kernel-side client and stopped by PID at the end."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from kernel_magics.config import Settings, load_settings
from kernel_magics.serving.process.cleanup import state_pids, stop_pids
from kernel_magics.targets.local import LocalTarget


@pytest.fixture(scope="module")
def settings(km_home: Path) -> Settings:
    return load_settings()


@pytest.fixture(scope="module")
def client(settings: Settings) -> Iterator[LocalTarget]:
    """One running supervisor for the module; stopped (by PID) at the end."""
    c = LocalTarget(settings)
    c.ensure_running(timeout=90)
    try:
        yield c
    finally:
        pids = state_pids(settings.state_file)  # read first: a clean stop removes the file
        c.stop()
        stop_pids(pids)  # whatever the polite stop left running
