"""Fixtures for the training tests: bundled scikit-learn data (no downloads), small models, a
real IPython shell, and a progress reporter that records what it was told."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import numpy as np
import pytest
import torch
from kit.shell import interactive_shell


@pytest.fixture(scope="session")
def digits_xy() -> tuple[np.ndarray, np.ndarray]:
    """8x8 digits: 1797 rows, 64 features in [0, 16], labels 0..9."""
    from sklearn.datasets import load_digits

    return load_digits(return_X_y=True)


@pytest.fixture(scope="session")
def diabetes_xy() -> tuple[np.ndarray, np.ndarray]:
    from sklearn.datasets import load_diabetes

    return load_diabetes(return_X_y=True)


def _mlp(n_in: int = 64, n_out: int = 10, hidden: int = 32, seed: int = 0) -> torch.nn.Module:
    torch.manual_seed(seed)  # the same initial weights every time
    return torch.nn.Sequential(
        torch.nn.Linear(n_in, hidden), torch.nn.ReLU(), torch.nn.Linear(hidden, n_out)
    )


@pytest.fixture
def make_mlp() -> Any:
    """``make_mlp(n_in=64, n_out=10, hidden=32, seed=0)``: a seeded two-layer MLP."""
    return _mlp


class Recorder:
    """A ``Progress`` that keeps every call, to check what fit reports and when."""

    def __init__(self) -> None:
        self.calls: list[tuple[str, Any]] = []
        self.steps = 0

    def start(self, epochs: int, steps_per_epoch: int, title: str) -> None:
        self.calls.append(("start", (epochs, steps_per_epoch, title)))

    def step(self, loss: float) -> None:
        self.steps += 1

    def epoch_end(self, result: Any) -> None:
        self.calls.append(("epoch_end", result))

    def finish(self, status: str, message: str) -> None:
        self.calls.append(("finish", (status, message)))

    def kinds(self) -> list[str]:
        return [kind for kind, _ in self.calls]


@pytest.fixture
def recorder() -> Recorder:
    return Recorder()


@pytest.fixture(scope="session")
def shell() -> Any:
    """The real (terminal-less) IPython InteractiveShell: display() goes through it."""
    return interactive_shell()


@pytest.fixture(autouse=True)
def _one_torch_thread() -> Iterator[None]:
    """Tiny models train fastest on one thread, and timings stay stable when other test runs
    share this machine's cores; restored afterwards so other test folders are unaffected."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)
