"""scikit-learn estimators and pipelines as versions: converted to ONNX (skl2onnx) and served
by onnxruntime through the ``onnx`` format, or, where conversion fails or changes the answers,
served by MLflow's sklearn flavor (the ``sklearn`` format) with the reason said and recorded.

The converted graph is checked against the estimator's own outputs on the example and the
sample before anything is written: float32 inputs first (what a torch version takes), double
inputs where float32 changes the answer (tree thresholds compared in float32), the estimator
itself where neither holds. Every version's folder is also MLflow's sklearn flavor, so
``mlflow.pyfunc.load_model`` loads it whichever way it is served.
"""

from __future__ import annotations

import json
import logging
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
)

log = logging.getLogger(__name__)

# Fewer check rows than this: the note asks for a sample (a tree's float32 thresholds change
# the answer only for rows near them, which two example rows rarely are).
FEW_ROWS = 100
INPUT_DTYPES = (np.float32, np.float64)  # tried in this order


def prepare_estimator(
    model: Any,
    example: Any,
    *,
    sample: Any = None,
    task: str | None = None,
    classes: list | None = None,
) -> Prepared:
    from sklearn.base import is_classifier, is_regressor

    _check_fitted(model)
    classifier = is_classifier(model)
    if not classifier and not is_regressor(model):
        raise InvalidInput(
            f"a {type(model).__name__} is neither a classifier nor a regressor: "
            "register a model that predicts (a Pipeline ending in one)"
        )
    wanted = "classification" if classifier else "regression"
    if task is not None and task != wanted:
        raise InvalidInput(f"the {type(model).__name__} is a {wanted} model, not {task}")
    labels = _classes(model, classes) if classifier else None
    table = _table_rows(model, example, sample)
    if table is not None:  # string columns: an encoding step, then the pipeline on numbers
        served, rows, check, own, encoder = table
    else:
        served, encoder = model, None
        rows = feature_rows(example, "the example")[:EXAMPLE_ROWS]
        check = check_rows(rows, sample, feature_rows)
        own = estimator_outputs(model, check)  # also fails here, in one line, if it cannot

    onx, dtype, conversion, notes = convert_checked(served, check, own, classifier)
    if classifier:  # what %evaluate reads: no softmax over these
        conversion["outputs"] = "probabilities"
    if encoder is not None:
        encoded = ", ".join(
            f"{c.name} ({len(c.categories)} categories)" for c in encoder.columns if c.categories
        )
        notes.insert(0, f"one-hot encoded before the model, with its own categories: {encoded}")
    tags = {TAG_CONVERSION: json.dumps(conversion)}
    inputs: np.ndarray = np.ascontiguousarray(rows, dtype=dtype)
    outputs = own.shape[1]
    return Prepared(
        inputs=inputs,
        log_fn=_log_fn(served, onx, outputs),
        task=wanted,
        classes=labels,
        tags=tags,
        notes=notes,
        encoder=encoder,
    )


def _table_rows(model: Any, example: Any, sample: Any) -> tuple | None:
    """For a DataFrame example with string columns: (the numeric pipeline, encoded example
    rows, encoded check rows, the original pipeline's outputs on the check rows, the encoder);
    None for numeric rows."""
    import pandas as pd

    from kernel_magics.frameworks.sklearn_tables import split_table_pipeline, string_columns

    if not isinstance(example, pd.DataFrame) or not string_columns(example):
        return None
    if sample is not None and not isinstance(sample, pd.DataFrame):
        raise InvalidInput("the example is a DataFrame: give the sample as one too")
    frame = example[:EXAMPLE_ROWS]
    checked = frame if sample is None else pd.concat([frame, sample])
    table = split_table_pipeline(model, checked)  # first: says which models take strings
    own = estimator_outputs(model, checked)  # the pipeline on the DataFrame, as it was fitted
    rows = table.encoder.encode(frame).astype(np.float64)
    check = table.encoder.encode(checked).astype(np.float64)
    return table.numeric, rows, check, own, table.encoder


def estimator_outputs(model: Any, rows: Any) -> np.ndarray:
    """What the served version answers, computed by the estimator: class probabilities of a
    classifier (rows, classes), a regressor's predictions as (rows, targets)."""
    from sklearn.base import is_classifier

    try:
        out = model.predict_proba(rows) if is_classifier(model) else model.predict(rows)
    except Exception as err:
        raise failed_on_example(model, err) from err
    out = np.asarray(out, dtype=np.float64)
    return out.reshape(len(rows), -1)


