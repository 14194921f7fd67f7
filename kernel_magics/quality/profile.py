"""A version's reference profile: what its inputs and answers looked like when it was made.

Captured at ``%train`` (the training split) or ``%register --reference X`` and saved as
``extra_files/km_profile.json`` in the version's model folder, so it is inside the SHA-256 the
version records (a changed profile fails the same check a changed model does). Drift
(``quality/drift.py``) compares current rows against it.

Per feature:

- numbers: bin edges from the reference's deciles (current rows are binned on the same edges;
  the outer bins are open, and missing values have a bin of their own), summary statistics, and
  a uniform sample of at most ``SAMPLE_SIZE`` reference values for the KS test. A sample rather
  than a sample rebuilt from the histogram: values rebuilt from bins tie at the bin edges, so
  the KS statistic could only see shifts larger than a bin and its p-value would be wrong;
  1,000 values keep the file small (≈ 10 kB a feature) and resolve shifts of a few percent of
  a standard deviation.
- categories (string columns of a table): counts per category (the ``MAX_CATEGORIES`` most
  frequent, the rest counted together).

Rows of more than ``TENSOR_ROW_VALUES`` values, or of more than one axis (images, sequences),
are profiled by four statistics of each row (``row_mean``, ``row_std``, ``row_min``,
``row_max``), each a numeric feature of its own: per-value drift of a 784-pixel image says
nothing readable. The predictions are one more feature: the predicted class (classification)
or each output value.

numpy only (pandas lazily, for tables): the inference process imports this module.
"""

from __future__ import annotations

import json
import warnings
from collections import Counter
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from kernel_magics.errors import InvalidInput
from kernel_magics.preprocess import RowWording, rows_to_frame

PROFILE_FILE = "km_profile.json"
FOLDER_PATH = Path("extra_files") / PROFILE_FILE  # where MLflow's extra_files puts it
FORMAT_VERSION = 1
TENSOR_ROW_VALUES = 64  # wider rows are tensors: profiled by per-row statistics
BINS = 10  # decile bins of the reference
SAMPLE_SIZE = 1000  # reference values kept per numeric feature for the KS test
MAX_CATEGORIES = 50  # categories counted by name; the rest as OTHER
MAX_REFERENCE_ROWS = 100_000  # rows profiled (a seeded sample of a larger reference)
MAX_PREDICTION_COLUMNS = 16  # output values profiled one by one (regression, "other")
OTHER = "(other)"
MISSING = "(missing)"  # a missing value of a category column
ROW_STATISTICS = ("row_mean", "row_std", "row_min", "row_max")
QUANTILES = (0.05, 0.25, 0.5, 0.75, 0.95)
_SEED = 0

LAYOUTS = ("table", "vector", "tensor")


@dataclass(frozen=True)
class FeatureProfile:
    """One feature of the reference: numeric (edges, counts, sample) or categorical (counts)."""

    name: str
    kind: str  # "numeric" | "categorical"
    rows: int
    # numeric: the inner bin edges (bin i holds values in (edges[i-1], edges[i]]; the first and
    # last bins are open), counts per bin plus one last count of missing values
    edges: list[float] = field(default_factory=list)
    counts: list[int] = field(default_factory=list)
    sample: list[float] = field(default_factory=list)
    stats: dict[str, float] = field(default_factory=dict)  # mean, std, min, max, qNN, missing
    # categorical: count per category label
    categories: dict[str, int] = field(default_factory=dict)

    @property
    def numeric(self) -> bool:
        return self.kind == "numeric"


