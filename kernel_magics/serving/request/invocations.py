"""The MLflow scoring protocol (``/invocations``), answering what ``mlflow models serve`` answers.

Replicates, without importing mlflow, the conversions of ``mlflow.pyfunc.scoring_server``,
``mlflow.utils.proto_json_utils`` and ``mlflow.pytorch._PyTorchWrapper.predict`` for PyTorch
models with a single unnamed tensor signature (what kernel-magics logs), including the memory
layout the model sees: DataFrame inputs reach the model as ``DataFrame.to_numpy()`` (column-major),
``instances``/``inputs`` as ``np.array(rows, dtype)``; the forward is the same, so outputs match
to the bit. Column-based signatures (pickle models logged with a DataFrame example) follow
``to_numpy(float32)`` and answer records. A scikit-learn version (its folder's pyfunc is
``mlflow.sklearn``, whichever format serves it) answers as the estimator's ``predict`` does: a
classifier's label per row, a one-target regressor's values as one list. A Keras version's pyfunc
answers ``model.predict``, which the exported program matches. Errors are 4xx; MLflow's exact
wording is not copied. pandas is imported lazily: this route is not the hot path.
"""

from __future__ import annotations

import json
from typing import Any

import numpy as np
import orjson

from kernel_magics.errors import InvalidInput, clip
from kernel_magics.serving.request.codecs import UnsupportedMediaType

FORMATS = ("dataframe_split", "dataframe_records", "instances", "inputs")
_LLM_KEYS = ("messages", "prompt", "input")


class Parsed:
    """The array to forward as given, and how to shape the answer: as records, as a
    scikit-learn model's ``predict`` answers (``labels``: a classifier's class per row;
    ``flat``: a one-target regressor's values as one list)."""

    __slots__ = ("array", "records", "labels", "flat")

    def __init__(self, array: np.ndarray, records: bool):
        self.array = array
        self.records = records
        self.labels: tuple | None = None
        self.flat = False


SKLEARN_PYFUNC = "mlflow.sklearn"  # its predict: labels of a classifier, (rows,) of a regressor


def parse(body: bytes, content_type: bytes | None, model: Any) -> Parsed:
    parsed = _parse(body, content_type, model)
    if getattr(model, "pyfunc", None) == SKLEARN_PYFUNC:
        if model.task == "classification" and model.classes:
            parsed.labels = tuple(model.classes)
        elif (model.signature.output_shape or ())[1:] in ((), (1,)):
            parsed.flat = True
    return parsed


def _parse(body: bytes, content_type: bytes | None, model: Any) -> Parsed:
    mime, charset, unexpected = _content_type(content_type)
    if charset != "utf-8":
        raise UnsupportedMediaType("The scoring server only supports UTF-8")
    if unexpected:
        shown = clip(", ".join(unexpected))
        raise UnsupportedMediaType(f"Unrecognized content type parameters: {shown}")
    sig = model.signature
    if mime == "text/csv":
        return _csv(body, sig)
    if mime != "application/json":
        raise UnsupportedMediaType(
            "This predictor only supports the following content types: "
            f"['text/csv', 'application/json']. Got '{clip(mime)}'."
        )
    doc = _json(body)
    if any(k in doc for k in _LLM_KEYS):
        raise InvalidInput("this model does not take the unified LLM input format")
    keys = [k for k in doc if k in FORMATS]
    if len(keys) != 1:
        raise InvalidInput(
            "The input must be a JSON dictionary with exactly one of the input fields "
            f"{set(FORMATS)}. Received dictionary with input fields: {clip(list(doc))}"
        )
    key = keys[0]
    encoder = getattr(model, "encoder", None)
    if encoder is not None:  # table rows with string columns: the version's declared encoding
        rows = doc[key] if key in ("instances", "inputs") else _frame(key, doc[key])
        # in the graph's dtype (an encoder's float64 reaches a float32 graph converted)
        return Parsed(encoder.encode(rows).astype(sig.dtype, copy=False), records=False)
    if sig.columns is not None:
        return _columns(_frame(key, doc[key]), sig)
    if key in ("instances", "inputs"):
        return Parsed(_tensor_rows(doc[key], sig), records=False)
    return Parsed(_frame_tensor(_frame(key, doc[key]), sig), records=False)


