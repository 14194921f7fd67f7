"""Keras 3 models as versions, served through the torch export path.

Under ``KERAS_BACKEND=torch`` a ``keras.Model`` is a ``torch.nn.Module`` whose layers run torch
operations, so ``torch.export`` traces it into the same ``pt2`` program a torch model becomes,
and the inference process serves it without Keras. The exported program's answers are checked
against ``model.predict`` on the example and the sample before anything is written, within
``frameworks.TOLERANCE`` (stated at registration, recorded as ``km.conversion``). The version's
folder is also MLflow's keras flavor (``data/model.keras``), so ``mlflow.pyfunc.load_model`` and
``mlflow models serve`` load the model itself; the ``pytorch`` flavor beside it names the
exported program the worker loads.

Keras picks its backend once, when it is first imported: under another backend the model is
not a torch module and the error says to set ``KERAS_BACKEND=torch`` before importing keras.
"""

from __future__ import annotations

import json
import shutil
import sys
import tempfile
from pathlib import Path
from typing import Any

import numpy as np

from kernel_magics.errors import InvalidInput, first_line
from kernel_magics.frameworks import (
    EXAMPLE_ROWS,
    TAG_CONVERSION,
    LogFn,
    Prepared,
    allowed_difference,
    check_rows,
    failed_on_example,
    require_example,
)

PT2_FILE = "data/model.pt2"  # where the pt2 format reads the program (formats/pt2.py)


def is_keras(obj: Any) -> bool:
    """A Keras 3 model (never imports keras: one not loaded made none)."""
    if "keras" not in sys.modules:
        return False
    import keras

    return isinstance(obj, keras.Model)


def check_backend() -> None:
    """Only the torch backend makes a Keras model a torch module."""
    import keras

    backend = keras.backend.backend()
    if backend != "torch":
        raise InvalidInput(
            f"Keras runs on the {backend} backend: set KERAS_BACKEND=torch before importing "
            "keras (restart the kernel), then build the model again"
        )


def prepare_keras(
    model: Any,
    example: Any,
    *,
    sample: Any = None,
    task: str | None = None,
    classes: list | None = None,
) -> Prepared:
    check_backend()
    require_example(example)
    rows = _rows(example, "the example")[:EXAMPLE_ROWS]
    if len(rows) == 1:  # torch.export would freeze a batch of 1 into the graph
        rows = rows.repeat(2, axis=0)
    check = check_rows(rows, sample, _rows)
    own = _predict(model, check)
    program, diff = export_checked(model, rows, check, own)
    tolerance = allowed_difference(own)
    if not diff <= tolerance:
        raise InvalidInput(
            f"the exported graph answers differently from model.predict (max |diff| {diff:.1e} "
            f"> {tolerance:.1e}): the model is not served"
        )
    record = {
        "converter": "torch.export",
        "input_dtype": rows.dtype.name,
        "max_abs_diff": diff,
        "tolerance": tolerance,
        "rows_checked": len(check),
    } | ({"outputs": "probabilities"} if answers_probabilities(model) else {})
    note = (
        f"exported with torch.export: outputs within {tolerance:.1e} of model.predict's on "
        f"{len(check)} rows (max |diff| {diff:.1e})"
    )
    if classes is not None:
        if own.ndim != 2 or own.shape[1] not in (1, len(classes)):
            raise InvalidInput(f"the model answers shape {own.shape}, not one score per class")
        task = task or "classification"
    return Prepared(
        inputs=rows,
        log_fn=_log_fn(model, program, own),
        task=task,
        classes=classes,
        tags={TAG_CONVERSION: json.dumps(record)},
        notes=[note],
    )


