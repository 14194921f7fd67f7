"""The benchmark's second model: a small conv net on 1×28×28 float32 images, registered in the
same throwaway store as the MLP and served by both servers on the MLP's load scenarios (1-row
JSON at 16 connections, 256-row JSON and ``.npy`` at 4), against its own in-process forward.

It checks that a model whose rows are not flat vectors (4-D input) goes through the same
lifecycle, and how the serving overheads compare when each row costs ~100× the MLP's compute.
Runs after the MLP part, which it leaves untouched; ``serving.py --skip-conv`` leaves it out.
"""

from __future__ import annotations

import io
import json
import os
from pathlib import Path
from typing import Any

import numpy as np
from _load_tools import Loader
from _log import log
from _model import BATCH_ROWS, RequestBodies, time_call
from _ours import bench_ours_prestarted
from _peer import bench_mlflow

CONV_NAME = "benchconv"  # registered model name, also the served name
IMAGE_SHAPE = (1, 28, 28)  # channels, height, width: one row of the conv net
N_OUT = 10
CONV_SECONDS_MAX = 5.0  # per scenario: the conv part must fit the run's budget beside the MLP


def make_convnet(seed: int) -> Any:
    """conv(1→8, 3)→relu→maxpool→conv(8→16, 3)→relu→maxpool→flatten→linear(400→10).

    ~0.19 M multiply-adds per image (the MLP: ~76 k): a real forward per row, yet at 1 row the
    server's own overheads still show."""
    import torch
    from torch import nn

    torch.manual_seed(seed)
    return nn.Sequential(
        nn.Conv2d(1, 8, 3),  # 28 → 26
        nn.ReLU(),
        nn.MaxPool2d(2),  # 26 → 13
        nn.Conv2d(8, 16, 3),  # 13 → 11
        nn.ReLU(),
        nn.MaxPool2d(2),  # 11 → 5
        nn.Flatten(),
        nn.Linear(16 * 5 * 5, N_OUT),
    ).eval()


def pixel_values(rows: int, seed: int) -> np.ndarray:
    """Synthetic images in [0, 1) with 6 decimals, as float64: in JSON they read ``0.123456``
    (~7 kB per image; float32 values would print with ~17 digits). A server casting them to
    float32 gets exactly ``images(rows, seed)``, the values the answer check feeds the model."""
    rng = np.random.default_rng(seed)
    return np.round(rng.random((rows, *IMAGE_SHAPE)), 6)


def images(rows: int, seed: int) -> np.ndarray:
    """``pixel_values`` as the model takes them: float32 of shape (rows, 1, 28, 28)."""
    return pixel_values(rows, seed).astype(np.float32)


def register_convnet(settings: Any) -> tuple[str, Any]:
    """v1 of CONV_NAME, registered through the same public path as the MLP (and ``%train``).

    Returns (its local model folder, the eager module)."""
    from kernel_magics.registration import register_version
    from kernel_magics.store import Store

    store = Store(settings)
    model = make_convnet(0)
    registered = register_version(
        store,
        model,
        images(4, seed=0),  # ≥ 2 rows, so that the exported batch size stays dynamic
        name=CONV_NAME,
        task="classification",
        classes=list(range(N_OUT)),
    )
    return store.local_path(store.resolve(CONV_NAME, registered.version)), model


def conv_in_process(model: Any, local_dir: str, quick: bool) -> dict[str, float]:
    """The eager forward at 1 thread (1 row, 256 rows), the reference of the 40 % goal, and
    the pt2 artifact as ``mlflow.pytorch.load_model`` returns it, for information."""
    import torch

    torch.set_num_threads(1)
    x1 = torch.from_numpy(images(1, seed=1))
    xb = torch.from_numpy(images(BATCH_ROWS, seed=1))
    target = 0.1 if quick else 0.25
    out: dict[str, float] = {}
    with torch.inference_mode():
        out["eager_1_us"] = time_call(lambda: model(x1), target) * 1e6
        out["eager_256_us"] = time_call(lambda: model(xb), target) * 1e6
    out["eager_256_rows_s"] = BATCH_ROWS / out["eager_256_us"] * 1e6
    try:
        import mlflow.pytorch

        loaded = mlflow.pytorch.load_model(local_dir)
        with torch.inference_mode():
            out["pt2_1_us"] = time_call(lambda: loaded(x1), target) * 1e6
            out["pt2_256_us"] = time_call(lambda: loaded(xb), target) * 1e6
    except Exception as err:  # informative only
        log(f"conv: pt2 in-process timing skipped: {type(err).__name__}: {err}")
    return out