def answer(outputs: np.ndarray, parsed: Parsed) -> bytes:
    """``{"predictions": ...}`` exactly as MLflow's json.dump writes it (NaN included)."""
    if parsed.labels is not None:
        scores = outputs.reshape(len(outputs), -1)
        labels = np.asarray(parsed.labels, dtype=object)[scores.argmax(axis=1)].tolist()
        return json.dumps({"predictions": labels}).encode()
    if parsed.flat:
        outputs = outputs.reshape(-1)
    if parsed.records:
        arr = outputs.reshape(len(outputs), -1) if outputs.ndim != 2 else outputs
        preds: Any = [
            {str(j): v for j, v in enumerate(row)} for row in arr.astype(np.float64).tolist()
        ]
    else:
        preds = outputs
    if isinstance(preds, np.ndarray) and preds.dtype.kind == "f":
        if np.isfinite(preds).all():
            return orjson.dumps(
                {"predictions": preds.astype(np.float64)}, option=orjson.OPT_SERIALIZE_NUMPY
            )
        preds = preds.tolist()
    elif isinstance(preds, np.ndarray):
        preds = preds.tolist()
    return json.dumps({"predictions": preds}).encode()  # NaN/Infinity as MLflow emits them


# -- pieces ---------------------------------------------------------------------------------
def _content_type(value: bytes | None) -> tuple[str, str, list[str]]:
    if not value:
        raise UnsupportedMediaType("missing Content-Type: use application/json or text/csv")
    parts = [p.strip() for p in value.decode("latin-1").split(";")]
    params = {k: v for k, _, v in (p.partition("=") for p in parts[1:])}
    charset = params.pop("charset", "utf-8").lower()
    return parts[0], charset, sorted(params)


def _json(body: bytes) -> dict:
    try:
        doc = orjson.loads(body)
    except orjson.JSONDecodeError:
        try:  # MLflow parses with json.loads, which also takes NaN and Infinity
            doc = json.loads(body)
        except (ValueError, UnicodeDecodeError) as err:
            raise InvalidInput(
                f"Ensure that input is a valid JSON formatted string: {err}"
            ) from None
    if not isinstance(doc, dict):
        kind = "a list" if isinstance(doc, list) else f"type {type(doc).__name__}"
        raise InvalidInput(f"The input must be a JSON dictionary; received {kind}")
    return doc


def _tensor_rows(rows: Any, sig: Any) -> np.ndarray:
    if not isinstance(rows, list) and not np.isscalar(rows):
        raise InvalidInput(
            "This model has an unnamed signature that expects a single n-dimensional array"
        )
    if isinstance(rows, list) and rows and all(isinstance(r, dict) for r in rows):
        raise InvalidInput("This model expects an array, not a list of named columns")
    try:
        with np.errstate(all="ignore"):
            array = np.array(rows, dtype=sig.dtype)
    except (ValueError, TypeError, OverflowError) as err:
        raise InvalidInput(f"Failed to convert input to {sig.dtype}: {err}") from None
    _enforce_shape(array, sig.shape)
    return array


def _enforce_shape(array: np.ndarray, shape: tuple[int, ...]) -> None:
    ok = array.ndim == len(shape) and all(
        w == -1 or w == g for w, g in zip(shape, array.shape, strict=True)
    )
    if not ok:
        raise InvalidInput(f"Shape of input {array.shape} does not match expected shape {shape}")


def _frame(key: str, value: Any) -> Any:
    import pandas as pd

    try:
        if key == "dataframe_split":
            if not isinstance(value, dict):
                raise InvalidInput("Dataframe split format must be a dictionary")
            extra = set(value) - {"columns", "data", "index"}
            if "data" not in value or extra:
                raise InvalidInput(
                    "Dataframe split format must have 'data' field and optionally 'columns' "
                    "and 'index' fields"
                )
            return pd.DataFrame(
                index=value.get("index"), columns=value.get("columns"), data=value["data"]
            )
        if key == "dataframe_records":
            if not isinstance(value, list):
                raise InvalidInput("Dataframe records format must be a list of records")
            return pd.DataFrame(data=value)
        if isinstance(value, dict):  # inputs/instances as {column: [values]}
            return pd.DataFrame(value)
        return pd.DataFrame(data=value)
    except InvalidInput:
        raise
    except Exception as err:
        raise InvalidInput(
            f"Provided {key} is not a valid dataframe representation: {err}"
        ) from None


