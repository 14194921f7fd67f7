"""Models of other frameworks entering the lifecycle: scikit-learn estimators and pipelines
(``sklearn_models.py``, ``sklearn_tables.py`` for string columns, ``sklearn_training.py``),
Keras 3 models (``keras_models.py``, ``keras_training.py``), ONNX models and model files given
by path (``files.py``: ``.onnx``, ``.joblib``, ``.pkl``).

``registration.register_version`` asks ``prepare`` first: a torch module gets ``None`` and
takes the torch path; anything this package knows becomes a ``Prepared`` version (its input
rows, how to log it, its task, classes and tags) registered through the same run, hash and
version creation as a torch model. Nothing here imports scikit-learn, skl2onnx or onnx before
such a model arrives.
"""

from __future__ import annotations

import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from kernel_magics.errors import InvalidInput, first_line

# The version tag recording how a model of another framework is served: the converter, the
# input dtype, the largest difference found against the model's own answers and the tolerance
# it was held to, or why it was not converted (JSON).
TAG_CONVERSION = "km.conversion"

# ``log(example, extra_files) -> (model_info, km.format, notes)``, as registration.LogFn.
LogFn = Callable[[Any, list[str]], tuple[Any, str, list[str]]]

# A converted or exported model's outputs may differ from the model's own answers by at most
# this much, relative to the outputs' scale: ``allowed_difference``.
TOLERANCE = 1e-5
EXAMPLE_ROWS = 5  # rows kept as the input example: enough for the signature, small on disk


@dataclass
class Prepared:
    """A model of another framework, checked and ready to log (nothing written yet)."""

    inputs: np.ndarray  # the input example, in the dtype the served version takes
    log_fn: LogFn
    task: str | None
    classes: list | None
    tags: dict[str, str] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)
    encoder: Any = None  # a declared encoding step (preprocess.TableEncoder) before the model


def prepare(
    model: Any,
    example: Any,
    *,
    sample: Any = None,
    task: str | None = None,
    classes: list | None = None,
) -> Prepared | None:
    """``model`` as a version of another framework; None for a torch module (the torch path).
    A path (str or Path) is a model file; a fitted scikit-learn estimator converts to ONNX.
    Bad input raises ``InvalidInput`` before anything is written."""
    if isinstance(model, str | Path):
        from kernel_magics.frameworks.files import prepare_file

        return prepare_file(Path(model), example, sample=sample, task=task, classes=classes)
    from kernel_magics.frameworks.keras_models import is_keras

    if is_keras(model):  # before the torch path: under the torch backend it is a torch module
        from kernel_magics.frameworks.keras_models import prepare_keras

        return prepare_keras(model, example, sample=sample, task=task, classes=classes)
    if is_sklearn(model):
        from kernel_magics.frameworks.sklearn_models import prepare_estimator

        return prepare_estimator(model, example, sample=sample, task=task, classes=classes)
    if _is_onnx_proto(model):
        from kernel_magics.frameworks.files import prepare_onnx

        return prepare_onnx(model, example, task=task, classes=classes)
    return None


# -- what every framework's prepare checks the same way --------------------------------------
def require_example(example: Any) -> None:
    """A model that cannot say its input shape needs example rows."""
    if example is None:
        raise InvalidInput("give an example: a few input rows of the model (--example X[:2])")


def check_rows(
    rows: np.ndarray, sample: Any, rows_of: Callable[[Any, str], np.ndarray]
) -> np.ndarray:
    """The rows a converted model's answers are checked on: the example's, then the sample's
    (read as the framework reads rows)."""
    return rows if sample is None else np.concatenate([rows, rows_of(sample, "the sample")])


def allowed_difference(own: np.ndarray) -> float:
    """The largest difference from the model's own answers ``own`` a served version may have:
    ``TOLERANCE`` × max(1, largest |output|)."""
    return TOLERANCE * max(1.0, float(np.abs(own).max()))


def failed_on_example(model: Any, err: Exception) -> InvalidInput:
    """The one line for a model that cannot answer its example (or sample) rows."""
    return InvalidInput(
        f"the {type(model).__name__} failed on the example: {type(err).__name__}: {first_line(err)}"
    )


def is_sklearn(obj: Any) -> bool:
    """A scikit-learn estimator (never imports scikit-learn: one not loaded made none)."""
    if "sklearn" not in sys.modules:
        return False
    from sklearn.base import BaseEstimator

    return isinstance(obj, BaseEstimator)


def _is_onnx_proto(obj: Any) -> bool:
    if "onnx" not in sys.modules:
        return False
    import onnx

    return isinstance(obj, onnx.ModelProto)
