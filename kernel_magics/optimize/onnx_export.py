"""ONNX export with a dynamic batch dimension, checked against torch, logged in MLflow's onnx
flavor with its signature (what ``formats/onnx.py`` serves with onnxruntime).

onnx, onnxscript (the exporter's dependency) and onnxruntime are imported only here, when an
optimization runs: ``pip install 'kernel-magics[optimize]'``.
"""

from __future__ import annotations

import contextlib
import importlib.util
import io
import logging
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import torch

from kernel_magics.errors import InvalidInput, first_line

LIBRARIES = ("onnx", "onnxscript", "onnxruntime")
# fp32 ONNX outputs must match torch's within TOLERANCE × max(1, largest |output|).
TOLERANCE = 1e-4


def require_onnx(what: str) -> None:
    """One line naming what to install when the optional libraries are missing."""
    missing = [name for name in LIBRARIES if importlib.util.find_spec(name) is None]
    if missing:
        raise InvalidInput(
            f"{what} needs {', '.join(missing)}: pip install 'kernel-magics[optimize]'"
        )


@contextlib.contextmanager
def _quiet() -> Iterator[None]:
    """The exporter prints progress and warnings (torchvision ops, opset notes): keep the cell
    clean; failures still raise."""
    loggers = [logging.getLogger(n) for n in ("torch.onnx", "onnxscript", "onnx_ir", "")]
    levels = [lg.level for lg in loggers]
    for lg in loggers:
        lg.setLevel(logging.ERROR)
    try:
        with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
            yield
    finally:
        for lg, level in zip(loggers, levels, strict=True):
            lg.setLevel(level)


def export(model: torch.nn.Module, example: np.ndarray, path: Path) -> None:
    """``model`` (eval mode) to ``path``: one file (no side ``.data``), batch dimension dynamic."""
    from torch.export import Dim

    x = torch.from_numpy(np.ascontiguousarray(example))
    # A graph from torch.export is already in eval form but reports training mode: say eval,
    # or the exporter warns that dropout and batch norm may behave as in training.
    model.eval()
    try:
        with _quiet(), torch.no_grad():
            torch.onnx.export(
                model,
                (x,),
                str(path),
                dynamo=True,
                external_data=False,
                dynamic_shapes=({0: Dim("batch")},),
                verbose=False,
            )
    except Exception as err:  # the exporter fails in many exception types
        detail = re.sub(r"\x1b\[[0-9;]*m", "", first_line(err, limit=200))  # colour codes
        raise InvalidInput(
            f"cannot export {type(model).__name__} to ONNX: {type(err).__name__}: {detail}"
        ) from None


class OnnxModule(torch.nn.Module):
    """An ONNX file run by onnxruntime behind the ``nn.Module`` call (the worker's loader):
    registration probes the exported artifact itself, and checks compare it with torch."""

    def __init__(self, path: Path) -> None:
        super().__init__()
        from kernel_magics.formats.onnx import load_onnx

        self.path = path
        self._forward = load_onnx(path).fn

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self._forward(x.contiguous())


def max_abs_diff(model: torch.nn.Module, path: Path, rows: np.ndarray) -> tuple[float, float]:
    """(max |onnx − torch|, allowed) on ``rows``."""
    x = torch.from_numpy(np.ascontiguousarray(rows))
    with torch.no_grad():
        want = model(x).float()
        got = OnnxModule(path)(x).float()
    diff = float((want - got).abs().max())
    return diff, TOLERANCE * max(1.0, float(want.abs().max()))


def check_export(model: torch.nn.Module, path: Path, rows: np.ndarray) -> float:
    """The fp32 export answers like torch on ``rows`` (else InvalidInput); the max abs diff."""
    diff, allowed = max_abs_diff(model, path, rows)
    if not diff <= allowed:
        raise InvalidInput(
            f"the ONNX export differs from the torch model by {diff:.3g} on sample rows "
            f"(allowed {allowed:.3g}); it was not registered"
        )
    return diff


def log_fn(path: Path) -> Any:
    """A ``registration.LogFn`` logging ``path`` in MLflow's onnx flavor, with its signature
    (MLflow infers none for onnx) and the example, weights inside ``model.onnx``."""

    def log(example: np.ndarray, extra_files: list[str]) -> tuple[Any, str, list[str]]:
        import mlflow.onnx
        import onnx
        import onnxruntime
        from mlflow.models import infer_signature

        outputs = OnnxModule(path)(torch.from_numpy(example)).numpy()
        info = mlflow.onnx.log_model(
            onnx.load(str(path)),
            name="model",
            input_example=example,
            signature=infer_signature(example, outputs),
            pip_requirements=[
                f"onnx=={onnx.__version__}",
                f"onnxruntime=={onnxruntime.__version__}",
            ],
            save_as_external_data=False,
            onnx_execution_providers=["CPUExecutionProvider"],
            extra_files=extra_files or None,  # the parent's declared encoding step
        )
        return info, "onnx", []

    return log
