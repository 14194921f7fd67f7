"""What an explanation is about: the output explained per row (``target``) and the names of
the features. Plain numpy and the version's tags; no torch."""

from __future__ import annotations

import json
import numbers
from pathlib import Path
from typing import TYPE_CHECKING, Any

from kernel_magics.errors import InvalidInput

if TYPE_CHECKING:
    import numpy as np

    from kernel_magics.evaluation.loading import LoadedVersion

TASKS = ("classification", "regression")


def task_of(loaded: LoadedVersion, outputs: np.ndarray) -> str:
    """The version's ``km.task``; untagged versions (or "other") are classifiers when their
    ``km.classes`` name one class per output column, else regressors."""
    task = loaded.info.task
    if task in TASKS:
        return task
    classes = loaded.info.classes or []
    named = outputs.shape[1] > 1 and len(classes) == outputs.shape[1]
    return "classification" if named else "regression"


def output_labels(loaded: LoadedVersion, task: str, n_outputs: int) -> list[Any]:
    """A label per output column: the version's classes (``km.classes``) when they fit, else
    class indices; ``output K`` for regressors."""
    if task != "classification":
        return [f"output {k}" for k in range(n_outputs)]
    classes = loaded.info.classes or []
    return list(classes) if len(classes) == n_outputs else list(range(n_outputs))


def resolve_targets(
    target: Any, task: str, outputs: np.ndarray, labels: list[Any], ref: str
) -> list[int]:
    """The output index explained for every row.

    Default: each row's predicted class for a classifier (its single logit when it has one
    output), output 0 for a single-output regressor; a regressor with several outputs needs
    ``target``. ``target`` is a class label (its ``km.classes``; a string matches a label
    written the same way, as ``--target`` gives it) or else an output index."""
    n_rows, n_outputs = outputs.shape
    if target is None:
        if task == "classification" and n_outputs > 1:
            return [int(i) for i in outputs.argmax(axis=1)]
        if n_outputs > 1:
            raise InvalidInput(
                f"{ref} has {n_outputs} outputs: choose the one to explain with target=K "
                f"(--target K), K in 0..{n_outputs - 1}"
            )
        return [0] * n_rows
    return [_index(target, task, labels, n_outputs, ref)] * n_rows


def _index(target: Any, task: str, labels: list[Any], n_outputs: int, ref: str) -> int:
    if task == "classification":
        for i, label in enumerate(labels):  # labels first: classes [3, 5, 7] take target=5
            if label == target or (isinstance(target, str) and str(label) == target):
                return i
    index = _as_index(target)
    if index is None:
        known = f"its classes: {labels[:20]}" if task == "classification" else "its outputs"
        raise InvalidInput(
            f"{ref} has no class {target!r} ({known}; or give an output index 0..{n_outputs - 1})"
        )
    if not 0 <= index < n_outputs:
        raise InvalidInput(
            f"output index {index} is out of range: {ref} has {n_outputs} output"
            f"{'s' if n_outputs != 1 else ''} (0..{n_outputs - 1})"
        )
    return index


def _as_index(target: Any) -> int | None:
    if isinstance(target, numbers.Integral) and not isinstance(target, bool):
        return int(target)
    if isinstance(target, str) and target.strip().lstrip("-").isdigit():
        return int(target)
    return None


def feature_names(X: Any, rows: np.ndarray, loaded: LoadedVersion) -> list[str]:
    """Tabular rows: the encoded columns of a version with a one-hot step, the DataFrame's
    columns, else the version's column names (a column-based
    signature, or the columns of its input example), else ``f0..fN``. Image- and
    sequence-shaped rows have none (their attributions keep the rows' shape)."""
    if rows.ndim != 2:
        return []
    width = rows.shape[1]
    if loaded.encoder is not None:  # the graph's input: numeric columns, then color=red, …
        return loaded.encoder.feature_names()
    for names in (_frame_columns(X), _version_columns(loaded)):
        if names is not None and len(names) == width:
            return names
    return [f"f{i}" for i in range(width)]


def _frame_columns(X: Any) -> list[str] | None:
    columns = getattr(X, "columns", None)  # a pandas DataFrame
    return [str(c) for c in columns] if columns is not None else None


def _version_columns(loaded: LoadedVersion) -> list[str] | None:
    from kernel_magics.formats.model_files import read_signature

    try:
        columns = read_signature(loaded.folder, loaded.example).columns
    except Exception:  # an odd MLmodel file costs the names, not the explanation
        columns = None
    return columns or _example_columns(loaded.folder)


def _example_columns(folder: Path) -> list[str] | None:
    """MLflow writes a DataFrame example in its "split" orientation: {"columns": [...], ...}."""
    try:
        doc = json.loads((folder / "input_example.json").read_text())
    except (OSError, ValueError):
        return None
    columns = doc.get("columns") if isinstance(doc, dict) else None
    return [str(c) for c in columns] if isinstance(columns, list) else None
