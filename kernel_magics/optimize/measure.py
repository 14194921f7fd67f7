"""The figures of one registered version, measured on what the inference process would serve.

Each version is loaded from its MLflow folder by the worker's own code (``LoadedModel``: the
loader registry keyed by ``km.format``, the pt2 fast path, the same input checks), so the
latency is the forward a request would get, not an eager module's. Everything runs on one
thread (torch and onnxruntime alike), as a worker does by default.
"""

from __future__ import annotations

import contextlib
import statistics
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

BATCHES = (1, 64)  # rows per forward for the latency figures
MIN_SECONDS = 0.25  # per batch size: enough repetitions for a stable median on a busy machine
MIN_REPEATS = 30


@dataclass(frozen=True)
class Validation:
    """Held-out rows and their true values: class labels (as the version names them) for
    classification, targets for regression."""

    X: np.ndarray
    truth: np.ndarray
    task: str  # "classification" | "regression"
    labels: list | None = None  # the model's output order (classification)


@dataclass(frozen=True)
class Figures:
    """One row of the trade-off table."""

    label: str  # "digits@1 (parent)", "digits@2 (new)"
    format: str
    size_bytes: int  # the model file the worker loads
    params: int  # weight elements stored (int8 weights count like fp32 ones)
    p50_us: dict[int, float]  # median µs of one forward, by batch size
    metrics: dict[str, float] = field(default_factory=dict)  # empty: no validation data

    def flat(self) -> dict[str, float]:
        """Figures by metric name: ``size_bytes``, ``params``, ``p50_us_b1``, ``accuracy``..."""
        out = {"size_bytes": float(self.size_bytes), "params": float(self.params)}
        out.update({f"p50_us_b{rows}": us for rows, us in self.p50_us.items()})
        out.update(self.metrics)
        return out


@contextlib.contextmanager
def one_thread() -> Iterator[None]:
    """torch on one intra-op thread (onnxruntime sessions made inside follow it)."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def served(folder: str | Path, fmt: str | None, label: str = "model") -> Any:
    """The version as a worker loads it: a ``LoadedModel`` whose ``forward(array)`` serves."""
    from kernel_magics.serving.request.model import LoadedModel

    model = LoadedModel(label, 0, str(folder), "", None, max(BATCHES), 0.0, format=fmt)
    model.load()
    return model


def model_file(folder: str | Path, fmt: str | None) -> Path:
    from kernel_magics.formats.loaders import loader_for

    found = loader_for(Path(folder), fmt)
    return Path(folder) / found.file


def count_params(path: Path, fmt: str) -> int:
    """Weight elements in the stored model (ONNX: initializers of rank ≥ 1)."""
    if fmt == "onnx":
        import onnx

        graph = onnx.load(str(path), load_external_data=False).graph
        return sum(int(np.prod(t.dims)) for t in graph.initializer if len(t.dims) >= 1)
    import torch

    if fmt == "pt2":
        state = torch.export.load(str(path)).state_dict
        return sum(int(t.numel()) for t in state.values())
    return module_params(torch.load(path, map_location="cpu", weights_only=False))


def module_params(module: Any) -> int:
    """Parameters of an ``nn.Module``, counting the packed weights of torch.ao int8 layers."""
    total = 0
    for sub in module.modules():
        weight = getattr(sub, "weight", None)
        if callable(weight) and not hasattr(weight, "numel"):  # quantized: weight() unpacks
            total += int(weight().numel())
            bias = sub.bias() if callable(getattr(sub, "bias", None)) else None
            total += int(bias.numel()) if bias is not None else 0
    return total + sum(int(p.numel()) for p in module.parameters())


def p50_us(forward: Callable[[np.ndarray], Any], batch: np.ndarray) -> float:
    """Median microseconds of ``forward(batch)`` after a short warm-up."""
    for _ in range(5):
        forward(batch)
    times: list[float] = []
    deadline = time.perf_counter() + MIN_SECONDS
    while len(times) < MIN_REPEATS or time.perf_counter() < deadline:
        started = time.perf_counter()
        forward(batch)
        times.append(time.perf_counter() - started)
    return statistics.median(times) * 1e6


def quality(outputs: np.ndarray, val: Validation) -> dict[str, float]:
    """accuracy and macro F1 (classification) or MSE (regression) on the validation rows."""
    from sklearn.metrics import accuracy_score, f1_score, mean_squared_error

    if val.task == "classification":
        index = outputs.argmax(axis=-1)
        predicted = np.asarray(val.labels, dtype=object)[index] if val.labels else index
        truth = np.asarray(val.truth, dtype=object) if val.labels else val.truth
        return {
            "accuracy": float(accuracy_score(truth.astype(str), predicted.astype(str))),
            "f1_macro": float(f1_score(truth.astype(str), predicted.astype(str), average="macro")),
        }
    flat = outputs.reshape(len(outputs), -1)
    return {"mse": float(mean_squared_error(val.truth.reshape(len(flat), -1), flat))}


def predict_all(forward: Callable[[np.ndarray], np.ndarray], X: np.ndarray) -> np.ndarray:
    """Outputs for every row, 256 rows per forward."""
    return np.concatenate([forward(X[i : i + 256]) for i in range(0, len(X), 256)])


def measure(
    folder: str | Path, fmt: str, label: str, rows: np.ndarray, val: Validation | None
) -> Figures:
    """Size, parameters, p50 latency at batch 1 and 64 (one thread) and validation quality of
    the version in ``folder``. ``rows``: input rows to time with (repeated to 64)."""
    path = model_file(folder, fmt)
    with one_thread():
        model = served(folder, fmt, label)
        batch = {n: _rows(rows, n, model) for n in BATCHES}
        latency = {n: p50_us(model.forward, batch[n]) for n in BATCHES}
        metrics = {}
        if val is not None:
            metrics = quality(predict_all(model.forward, encoded(model, val.X)), val)
    return Figures(label, fmt, path.stat().st_size, count_params(path, fmt), latency, metrics)


def _rows(rows: np.ndarray, n: int, model: Any) -> np.ndarray:
    reps = -(-n // len(rows))
    return encoded(model, np.concatenate([rows] * reps)[:n])


def encoded(model: Any, rows: np.ndarray) -> np.ndarray:
    """``rows`` checked as the graph takes them. Optimization measures and compares graphs on
    the encoded rows they take: a declared encoding step (preprocess.py) is carried to the new
    version, not applied here."""
    return model.check(rows, len(rows), table_rows=False)
