"""Decoding a ``:predict`` or ``/invocations`` request body for a model, once for both serving
targets: the built-in worker (``app.py``) and the Ray replicas (``serving/ray_app.py``) call
these and differ only in how they queue the array and send the answer.

Every refusal is an ``InvalidInput`` carrying its status: 415 for a content type we do not
read, 413 for more rows than ``max_rows`` (``inputs.check_row_count``), 400 for the rest.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from kernel_magics.errors import InvalidInput
from kernel_magics.serving.request import invocations
from kernel_magics.serving.request.bodies import describe_error
from kernel_magics.serving.request.codecs import (
    NPY,
    UnsupportedMediaType,
    json_rows,
    media_type,
    npy_decode,
    wants_npy,
)
from kernel_magics.serving.request.inputs import check_row_count


@dataclass(frozen=True)
class PredictRequest:
    """A checked ``:predict`` request: the rows as the model takes them and how to answer."""

    array: np.ndarray
    npy_out: bool  # answer application/x-npy (else JSON)
    classes: tuple | None  # answer these labels instead of the outputs (``?labels=true``)
    rows: np.ndarray  # the rows as the client sent them (before a version's encoding step)


def decode_predict(
    model: Any, body: bytes, content_type: bytes, accept: bytes, labels: bool, max_rows: int
) -> PredictRequest:
    """``body`` (JSON rows or ``.npy``) checked against ``model``'s input signature."""
    ctype = media_type(content_type)
    if ctype == NPY:
        array, npy_out = npy_decode(body), True
    elif ctype == b"application/json" or not ctype:
        array, npy_out = json_rows(body), wants_npy(accept)
    else:
        raise UnsupportedMediaType(
            f"unsupported Content-Type {ctype.decode('latin-1')[:100]!r}: "
            "use application/json or application/x-npy"
        )
    rows = array
    array = model.check(array, max_rows)
    classes = model.check_labels() if labels else None
    if classes is not None and npy_out:
        raise InvalidInput("labels are answered as JSON: drop 'Accept: application/x-npy'")
    return PredictRequest(array, npy_out, classes, rows if model.encoder is not None else array)


def decode_invocations(
    model: Any, body: bytes, content_type: bytes | None, max_rows: int
) -> invocations.Parsed:
    """An MLflow scoring request (``/invocations``), parsed as ``mlflow models serve`` does."""
    try:
        parsed = invocations.parse(body, content_type, model)
    except InvalidInput:
        raise
    except Exception as err:  # pandas can fail in many ways on odd input
        raise InvalidInput(f"Invalid input: {describe_error(err, 450)}") from err
    check_row_count(parsed.array.shape[0], max_rows)
    return parsed
