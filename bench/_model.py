"""The benchmark's model: an MLP 32→256→256→10 registered as ``%train`` does, its in-process
speed (the reference for the serving goals), the request bodies, and the answer check."""

from __future__ import annotations

import io
import json
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from _log import log

NAME = "bench"  # registered model name, also the served name
N_IN, N_HIDDEN, N_OUT = 32, 256, 10
BATCH_ROWS = 256


def make_mlp(seed: int) -> Any:
    import torch

    torch.manual_seed(seed)
    return torch.nn.Sequential(
        torch.nn.Linear(N_IN, N_HIDDEN),
        torch.nn.ReLU(),
        torch.nn.Linear(N_HIDDEN, N_HIDDEN),
        torch.nn.ReLU(),
        torch.nn.Linear(N_HIDDEN, N_OUT),
    ).eval()


def register_versions(settings: Any) -> tuple[dict[int, str], Any]:
    """v1 (seed 0) and v2 (seed 1) of NAME, registered as ``%train`` registers (the one
    registration path).

    Returns ({version: local model folder}, the v1 eager module)."""
    from kernel_magics.registration import register_version
    from kernel_magics.store import Store

    store = Store(settings)
    example = np.random.default_rng(0).random((4, N_IN), dtype=np.float32)  # ≥ 2 rows: dynamic
    paths, first = {}, None
    for seed in (0, 1):
        model = make_mlp(seed)
        if first is None:
            first = model
        registered = register_version(
            store, model, example, name=NAME, task="classification", classes=list(range(N_OUT))
        )
        paths[registered.version] = store.local_path(store.resolve(NAME, registered.version))
    return paths, first


# -- in-process reference ------------------------------------------------------------------------
def time_call(fn: Callable[[], Any], target_s: float = 0.25, repeats: int = 5) -> float:
    """Best seconds per call over ``repeats`` timed loops of about ``target_s`` each.

    The best loop, not the median: it is the least disturbed by other work on the machine and
    gives the serving goals the highest (strictest) in-process reference."""
    for _ in range(20):
        fn()
    start = time.perf_counter()
    n = 0
    while time.perf_counter() - start < 0.05:
        fn()
        n += 1
    per = (time.perf_counter() - start) / n
    loops = max(10, int(target_s / per))
    samples = []
    for _ in range(repeats):
        start = time.perf_counter()
        for _ in range(loops):
            fn()
        samples.append((time.perf_counter() - start) / loops)
    return float(min(samples))


def in_process(model: Any, local_dir: str, quick: bool) -> dict[str, float]:
    """The eager forward at 1 thread (1 row, 256 rows) and, for information, the pt2 artifact
    as ``mlflow.pytorch.load_model`` returns it; microseconds per call and rows/s."""
    import torch

    torch.set_num_threads(1)
    rng = np.random.default_rng(1)
    x1 = torch.from_numpy(rng.random((1, N_IN), dtype=np.float32))
    xb = torch.from_numpy(rng.random((BATCH_ROWS, N_IN), dtype=np.float32))
    target = 0.1 if quick else 0.25
    out: dict[str, float] = {}
    with torch.inference_mode():
        out["eager_1_us"] = time_call(lambda: model(x1), target) * 1e6
        out["eager_256_us"] = time_call(lambda: model(xb), target) * 1e6
    out["eager_256_rows_s"] = BATCH_ROWS / out["eager_256_us"] * 1e6
    try:  # the served artifact as mlflow.pytorch.load_model gives it (ExportedProgram.module())
        import mlflow.pytorch

        loaded = mlflow.pytorch.load_model(local_dir)
        with torch.inference_mode():
            out["pt2_1_us"] = time_call(lambda: loaded(x1), target) * 1e6
            out["pt2_256_us"] = time_call(lambda: loaded(xb), target) * 1e6
    except Exception as err:  # informative only
        log(f"pt2 in-process timing skipped: {type(err).__name__}: {err}")
    return out


# -- request bodies and the answer check ---------------------------------------------------------
@dataclass(frozen=True)
class RequestBodies:
    """The same rows in each server's request format: in memory, and as files for wrk.

    Keys: ``mlflow_1``, ``mlflow_256`` (``{"inputs": ...}``), ``ours_1``, ``ours_256``
    (``{"instances": ...}``) and ``ours_npy`` (the 256 rows as ``.npy``)."""

    content: dict[str, bytes]
    files: dict[str, str]
    rows_256: np.ndarray  # what the 256-row bodies hold, to check answers against the model


def make_bodies(tmp: Path) -> RequestBodies:
    rng = np.random.default_rng(2)
    one = np.round(rng.standard_normal((1, N_IN)).astype(np.float32), 6)
    many = np.round(rng.standard_normal((BATCH_ROWS, N_IN)).astype(np.float32), 6)
    buf = io.BytesIO()
    np.save(buf, many.astype(np.float32), allow_pickle=False)
    content = {
        "mlflow_1": json.dumps({"inputs": one.tolist()}).encode(),
        "mlflow_256": json.dumps({"inputs": many.tolist()}).encode(),
        "ours_1": json.dumps({"instances": one.tolist()}).encode(),
        "ours_256": json.dumps({"instances": many.tolist()}).encode(),
        "ours_npy": buf.getvalue(),
    }
    files = {}
    for key, data in content.items():
        path = tmp / f"body_{key}.bin"
        path.write_bytes(data)
        files[key] = str(path)
    return RequestBodies(content=content, files=files, rows_256=many)


def check_outputs(
    model: Any, x: np.ndarray, status: int, headers: dict[str, str], data: bytes
) -> str:
    """'ok', or why the answer is not the model's output for ``x`` (a 200 must also be right)."""
    import torch

    if status != 200:
        return f"HTTP {status}: {data[:200]!r}"
    with torch.inference_mode():
        expected = model(torch.from_numpy(x.astype(np.float32))).numpy()
    ctype = headers.get("content-type", "")
    try:
        if "npy" in ctype or data[:6] == b"\x93NUMPY":
            got = np.load(io.BytesIO(data), allow_pickle=False)
        else:
            doc = json.loads(data)
            if isinstance(doc, dict):
                for key in ("predictions", "outputs", "outputs_raw"):
                    if key in doc:
                        doc = doc[key]
                        break
            got = np.asarray(doc, dtype=np.float32)
    except Exception as err:
        return f"unreadable answer ({type(err).__name__}): {data[:200]!r}"
    if got.shape != expected.shape:
        return f"shape {got.shape}, expected {expected.shape}"
    if not np.allclose(got, expected, atol=1e-4, rtol=1e-4):
        return f"outputs differ from the model's by up to {np.abs(got - expected).max():.3g}"
    return "ok"
