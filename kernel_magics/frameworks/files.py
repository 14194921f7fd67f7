"""Model files given by path, and ONNX models: ``.onnx`` (an ``onnx.ModelProto`` too), served
as they are by onnxruntime; ``.joblib`` / ``.pkl`` (a pickled scikit-learn model), unpickled
here in the kernel, after a warning that unpickling runs the file's code, then registered like
the estimator itself (``sklearn_models``).
"""

from __future__ import annotations

import warnings
from pathlib import Path
from typing import Any

import numpy as np

from kernel_magics.errors import InvalidInput, first_line
from kernel_magics.frameworks import LogFn, Prepared, require_example

ONNX_SUFFIXES = (".onnx",)
PICKLE_SUFFIXES = (".joblib", ".pkl", ".pickle")
MODEL_FILE_SUFFIXES = ONNX_SUFFIXES + PICKLE_SUFFIXES  # a name ending so is a file, not code


class UnpicklingWarning(UserWarning):
    """Loading a pickle runs whatever code it holds."""


def prepare_file(
    path: Path,
    example: Any,
    *,
    sample: Any = None,
    task: str | None = None,
    classes: list | None = None,
) -> Prepared:
    suffix = path.suffix.lower()
    if suffix not in MODEL_FILE_SUFFIXES:
        known = ", ".join(MODEL_FILE_SUFFIXES)
        raise InvalidInput(f"{path}: a model file ends in {known}")
    if not path.is_file():
        raise InvalidInput(f"no model file {path}")
    if suffix in ONNX_SUFFIXES:
        return prepare_onnx(_read_onnx(path), example, task=task, classes=classes)
    model = unpickle(path)
    from kernel_magics.frameworks import is_sklearn

    if not is_sklearn(model):
        raise InvalidInput(f"{path} holds a {type(model).__name__}, not a scikit-learn model")
    require_example(example)
    from kernel_magics.frameworks.sklearn_models import prepare_estimator

    prepared = prepare_estimator(model, example, sample=sample, task=task, classes=classes)
    prepared.notes.insert(0, f"unpickled {path.name} in the kernel")
    return prepared


def unpickle(path: Path) -> Any:
    """The object in a joblib or pickle file, after the one-line warning."""
    import joblib

    warnings.warn(unpickling_message(path), UnpicklingWarning, stacklevel=4)
    try:
        return joblib.load(path)
    except Exception as err:  # a pickle fails in any way its code does
        raise InvalidInput(
            f"{path} could not be unpickled: {type(err).__name__}: {first_line(err)}"
        ) from None


def unpickling_message(path: Path | str) -> str:
    return f"unpickling {Path(path).name} runs the code it holds: load only files you trust"


def _read_onnx(path: Path) -> Any:
    import onnx

    try:
        proto = onnx.load(str(path))
        onnx.checker.check_model(proto)
    except Exception as err:
        raise InvalidInput(f"{path} is not an ONNX model: {first_line(err)}") from None
    return proto


def prepare_onnx(
    proto: Any, example: Any, *, task: str | None = None, classes: list | None = None
) -> Prepared:
    """An ONNX graph with one input and one output (what the ``onnx`` format serves), run on
    the example (rows of zeros when none is given and the input shape is fixed)."""
    from onnx.helper import tensor_dtype_to_np_dtype

    from kernel_magics.formats.onnx import session

    graph = proto.graph
    initializers = {init.name for init in graph.initializer}
    inputs = [i for i in graph.input if i.name not in initializers]
    if len(inputs) != 1 or len(graph.output) != 1:
        raise InvalidInput(
            f"the ONNX model has {len(inputs)} inputs and {len(graph.output)} outputs; "
            "one input tensor and one output tensor are served"
        )
    tensor = inputs[0].type.tensor_type
    dtype = np.dtype(tensor_dtype_to_np_dtype(tensor.elem_type))
    rows = _onnx_example(example, dtype, [d.dim_value or None for d in tensor.shape.dim])
    try:
        sess = session(proto.SerializeToString())
        out = np.asarray(sess.run(None, {inputs[0].name: rows})[0])  # type: ignore[attr-defined]
    except Exception as err:
        raise InvalidInput(f"the ONNX model failed on the example: {first_line(err)}") from None
    if classes is not None and task is None:
        task = "classification"
    if classes is not None and (out.ndim != 2 or out.shape[1] != len(classes)):
        raise InvalidInput(f"the model answers shape {out.shape}, not one score per class")
    notes = [] if example is not None else [f"example: {len(rows)} rows of zeros"]
    return Prepared(rows, _log_onnx(proto, out), task, classes, {}, notes)


def _onnx_example(example: Any, dtype: np.dtype, dims: list[int | None]) -> np.ndarray:
    if example is None:
        if any(d is None for d in dims[1:]):
            raise InvalidInput("the ONNX input has free dimensions: give an example (--example)")
        batch = dims[0] if dims and dims[0] else 2
        return np.zeros((batch, *[int(d or 0) for d in dims[1:]]), dtype=dtype)
    from kernel_magics.training.inputs import as_array

    rows = as_array(example, "the example")
    try:
        return np.ascontiguousarray(rows, dtype=dtype)[:5]
    except (TypeError, ValueError):
        raise InvalidInput(f"the example cannot be read as {dtype.name}") from None


def _log_onnx(proto: Any, output: np.ndarray) -> LogFn:
    def log_version(example: np.ndarray, extra_files: list[str]) -> tuple[Any, str, list[str]]:
        from importlib.metadata import version

        import mlflow.onnx
        from mlflow.models import ModelSignature
        from mlflow.types import Schema, TensorSpec

        signature = ModelSignature(
            Schema([TensorSpec(example.dtype, (-1, *example.shape[1:]))]),
            Schema([TensorSpec(output.dtype, (-1, *output.shape[1:]))]),
        )
        info = mlflow.onnx.log_model(
            proto,
            name="model",
            signature=signature,
            input_example=example,
            pip_requirements=[f"onnxruntime=={version('onnxruntime')}"],
            save_as_external_data=False,  # one file: what the loader reads and the hash covers
            extra_files=extra_files or None,
        )
        return info, "onnx", []

    return log_version
