"""Helpers for the serving tests: small real models registered as kernel-magics registers
them, raw HTTP (clean-up by PID: ``kernel_magics.serving.process.cleanup``)."""

from __future__ import annotations

import socket
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from kernel_magics.config import Settings
from kernel_magics.registration import register_version
from kernel_magics.store import TAG_FORMAT, TAG_SHA256, TAG_TASK, Store, hash_model_dir
from kernel_magics.targets.local import LocalTarget

N_FEATURES = 32


class MLP(torch.nn.Module):
    def __init__(self, features: int = N_FEATURES, hidden: int = 64, out: int = 10, seed: int = 0):
        super().__init__()
        torch.manual_seed(seed)
        self.net = torch.nn.Sequential(
            torch.nn.Linear(features, hidden), torch.nn.ReLU(), torch.nn.Linear(hidden, out)
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


@dataclass
class Logged:
    name: str
    version: int
    path: str
    model: torch.nn.Module

    def expected(self, X: np.ndarray) -> np.ndarray:
        """What the logged artifact computes in this process (the reference for exactness)."""
        pt2 = Path(self.path) / "data" / "model.pt2"
        with torch.inference_mode():
            if pt2.is_file():
                return torch.export.load(str(pt2)).module()(torch.from_numpy(X)).numpy()
            return self.model(torch.from_numpy(X)).numpy()


def assert_served(out: np.ndarray, expected: np.ndarray) -> None:
    """The served answer is the version's: equal to this process's up to float32 rounding. A
    product's rows split another way (the inference process batches and threads its own
    way, and MKL's dynamic threads follow the machine's load) can differ in the last bit;
    two versions differ by far more."""
    np.testing.assert_allclose(out, expected, rtol=1e-5, atol=1e-6)


def log_model(
    settings: Settings,
    name: str,
    model: torch.nn.Module,
    example: np.ndarray,
    task: str | None = "classification",
    serialization_format: str = "pt2",
) -> Logged:
    """Register through kernel-magics' one registration path: pt2 (or pickle), content hash.

    A 1-row example gives what a model logged elsewhere from one row is: an export whose batch
    is fixed at 1 (``register_version`` would repeat the row to keep the batch dynamic)."""
    store = Store(settings)
    if len(example) == 1:
        return _log_fixed_batch(store, name, model, example, task)
    registered = register_version(
        store, model, example, name=name, task=task, serialization=serialization_format
    )
    local = store.local_path(store.resolve(name, registered.version))
    return Logged(name, registered.version, local, model)


def _log_fixed_batch(
    store: Store, name: str, model: torch.nn.Module, example: np.ndarray, task: str | None
) -> Logged:
    """A version as plain ``mlflow.pytorch.log_model`` makes it from a one-row example (the
    exporter freezes the batch at 1), tagged with its hash so that it can be deployed."""
    import mlflow

    with store.tracking(), store.write_lock():
        with mlflow.start_run(experiment_id=store.experiment_id()) as run:
            info = mlflow.pytorch.log_model(
                model, name="model", input_example=example, pip_requirements=["torch"]
            )
        local = mlflow.artifacts.download_artifacts(info.model_uri)
        tags = {TAG_SHA256: hash_model_dir(local), TAG_FORMAT: "pt2", TAG_TASK: task or ""}
        if not store.model_exists(name):
            store.client.create_registered_model(name)
        version = store.client.create_model_version(
            name, info.model_uri, run.info.run_id, tags=tags, model_id=info.model_id
        )
    return Logged(name, int(version.version), local, model)


def rows(n: int, seed: int = 0, features: int = N_FEATURES) -> np.ndarray:
    return np.random.default_rng(seed).standard_normal((n, features)).astype(np.float32)


def raw_http(port: int, data: bytes, read_until_close: bool = True, timeout: float = 10) -> bytes:
    """Send bytes on a fresh TCP connection; return what comes back."""
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as s:
        s.sendall(data)
        if not read_until_close:
            return s.recv(1 << 20)
        chunks = []
        while True:
            try:
                chunk = s.recv(1 << 20)
            except (ConnectionResetError, TimeoutError):
                break
            if not chunk:
                break
            chunks.append(chunk)
        return b"".join(chunks)


def auth(client: LocalTarget) -> dict[str, Any]:
    return {"Authorization": f"Bearer {client.token()}"}


class FailsOnBigBatches(MLP):
    """Logs fine (4-row example), then fails the warm-up forward at the largest batch."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.shape[0] > 8:
            raise ValueError("this model cannot take more than 8 rows")
        return self.net(x)


class Branchy(MLP):
    """Data-dependent control flow: torch.export cannot trace it; MLflow's pickle format can."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.net(x)
        if out.sum() > 1e9:
            return out * 0
        return out


class Slow(MLP):
    """Takes ``SLOW_S`` per forward (pickle format: torch.export would drop the sleep)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        import time

        time.sleep(SLOW_S)
        return self.net(x)


SLOW_S = 1.0


def log_pickled(
    settings: Settings, name: str, model: torch.nn.Module, example: np.ndarray
) -> Logged:
    """Pickle format; this helper module travels by value, as a notebook's classes would."""
    import sys

    import cloudpickle

    cloudpickle.register_pickle_by_value(sys.modules[__name__])
    return log_model(settings, name, model, example, serialization_format="pickle")
