"""Post-training int8 quantization.

Measured here (digits MLP, one thread): onnxruntime's int8 is the fastest runtime for both
batch 1 and batch 64 (≈2× fp32 ONNX at 64 rows, ≈4× the pt2 module), where torch.ao's dynamic
int8 gains less and cannot be ``torch.export``ed (so no pt2, no ONNX). So a quantized version is
an ONNX int8 graph served by onnxruntime: weights int8 and activations quantized per batch
(``dynamic``), or with activation ranges calibrated on sample rows (``static``, QDQ format).
A version whose model torch.export cannot trace (MLflow's pickle format) gets torch.ao's
dynamic int8 instead, saved in the pickle format the worker also loads.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import torch

from kernel_magics.errors import InvalidInput

MODES = ("dynamic", "static")
# Operators onnxruntime's quantizer turns into int8 ones; none of them: nothing to quantize.
QUANTIZABLE = {"MatMul", "Gemm", "Conv", "ConvTranspose", "Gather", "Attention", "LSTM"}
CALIBRATION_BATCH = 32


def onnx_int8(src: Path, dst: Path, mode: str, calibration: np.ndarray | None = None) -> None:
    """Quantize the fp32 ONNX file ``src`` into ``dst``."""
    from onnxruntime.quantization import (
        CalibrationDataReader,
        QuantFormat,
        QuantType,
        quantize_dynamic,
        quantize_static,
    )

    _check_quantizable(src)
    with _quiet_quantizer():
        if mode == "dynamic":
            quantize_dynamic(str(src), str(dst), weight_type=QuantType.QInt8)
            return
        assert calibration is not None
        rows: np.ndarray = calibration
        name = _input_name(src)

        class Reader(CalibrationDataReader):
            def __init__(self) -> None:
                self.batches = iter(
                    {name: rows[i : i + CALIBRATION_BATCH]}
                    for i in range(0, len(rows), CALIBRATION_BATCH)
                )

            def get_next(self) -> dict | None:
                return next(self.batches, None)

        quantize_static(
            str(src),
            str(dst),
            Reader(),
            quant_format=QuantFormat.QDQ,
            activation_type=QuantType.QUInt8,
            weight_type=QuantType.QInt8,
        )


def calibration_rows(value: Any, dtype: np.dtype, row_shape: tuple[int, ...]) -> np.ndarray:
    """Calibration rows as the model takes them; one line when they do not fit."""
    from kernel_magics.training.inputs import model_input_array

    rows = np.ascontiguousarray(model_input_array(value, "the calibration data"))
    if rows.ndim == len(row_shape) and rows.shape == tuple(row_shape):
        rows = rows[None]
    if tuple(rows.shape[1:]) != tuple(row_shape) or len(rows) == 0:
        raise InvalidInput(
            f"the calibration data must be rows shaped {tuple(row_shape)}, got {rows.shape}"
        )
    if rows.dtype.kind != "f" or np.dtype(dtype).kind != "f":
        raise InvalidInput("static quantization calibrates floating-point inputs only")
    return rows.astype(dtype, copy=False)


def torch_dynamic(model: torch.nn.Module) -> torch.nn.Module:
    """torch.ao dynamic int8 of every ``nn.Linear`` (for eager models only)."""
    import warnings

    if not any(isinstance(m, torch.nn.Linear) for m in model.modules()):
        raise InvalidInput(
            f"{type(model).__name__} has no nn.Linear layer: nothing to quantize dynamically"
        )
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # torch.ao's deprecation notice
        return torch.ao.quantization.quantize_dynamic(model, {torch.nn.Linear}, dtype=torch.qint8)


def _check_quantizable(path: Path) -> None:
    import onnx

    ops = {node.op_type for node in onnx.load(str(path)).graph.node}
    if not ops & QUANTIZABLE:
        raise InvalidInput(
            "the model has no matrix multiplication, convolution or embedding to quantize "
            f"(its ONNX operators: {', '.join(sorted(ops)) or 'none'})"
        )


def _input_name(path: Path) -> str:
    import onnx

    graph = onnx.load(str(path)).graph
    initializers = {t.name for t in graph.initializer}
    return next(i.name for i in graph.input if i.name not in initializers)


@contextlib.contextmanager
def _quiet_quantizer() -> Iterator[None]:
    """The quantizer logs advice ("consider pre-processing") on the root logger."""
    import logging

    root = logging.getLogger()
    level = root.level
    root.setLevel(logging.ERROR)
    try:
        yield
    finally:
        root.setLevel(level)