def feature_rows(value: Any, what: str) -> np.ndarray:
    """Numeric rows as float64 (an estimator's own dtype), 2-D."""
    import pandas as pd

    from kernel_magics.training.inputs import as_array, frame_features

    if isinstance(value, pd.DataFrame | pd.Series):
        frame_features(value, what)  # one line naming the non-numeric columns, if any
        value = value.to_numpy(dtype=np.float64, na_value=np.nan)
    array = as_array(value, what)
    if array.dtype.kind not in "biuf":
        raise InvalidInput(f"{what} has non-numeric values (dtype {array.dtype})")
    array = array.astype(np.float64).reshape(1, -1) if array.ndim == 1 else array
    if array.ndim != 2 or len(array) == 0:
        raise InvalidInput(f"{what} must be rows of features (rows, columns), got {array.shape}")
    return np.ascontiguousarray(array, dtype=np.float64)


def convert_checked(
    model: Any, rows: np.ndarray, own: np.ndarray, classifier: bool
) -> tuple[Any, type, dict, list[str]]:
    """(ONNX graph or None, input dtype, the conversion record, notes). The first input dtype
    whose graph answers like the estimator on ``rows`` wins; None: serve the estimator."""
    tolerance = allowed_difference(own)  # and a classifier's graph must pick the same class
    tried = []
    for dtype in INPUT_DTYPES:
        name = np.dtype(dtype).name
        try:
            onx = to_onnx_graph(model, rows, dtype, classifier)
            converted = run_graph(onx, rows.astype(dtype)).reshape(own.shape)
        except Exception as err:  # skl2onnx raises many types for what it cannot convert
            tried.append(f"{name}: {type(err).__name__}: {first_line(err, limit=160)}")
            break  # the other dtype fails the same way
        diff = float(np.abs(converted - own).max())
        same_class = not classifier or bool((converted.argmax(1) == own.argmax(1)).all())
        if diff <= tolerance and same_class:
            record = {
                "converter": "skl2onnx",
                "input_dtype": name,
                "max_abs_diff": diff,
                "tolerance": tolerance,
                "rows_checked": len(rows),
            }
            note = (
                f"converted to ONNX with {name} inputs: outputs within {tolerance:.1e} of the "
                f"estimator's on {len(rows)} rows (max |diff| {diff:.1e})"
            )
            if len(rows) < FEW_ROWS:
                note += "; pass more rows to check on as sample= (--sample X[:500])"
            return onx, dtype, record, [*(_tried_note(t) for t in tried), note]
        changed = "" if same_class else ", a different class for some rows"
        tried.append(f"{name} inputs change the outputs by {diff:.1e} > {tolerance:.1e}{changed}")
    reason = "; ".join(tried)
    record = {"converter": None, "served_by": "sklearn", "reason": reason}
    note = f"not converted to ONNX ({reason}); served by the estimator itself (sklearn flavor)"
    log.warning(note)
    return None, np.float64, record, [note]


def _tried_note(text: str) -> str:
    return f"not served with {text}"


def to_onnx_graph(model: Any, rows: np.ndarray, dtype: type, classifier: bool) -> Any:
    """The estimator as an ONNX graph with one input and one output: the probabilities of a
    classifier (its label output dropped), a regressor's predictions."""
    from skl2onnx import to_onnx
    from skl2onnx.helpers.onnx_helper import select_model_inputs_outputs

    options = {"zipmap": False} if classifier else None
    onx = to_onnx(model, rows[:1].astype(dtype), options=options)
    names = [o.name for o in onx.graph.output]
    keep = "probabilities" if classifier and "probabilities" in names else names[-1]
    onx = select_model_inputs_outputs(onx, outputs=[keep])
    _drop_unused_initializers(onx)
    return onx


def _drop_unused_initializers(onx: Any) -> None:
    """Dropping the label output leaves its constants behind; onnxruntime warns at every load
    of a graph that holds unused ones."""
    used = {name for node in onx.graph.node for name in node.input}
    unused = [init for init in onx.graph.initializer if init.name not in used]
    for init in unused:
        onx.graph.initializer.remove(init)