@dataclass(frozen=True)
class ReferenceProfile:
    """What a version's inputs and predictions looked like on its reference rows."""

    layout: str  # "table" (named columns), "vector" (≤ 64 numbers a row), "tensor"
    rows: int
    features: list[FeatureProfile]
    predictions: list[FeatureProfile]
    task: str | None = None
    classes: list[str] | None = None
    row_shape: list[int] = field(default_factory=list)
    columns: list[str] = field(default_factory=list)  # a table's columns, in order

    @classmethod
    def capture(
        cls,
        reference: Any,
        outputs: Any = None,
        *,
        task: str | None = None,
        classes: list | None = None,
    ) -> ReferenceProfile:
        """The profile of ``reference`` rows (array, tensor, DataFrame, list of rows) and the
        model's ``outputs`` on the same rows (None: no prediction profile). Callers pass at
        most ``MAX_REFERENCE_ROWS`` rows (``reference_sample``)."""
        layout, columns, row_shape = describe_rows(reference)
        labels = [str(c) for c in classes] if classes is not None else None
        features = [
            profile_feature(name, values)
            for name, values in feature_values(layout, columns, reference).items()
        ]
        if not features or features[0].rows == 0:
            raise InvalidInput("the reference has no rows")
        predictions = (
            []
            if outputs is None
            else [
                profile_feature(name, values)
                for name, values in prediction_values(task, labels, outputs).items()
            ]
        )
        return cls(
            layout=layout,
            rows=features[0].rows,
            features=features,
            predictions=predictions,
            task=task,
            classes=labels,
            row_shape=list(row_shape),
            columns=list(columns),
        )

    # -- the file in the model folder ----------------------------------------------------------
    def to_json(self) -> str:
        return json.dumps({"format": FORMAT_VERSION, **asdict(self)}, separators=(",", ":"))

    @classmethod
    def from_json(cls, text: str) -> ReferenceProfile:
        doc = json.loads(text)
        doc.pop("format", None)
        doc["features"] = [FeatureProfile(**f) for f in doc["features"]]
        doc["predictions"] = [FeatureProfile(**f) for f in doc["predictions"]]
        return cls(**doc)

    def write(self, folder: Path) -> Path:
        path = Path(folder) / PROFILE_FILE
        path.write_text(self.to_json())
        return path


def read_profile(model_folder: Path) -> ReferenceProfile | None:
    """The reference profile of a version's (verified) model folder, if it has one."""
    path = Path(model_folder) / FOLDER_PATH
    return ReferenceProfile.from_json(path.read_text()) if path.is_file() else None


def reference_sample(reference: Any, limit: int = MAX_REFERENCE_ROWS) -> Any:
    """At most ``limit`` rows of ``reference`` (a seeded uniform sample of a larger one)."""
    count = len(reference)
    if count <= limit:
        return reference
    picked = np.sort(np.random.default_rng(_SEED).choice(count, size=limit, replace=False))
    if hasattr(reference, "iloc"):
        return reference.iloc[picked]
    return np.asarray(reference)[picked]


# -- rows → features ----------------------------------------------------------------------------
def describe_rows(rows: Any) -> tuple[str, list[str], tuple[int, ...]]:
    """(layout, column names, shape of one row) of the reference."""
    if _is_frame(rows):
        return "table", [str(c) for c in rows.columns], (len(rows.columns),)
    array = _numbers(rows, "the reference")
    shape = tuple(array.shape[1:]) if array.ndim > 1 else (1,)
    if len(shape) > 1 or shape[0] > TENSOR_ROW_VALUES:
        return "tensor", list(ROW_STATISTICS), shape
    return "vector", [f"x{i}" for i in range(shape[0])], shape


def feature_values(layout: str, columns: list[str], rows: Any) -> dict[str, np.ndarray]:
    """Each feature's values over ``rows``: float arrays for numbers, str arrays for categories.
    Current rows come as the reference did (a DataFrame, arrays) or as the inference log keeps
    them (records ``{column: value}`` for tables, lists of numbers)."""
    if layout == "table":
        return _table_values(columns, rows)
    if layout == "tensor":
        return _row_statistics(rows)
    array = _numbers(rows, "the rows")
    if array.ndim == 1:
        array = array.reshape(-1, 1)
    flat = array.reshape(len(array), -1)
    if flat.shape[1] != len(columns):
        raise InvalidInput(
            f"rows have {flat.shape[1]} values; the reference rows had {len(columns)}"
        )
    return {name: flat[:, i].astype(np.float64) for i, name in enumerate(columns)}


