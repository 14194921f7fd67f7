"""Shared fixtures: a throwaway home per test module, the real IPython shell with the extension
loaded, the digits data, and clean-up of any inference process a module started."""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from kernel_magics import api
from kernel_magics.config import load_settings
from kernel_magics.serving.process.cleanup import state_pids, stop_pids
from kernel_magics.targets.local import LocalTarget


def stop_inference_process(home: Path) -> None:
    """Stop what this home's tests started: politely through the API, then, as a last resort,
    the PIDs its state file named (and only those)."""
    settings = load_settings(home=home)
    # A start still under way (`%deploy nope` starts the process while the kernel checks the
    # name) holds the start lock until its state file is written: wait for it first.
    LocalTarget(settings).process.wait_for_start(timeout=90)
    pids = state_pids(settings.state_file)  # read first: a clean stop removes the file
    with contextlib.suppress(Exception):
        api.server_stop(settings=settings)
    stop_pids(pids)


@pytest.fixture(scope="module")
def km_home(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """A fresh home folder (embedded SQLite store) for one test module, set through the
    environment exactly as a user would; no MLFLOW_TRACKING_URI. Whatever inference process
    the module started there is stopped at the end."""
    home = tmp_path_factory.mktemp("km-home")
    with pytest.MonkeyPatch.context() as mp:
        for key in list(os.environ):
            if key.startswith(("KERNEL_MAGICS_", "MLFLOW_")):
                mp.delenv(key)
        mp.setenv("KERNEL_MAGICS_HOME", str(home))
        mp.setenv("KERNEL_MAGICS_PROGRESS", "none")
        # Tests start the inference process when they need it (tests/test_autostart.py covers
        # the default, where %load_ext starts it): a process per module would only cost CPU.
        mp.setenv("KERNEL_MAGICS_AUTOSTART", "0")
        try:
            yield home
        finally:
            stop_inference_process(home)


@pytest.fixture(scope="module")
def ip(km_home: Path) -> Iterator[Any]:
    """The real InteractiveShell with ``%load_ext kernel_magics`` (unloaded after the module)."""
    from IPython.core.history import HistoryAccessor

    HistoryAccessor.enabled = False  # no SQLite history file for a throwaway shell
    from IPython.core.interactiveshell import InteractiveShell

    shell = InteractiveShell.instance()
    shell.run_line_magic("load_ext", "kernel_magics")
    yield shell
    shell.run_line_magic("unload_ext", "kernel_magics")


@pytest.fixture(scope="session")
def digits() -> tuple[np.ndarray, np.ndarray]:
    """scikit-learn's bundled 8×8 digits (no download), scaled to [0, 1]."""
    from sklearn.datasets import load_digits

    X, y = load_digits(return_X_y=True)
    return (X / 16.0).astype(np.float32), y


def _run_cell(shell: Any, code: str) -> Any:
    result = shell.run_cell(code)
    result.raise_error()
    return result.result


@pytest.fixture(scope="session")
def run_cell() -> Any:
    """``run_cell(shell, code)``: run a cell like a notebook does and re-raise what it raised.

    A fixture rather than an importable helper: tests/serving has a conftest of its own, so
    ``from conftest import ...`` would find whichever was imported first.
    """
    return _run_cell


NET_CELL = """
import torch.nn as nn

class Net(nn.Module):
    def __init__(self, hidden=32):
        super().__init__()
        self.layers = nn.Sequential(nn.Linear(64, hidden), nn.ReLU(), nn.Linear(hidden, 10))

    def forward(self, x):
        return self.layers(x)
"""


@pytest.fixture(scope="module")
def ns(ip: Any, digits: tuple[np.ndarray, np.ndarray]) -> Any:
    """The shell after a notebook's first cells: X and y loaded, ``Net`` defined in a cell
    (so the class lives in ``__main__``, as in a real notebook)."""
    X, y = digits
    ip.user_ns.update(X=X, y=y)
    _run_cell(ip, NET_CELL)
    return ip