def run_graph(onx: Any, rows: np.ndarray) -> np.ndarray:
    from kernel_magics.formats.onnx import session

    sess = session(onx.SerializeToString())
    name = sess.get_inputs()[0].name  # type: ignore[attr-defined]
    return np.asarray(sess.run(None, {name: rows})[0], dtype=np.float64)  # type: ignore[attr-defined]


def _check_fitted(model: Any) -> None:
    from sklearn.exceptions import NotFittedError
    from sklearn.utils.validation import check_is_fitted

    try:
        check_is_fitted(model)
    except NotFittedError:
        raise InvalidInput(
            f"the {type(model).__name__} is not fitted: call .fit(X, y) first, or %train it"
        ) from None
    except TypeError as err:
        raise InvalidInput(f"not a scikit-learn model: {first_line(err)}") from None


def _classes(model: Any, classes: list | None) -> list:
    from kernel_magics.training.inputs import plain

    own = [plain(c) for c in model.classes_]
    if classes is None:
        return own
    if len(classes) != len(own):
        raise InvalidInput(
            f"classes names {len(classes)} labels; the {type(model).__name__} has {len(own)}"
        )
    return list(classes)


def _log_fn(model: Any, onx: Any, outputs: int) -> LogFn:
    def log_version(example: np.ndarray, extra_files: list[str]) -> tuple[Any, str, list[str]]:
        from mlflow.models import Model, ModelSignature
        from mlflow.types import Schema, TensorSpec

        out_dtype = np.dtype(np.float32 if onx is not None else np.float64)
        signature = ModelSignature(
            Schema([TensorSpec(example.dtype, (-1, example.shape[1]))]),
            Schema([TensorSpec(out_dtype, (-1, outputs))]),
        )
        info = Model.log(
            None,
            flavor=_SklearnAndOnnx,
            name="model",
            sk_model=model,
            onnx_model=onx,
            signature=signature,
            input_example=example,
            pip_requirements=_requirements(onx is not None),
            extra_files=extra_files or None,  # the reference profile: in the folder's hash
        )
        return info, ("onnx" if onx is not None else "sklearn"), []

    return log_version


class _SklearnAndOnnx:
    """The flavor ``Model.log`` saves with: MLflow's sklearn folder (the estimator, pyfunc
    loads it) and, when converted, the ONNX graph beside it under the onnx flavor, which the
    inference process serves."""

    @staticmethod
    def save_model(
        path: str,
        mlflow_model: Any,
        sk_model: Any,
        onnx_model: Any,
        extra_files: list[str],
        **kwargs: Any,
    ) -> None:
        import shutil

        import mlflow.sklearn

        # cloudpickle, not MLflow's skops default: skops refuses fitted optimizers (MLP's Adam)
        # and the inference process unpickles like the torch pickle format.
        quiet = logging.getLogger("mlflow.sklearn")  # its caution about pickles, every save
        level = quiet.level
        quiet.setLevel(logging.ERROR)
        try:
            mlflow.sklearn.save_model(
                sk_model,
                path,
                mlflow_model=mlflow_model,
                serialization_format=mlflow.sklearn.SERIALIZATION_FORMAT_CLOUDPICKLE,
                **kwargs,
            )
        finally:
            quiet.setLevel(level)
        if extra_files:  # where MLflow's pytorch flavor puts them (the encoding step's file)
            (Path(path) / "extra_files").mkdir()
            for file in extra_files:
                shutil.copy(file, Path(path) / "extra_files" / Path(file).name)
        if onnx_model is None:
            return
        import onnx

        from kernel_magics.formats.onnx import ONNX_FILE

        (Path(path) / ONNX_FILE).write_bytes(onnx_model.SerializeToString())
        mlflow_model.add_flavor(
            "onnx",
            onnx_version=onnx.__version__,
            data=ONNX_FILE,
            providers=["CPUExecutionProvider"],
            code=None,
        )
        mlflow_model.save(str(Path(path) / "MLmodel"))


def _requirements(with_onnx: bool) -> list[str]:
    # Explicit requirements: letting MLflow infer them costs seconds per version.
    from importlib.metadata import version

    names = ["scikit-learn", "cloudpickle"] + (["onnxruntime"] if with_onnx else [])
    return [f"{name}=={version(name)}" for name in names]