TENSOR_CHUNK_ROWS = 4096  # logged tensor rows are lists: converted a chunk at a time


def _row_statistics(rows: Any) -> dict[str, np.ndarray]:
    """Mean, std, min and max of each row; a NaN row has none (it counts as missing)."""
    parts: dict[str, list[np.ndarray]] = {name: [] for name in ROW_STATISTICS}
    for start in range(0, len(rows), TENSOR_CHUNK_ROWS):
        chunk = _numbers(rows[start : start + TENSOR_CHUNK_ROWS], "the rows")
        flat = chunk.reshape(len(chunk), -1)
        # an all-NaN row has no statistics: it counts as missing, without numpy's warning
        with np.errstate(invalid="ignore"), warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)
            parts["row_mean"].append(np.nanmean(flat, axis=1))
            parts["row_std"].append(np.nanstd(flat, axis=1))
            parts["row_min"].append(np.nanmin(flat, axis=1))
            parts["row_max"].append(np.nanmax(flat, axis=1))
    return {
        name: np.concatenate(chunks) if chunks else np.empty(0) for name, chunks in parts.items()
    }


def prediction_values(task: str | None, classes: list[str] | None, outputs: Any) -> dict:
    """The predictions as features: ``prediction`` (the class label, or the one output value) or
    ``prediction[i]`` (each of several output values)."""
    if task == "classification":
        return {"prediction": _labels(outputs, classes)}
    array = _numbers(outputs, "the predictions").astype(np.float64, copy=False)
    array = array.reshape(len(array), -1)
    if array.shape[1] == 1:
        return {"prediction": array[:, 0]}
    shown = min(array.shape[1], MAX_PREDICTION_COLUMNS)
    return {f"prediction[{i}]": array[:, i] for i in range(shown)}


def _labels(outputs: Any, classes: list[str] | None) -> np.ndarray:
    """Predicted class labels from scores (rows of class scores → argmax) or labels as given
    (the inference log keeps the answered label or the list of probabilities)."""
    if isinstance(outputs, list) and outputs and not isinstance(outputs[0], list | tuple):
        return np.asarray([str(v) for v in outputs], dtype=object)
    array = np.asarray(outputs)
    if array.dtype.kind in "OUS":
        return array.reshape(len(array)).astype(str).astype(object)
    if array.ndim >= 2 and array.shape[-1] > 1:  # scores on the last axis; (N, T, C): per position
        index = array.argmax(axis=-1).reshape(-1)
        names = classes if classes is not None else [str(i) for i in range(array.shape[-1])]
        return np.asarray(names, dtype=object)[index]
    flat = array.reshape(-1)
    if flat.dtype.kind == "f" and np.all(flat == np.round(flat)):
        flat = flat.astype(np.int64)
    return np.asarray([str(v) for v in flat.tolist()], dtype=object)


# the profile's words for rows that are no table of the reference's columns (``%drift``,
# ``%register --reference``); what a table row is, is ``preprocess.rows_to_frame``'s rule
_REFERENCE_ROWS = RowWording(
    shape="rows must be records with the columns {columns} or lists of {count} values in that "
    "order",
    missing="rows miss the reference column(s) {missing}",
    names=", ".join,
)


def _table_values(columns: list[str], rows: Any) -> dict[str, np.ndarray]:
    import pandas as pd

    frame = rows_to_frame(rows, columns, _REFERENCE_ROWS)
    out = {}
    for name in columns:
        series = frame[name]
        if _numeric_series(series):
            out[name] = pd.to_numeric(series, errors="coerce").to_numpy(np.float64, na_value=np.nan)
        else:
            out[name] = (
                series.astype(object)
                .where(series.notna(), None)
                .map(lambda v: None if v is None else str(v))
                .to_numpy(dtype=object)
            )
    return out


