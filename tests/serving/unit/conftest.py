"""In-process unit tests of the inference process's parts: no subprocess, no HTTP client.
Helpers live in ``kit/model_dirs.py``."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
import torch
from kit.model_dirs import write_model_dir

ModelDir = Callable[..., Path]


@pytest.fixture
def model_dir(tmp_path: Path) -> ModelDir:
    """``model_dir(model, example, fmt="pt2", name="m", dynamic_batch=True)``: a fresh model
    folder (see ``kit.model_dirs.write_model_dir``)."""

    def make(
        model: torch.nn.Module,
        example: np.ndarray,
        fmt: str = "pt2",
        name: str = "m",
        dynamic_batch: bool = True,
    ) -> Path:
        return write_model_dir(tmp_path / name, model, example, fmt, dynamic_batch)

    return make