def _frame_tensor(frame: Any, sig: Any) -> np.ndarray:
    """A DataFrame against an unnamed tensor signature, as MLflow's schema enforcement does."""
    for col in list(frame.columns):
        series = frame[col]
        if len(series) and isinstance(series.iloc[0], list):
            continue  # list-valued column: reshaped below
        try:
            frame[col] = series.astype(sig.dtype)
        except Exception as err:
            raise InvalidInput(
                f"Data is not compatible with model signature. Failed to convert column {col} "
                f"to type '{sig.dtype}': {err}"
            ) from None
    if frame.empty:
        raise InvalidInput("Input DataFrame is empty.")
    shape = sig.shape
    if len(frame.columns) == 1:
        series = frame[frame.columns[0]]
        first = series.iloc[0]
        if np.isscalar(first):
            if shape not in ((-1,), (-1, 1)):
                raise InvalidInput(
                    f"The input column holds scalars, which needs a (-1,) or (-1, 1) tensor "
                    f"shape; the signature is {shape}"
                )
            array = np.array(series, dtype=sig.dtype).reshape(shape)
        else:
            if shape[0] != -1 or -1 in shape[1:]:
                raise InvalidInput(f"Signature shape {shape} cannot take DataFrame input")
            if not (isinstance(first, list) and first and np.isscalar(first[0])):
                # MLflow reshapes flat lists only: an N-D row must come flattened
                raise InvalidInput(
                    "DataFrame values for a tensor signature must be scalars or flat lists of "
                    f"scalars (each row flattened to {shape[1:]})"
                )
            try:
                array = np.vstack(series.tolist()).reshape(shape).astype(sig.dtype)
            except (ValueError, TypeError) as err:
                raise InvalidInput(
                    f"The input column could not be converted to shape {shape}: {err}"
                ) from None
            if len(array) != len(series):
                raise InvalidInput(f"The input column could not be converted to shape {shape}")
        _enforce_shape(array, shape)
        return array
    if shape != (-1, len(frame.columns)):
        raise InvalidInput(
            f"The input DataFrame has {len(frame.columns)} columns; the model's input shape is "
            f"{shape}"
        )
    array = frame.to_numpy()
    if array.dtype != sig.dtype:
        raise InvalidInput(f"dtype of input {array.dtype} does not match expected {sig.dtype}")
    return array


def _columns(frame: Any, sig: Any) -> Parsed:
    """Column-based signature: pick the named columns, then ``to_numpy(float32)``."""
    missing = [c for c in sig.columns if c not in frame.columns]
    if missing:
        raise InvalidInput(f"Model is missing inputs {missing}")
    try:
        array = frame[sig.columns].to_numpy(dtype=np.float32)
    except (ValueError, TypeError) as err:
        raise InvalidInput(f"Failed to convert input columns to float32: {err}") from None
    if len(array) == 0:
        raise InvalidInput("Input DataFrame is empty.")
    return Parsed(array, records=True)


def _csv(body: bytes, sig: Any) -> Parsed:
    if sig.columns is None:
        # MLflow builds read_csv dtypes from the signature's pandas types, which a tensor
        # signature does not have: `mlflow models serve` answers 400 to every CSV body.
        raise InvalidInput(
            "Failed to parse input as a Pandas DataFrame: CSV input needs a column-based "
            "signature; this model has a tensor signature (send JSON)"
        )
    import io

    import pandas as pd

    try:
        frame = pd.read_csv(io.StringIO(body.decode("utf-8")))
    except Exception as err:
        raise InvalidInput(f"Failed to parse input as a Pandas DataFrame: {err}") from None
    return _columns(frame, sig)