def _numeric_series(series: Any) -> bool:
    from pandas.api.types import is_bool_dtype, is_numeric_dtype

    return is_numeric_dtype(series.dtype) and not is_bool_dtype(series.dtype)


# -- one feature --------------------------------------------------------------------------------
def profile_feature(name: str, values: np.ndarray) -> FeatureProfile:
    if values.dtype == object:
        return _categorical(name, values)
    return _numeric(name, values)


def _numeric(name: str, values: np.ndarray) -> FeatureProfile:
    values = np.asarray(values, dtype=np.float64)
    present = values[np.isfinite(values)]
    missing = len(values) - len(present)
    stats = {"missing": _round(missing / len(values)) if len(values) else 0.0}
    if len(present) == 0:
        return FeatureProfile(name, "numeric", len(values), [], [missing], [], stats)
    quantiles = np.quantile(present, np.linspace(0, 1, BINS + 1)[1:-1])
    edges = np.unique(quantiles)
    counts = np.bincount(bin_index(edges, present), minlength=len(edges) + 1).tolist()
    stats.update(
        mean=float(present.mean()),
        std=float(present.std()),
        min=float(present.min()),
        max=float(present.max()),
        **{
            f"q{round(q * 100):02d}": float(v)
            for q, v in zip(QUANTILES, np.quantile(present, QUANTILES), strict=True)
        },
    )
    if len(present) > SAMPLE_SIZE:
        rng = np.random.default_rng(_SEED)
        sample = present[rng.choice(len(present), size=SAMPLE_SIZE, replace=False)]
    else:
        sample = present
    return FeatureProfile(
        name,
        "numeric",
        len(values),
        edges=[_round(e) for e in edges.tolist()],
        counts=[*counts, missing],
        sample=[_round(v) for v in np.sort(sample).tolist()],
        stats={k: _round(v) for k, v in stats.items()},
    )


def _categorical(name: str, values: np.ndarray) -> FeatureProfile:
    by_label = sorted(category_counts(values).items(), key=lambda item: (-item[1], item[0]))
    kept = dict(by_label[:MAX_CATEGORIES])
    rest = sum(count for _, count in by_label[MAX_CATEGORIES:])
    if rest:
        kept[OTHER] = kept.get(OTHER, 0) + rest
    return FeatureProfile(name, "categorical", len(values), categories=kept)


def category_counts(values: Any) -> dict[str, int]:
    """Rows per category label (a missing value is ``MISSING``): counted on the values first,
    labelled after, so 100,000 rows of a few categories cost a few str() calls."""
    counts: dict[str, int] = {}
    for value, count in Counter(values.tolist() if hasattr(values, "tolist") else values).items():
        label = MISSING if value is None else str(value)
        counts[label] = counts.get(label, 0) + count
    return counts


def bin_index(edges: np.ndarray, values: np.ndarray) -> np.ndarray:
    """The bin of each finite value on a profile's inner edges: bin i is (edges[i-1], edges[i]]."""
    return np.searchsorted(edges, values, side="left")


def _round(value: float) -> float:
    """7 significant digits (float32's precision): the JSON stays small."""
    return float(f"{value:.7g}")


# -- helpers ------------------------------------------------------------------------------------
def _is_frame(rows: Any) -> bool:
    return type(rows).__module__.startswith("pandas") and hasattr(rows, "columns")


def _numbers(rows: Any, what: str) -> np.ndarray:
    if type(rows).__module__.startswith("torch"):
        rows = rows.detach().cpu().numpy()
    if _is_frame(rows):
        rows = rows.to_numpy()
    try:
        array = np.asarray(rows, dtype=np.float64)
    except (TypeError, ValueError):
        raise InvalidInput(f"{what} must be numbers: rows of one shape") from None
    if array.ndim == 0:
        raise InvalidInput(f"{what} must be rows, got a single value")
    return array