def make_conv_bodies(tmp: Path) -> RequestBodies:
    """The MLP's body set, with images: ``{"inputs": ...}`` for mlflow (a tensor-signature
    model takes nested lists of the signature's rank), ``{"instances": ...}`` for ours, and the
    256 images as one ``.npy`` array of shape (256, 1, 28, 28)."""
    one, many = pixel_values(1, seed=2).tolist(), pixel_values(BATCH_ROWS, seed=3)
    rows_256 = many.astype(np.float32)
    buf = io.BytesIO()
    np.save(buf, rows_256, allow_pickle=False)
    content = {
        "mlflow_1": json.dumps({"inputs": one}).encode(),
        "mlflow_256": json.dumps({"inputs": many.tolist()}).encode(),
        "ours_1": json.dumps({"instances": one}).encode(),
        "ours_256": json.dumps({"instances": many.tolist()}).encode(),
        "ours_npy": buf.getvalue(),
    }
    files = {}
    for key, data in content.items():
        path = tmp / f"body_conv_{key}.bin"
        path.write_bytes(data)
        files[key] = str(path)
    return RequestBodies(content=content, files=files, rows_256=rows_256)


def bench_convnet(
    out: dict,
    settings: Any,
    loader: Loader,
    tmp: Path,
    seconds: float,
    quick: bool,
    date: str,
    reuse_mlflow: dict | None,
) -> bool:
    """Register, time in process, then mlflow and ours on the load scenarios, ``seconds`` each
    (at most CONV_SECONDS_MAX). ``reuse_mlflow``: earlier mlflow figures to keep instead of
    measuring (--skip-mlflow). Fills ``out`` as it goes; False if a side failed.

    A side's failure is noted and the other side still runs; the run's time budget (a
    BaseException) goes through."""
    import torch

    seconds = min(seconds, CONV_SECONDS_MAX)
    out["duration_s"] = seconds
    out.setdefault("notes", [])
    local_dir, model = register_convnet(settings)
    log(f"conv: registered {CONV_NAME} v1 ({'×'.join(map(str, IMAGE_SHAPE))} float32 images)")
    out["inproc"] = ip = conv_in_process(model, local_dir, quick)
    log(
        f"conv in-process (1 thread): 1 image {ip['eager_1_us']:.0f} µs, "
        f"256 images {ip['eager_256_us']:.0f} µs ({ip['eager_256_rows_s']:.0f} rows/s)"
    )
    torch.set_num_threads(max(1, os.cpu_count() or 1))  # the bench process idles from here
    bodies = make_conv_bodies(tmp)
    ok = True
    if reuse_mlflow:
        out["mlflow"] = {**reuse_mlflow, "reused": True}
        log("mlflow conv: reusing the figures from bench/results.json")
    else:
        out["mlflow"] = {
            "measured": date,
            "measured_with": f"{loader.tool}, {seconds:g} s per scenario"
            + (", --quick" if quick else ""),
        }
        try:
            bench_mlflow(
                out["mlflow"], local_dir, bodies, loader, tmp, seconds, model, "mlflow conv"
            )
        except Exception as err:
            ok = False
            out["notes"].append(f"conv net: mlflow models serve failed: {err}")
            log(f"mlflow conv: FAILED: {err}")
    out["ours"] = {}
    try:
        bench_ours_prestarted(
            out["ours"], settings, CONV_NAME, bodies, loader, seconds, model, "ours conv"
        )
    except Exception as err:
        ok = False
        out["notes"].append(f"conv net: kernel-magics run failed: {type(err).__name__}: {err}")
        log(f"ours conv: FAILED: {type(err).__name__}: {err}")
    return ok
