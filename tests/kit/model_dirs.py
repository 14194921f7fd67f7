"""Helpers of the in-process unit tests: a model folder laid out as MLflow's pytorch flavor
writes it (``MLmodel`` with the tensor signature, ``input_example.json``, ``data/model.pt2``
exported the way MLflow exports it, or ``data/model.pth`` for the pickle format), written
without going through MLflow; small models and inputs."""

from __future__ import annotations

import concurrent.futures
import json
from collections.abc import Coroutine
from pathlib import Path
from typing import Any, TypeVar

import numpy as np
import torch
import uvloop
import yaml

T = TypeVar("T")


def run_loop(coro: Coroutine[Any, Any, T]) -> T:
    """Run ``coro`` on a fresh uvloop loop (the worker's) in a thread of its own, so that an
    event loop some other test left running in the main thread cannot get in the way."""
    with concurrent.futures.ThreadPoolExecutor(1) as thread:
        return thread.submit(uvloop.run, coro).result()


def _tensor_spec(array: np.ndarray) -> str:
    spec = {"dtype": array.dtype.name, "shape": [-1, *array.shape[1:]]}
    return json.dumps([{"type": "tensor", "tensor-spec": spec}])


def write_model_dir(
    folder: Path,
    model: torch.nn.Module,
    example: np.ndarray,
    fmt: str = "pt2",
    dynamic_batch: bool = True,
) -> Path:
    """A model folder as ``mlflow.pytorch.log_model`` writes it, for ``fmt`` pt2 or pickle;
    ``dynamic_batch=False`` exports a graph that takes exactly the example's row count."""
    model.eval()
    (folder / "data").mkdir(parents=True)
    x = torch.from_numpy(example)
    if fmt == "pt2":
        # as MLflow does: the batch dimension is Dim.AUTO (dynamic when the example has ≥ 2 rows)
        dims = ({0: torch.export.Dim.AUTO},) if dynamic_batch else None
        ep = torch.export.export(model, (x,), dynamic_shapes=dims)
        torch.export.save(ep, str(folder / "data" / "model.pt2"))
    else:
        torch.save(model, folder / "data" / "model.pth")
    with torch.no_grad():
        out = model(x).numpy()
    meta = {
        "flavors": {"pytorch": {"model_data": "data"}},
        "signature": {"inputs": _tensor_spec(example), "outputs": _tensor_spec(out)},
    }
    (folder / "MLmodel").write_text(yaml.safe_dump(meta))
    (folder / "input_example.json").write_text(json.dumps(example.tolist()))
    return folder


class TinyMLP(torch.nn.Module):
    """4 features → 3 outputs."""

    def __init__(self, seed: int = 0):
        super().__init__()
        torch.manual_seed(seed)
        self.net = torch.nn.Sequential(
            torch.nn.Linear(4, 8), torch.nn.ReLU(), torch.nn.Linear(8, 3)
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


def rows(n: int, features: int = 4, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).standard_normal((n, features)).astype(np.float32)