def forward_module(model: Any) -> Any:
    """A torch module of one tensor in, one tensor out around the Keras model: ``torch.export``
    takes its ``forward(x)`` (Keras's own ``forward(*args, **kwargs)`` it cannot trace with a
    dynamic batch)."""
    import torch

    class KerasForward(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.model = model

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.model(x, training=False)

    return KerasForward()


def export_checked(
    model: Any, rows: np.ndarray, check: np.ndarray, own: np.ndarray
) -> tuple[Any, float]:
    """The model as a ``torch.export`` program with a dynamic batch, and the largest
    difference between its answers on ``check`` and ``model.predict``'s."""
    import torch

    x = torch.from_numpy(rows)
    batch = torch.export.Dim("batch", min=1)
    try:
        with torch.no_grad():
            program = torch.export.export(forward_module(model), (x,), dynamic_shapes=({0: batch},))
            out = program.module()(torch.from_numpy(check))
    except Exception as err:  # torch.export raises many types for what it cannot trace
        raise InvalidInput(
            f"torch.export could not trace the Keras model: {type(err).__name__}: "
            f"{first_line(err, limit=200)}"
        ) from err
    if not isinstance(out, torch.Tensor):
        raise InvalidInput(f"the Keras model returned a {type(out).__name__}; one tensor is served")
    exported = out.detach().numpy().astype(np.float64).reshape(own.shape)
    return program, float(np.abs(exported - own).max())


def answers_probabilities(model: Any) -> bool:
    """The last layer ends in a sigmoid or softmax: %evaluate takes its outputs as they are."""
    layers = getattr(model, "layers", None) or []
    activation = getattr(layers[-1], "activation", None) if layers else None
    return getattr(activation, "__name__", "") in ("sigmoid", "softmax")


def _rows(value: Any, what: str) -> np.ndarray:
    from kernel_magics.training.inputs import input_rows

    # Keras computes in its float type: the served version takes that dtype
    return np.ascontiguousarray(input_rows(value, what), dtype=np.float32)


def _predict(model: Any, rows: np.ndarray) -> np.ndarray:
    try:
        out = model.predict(rows, verbose=0)
    except Exception as err:
        raise failed_on_example(model, err) from err
    if not isinstance(out, np.ndarray):
        raise InvalidInput(f"the Keras model answers a {type(out).__name__}; one array is served")
    return out.astype(np.float64)


def _log_fn(model: Any, program: Any, own: np.ndarray) -> LogFn:
    def log_version(example: np.ndarray, extra_files: list[str]) -> tuple[Any, str, list[str]]:
        from mlflow.models import Model, ModelSignature
        from mlflow.types import Schema, TensorSpec

        signature = ModelSignature(
            Schema([TensorSpec(example.dtype, (-1, *example.shape[1:]))]),
            Schema([TensorSpec(np.dtype(np.float32), (-1, *own.shape[1:]))]),
        )
        info = Model.log(
            None,
            flavor=_KerasAndTorch,
            name="model",
            keras_model=model,
            program=program,
            signature=signature,
            input_example=example,
            pip_requirements=_requirements(),
        )
        return info, "pt2", []

    return log_version


class _KerasAndTorch:
    """The flavor ``Model.log`` saves with: MLflow's keras folder (the model itself, pyfunc
    loads it under ``KERAS_BACKEND=torch``) and the exported program beside it under the
    pytorch flavor, which the inference process serves."""

    @staticmethod
    def save_model(
        path: str, mlflow_model: Any, keras_model: Any, program: Any, **kwargs: Any
    ) -> None:
        import mlflow.keras
        import torch

        Path(path).mkdir(parents=True, exist_ok=True)  # the keras flavor writes into it first
        mlflow.keras.save_model(keras_model, path, mlflow_model=mlflow_model, **kwargs)
        target = Path(path) / PT2_FILE
        with tempfile.TemporaryDirectory() as scratch:  # written whole, then moved in
            written = Path(scratch) / "model.pt2"
            torch.export.save(program, str(written))
            shutil.move(str(written), target)
        mlflow_model.add_flavor(
            "pytorch",
            model_data="data",
            pytorch_version=str(torch.__version__),  # a TorchVersion YAML cannot write
            code=None,
        )
        mlflow_model.save(str(Path(path) / "MLmodel"))


def _requirements() -> list[str]:
    # Explicit requirements: letting MLflow infer them costs seconds per version.
    from importlib.metadata import version

    import torch

    return [f"keras=={version('keras')}", f"torch=={torch.__version__.split('+')[0]}"]
