"""``%evaluate NAME[@V] --data X Y`` / ``api.evaluate``: a version against held-out data.

The version is loaded here (``loading``), its forward runs in batches, scikit-learn computes
the metrics (``metrics``), and the result is logged to that version twice over: an MLflow run
in the experiment ``kernel-magics-evaluations`` (tags ``km.model``, ``km.version``; every metric,
the confusion matrix or residual summary as ``evaluation.json``), and the headline metrics as
version tags ``km.eval.<metric>`` (with ``km.eval.run`` and ``km.eval.rows``) so that listings
of versions can show them without reading runs.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from kernel_magics.errors import InvalidInput
from kernel_magics.evaluation import html_view
from kernel_magics.evaluation.loading import LoadedVersion, forward, input_rows, load_version
from kernel_magics.evaluation.metrics import HEADLINE, classification, regression
from kernel_magics.store import Store, retry_locked

if TYPE_CHECKING:
    import numpy as np

EXPERIMENT = "kernel-magics-evaluations"
TAG_EVAL_PREFIX = "km.eval."
RESIDUALS_KEPT = 2000  # points kept on the record for the residual plot


@dataclass
class EvaluationResult:
    """What ``%evaluate`` returns (``e = %evaluate digits --data X_test y_test``)."""

    name: str
    version: int
    task: str
    rows: int
    metrics: dict[str, float]
    per_class: dict[str, dict[str, float]] = field(default_factory=dict)
    confusion: list[list[int]] | None = None
    labels: list[Any] = field(default_factory=list)  # class labels, in output order
    residuals: np.ndarray | None = field(default=None, repr=False)  # y - prediction (sample)
    fitted: np.ndarray | None = field(default=None, repr=False)  # the predictions they go with
    run_id: str = ""
    forward_seconds: float = 0.0
    other_seconds: float = 0.0  # loading, metrics and logging: everything but the forward
    notes: list[str] = field(default_factory=list)

    _repr_html_ = html_view  # the view the front end registered


def evaluate(
    store: Store, target: str, X: Any, y: Any, *, batch_size: int = 4096
) -> EvaluationResult:
    """Evaluate version ``target`` (``NAME``, ``NAME@V``, ``NAME@ALIAS``) on ``(X, y)``."""
    started = time.perf_counter()
    loaded = load_version(store, target)
    rows = input_rows(X, loaded)
    truth = _targets(y, len(rows))
    task = _task(loaded, truth)
    began = time.perf_counter()
    outputs = forward(loaded, rows, batch_size).float().numpy()
    forward_seconds = time.perf_counter() - began
    result = _score(loaded, task, truth, outputs)
    result.run_id = log_evaluation(store, result)
    result.forward_seconds = forward_seconds
    result.other_seconds = time.perf_counter() - started - forward_seconds
    return result


def _targets(y: Any, n: int) -> np.ndarray:
    from kernel_magics.training.inputs import as_array

    truth = as_array(y, "y")
    if len(truth) != n:
        raise InvalidInput(f"X has {n} rows but y has {len(truth)}")
    if n == 0:
        raise InvalidInput("X has no rows to evaluate on")
    return truth


def answers_probabilities(info: Any) -> bool:
    """A version of another framework whose outputs are class probabilities already (its
    ``km.conversion`` record says so: a scikit-learn classifier, a Keras sigmoid/softmax)."""
    from kernel_magics.frameworks import TAG_CONVERSION

    raw = (getattr(info, "tags", None) or {}).get(TAG_CONVERSION)
    return isinstance(raw, str) and json.loads(raw).get("outputs") == "probabilities"


def _task(loaded: LoadedVersion, truth: np.ndarray) -> str:
    task = loaded.info.task
    if task in HEADLINE:
        return task
    # untagged versions (or task "other"): class scores against whole-number labels
    whole = truth.dtype.kind in "iub" or truth.dtype.kind in "OUS"
    return "classification" if whole and truth.ndim == 1 else "regression"


def _score(
    loaded: LoadedVersion, task: str, truth: np.ndarray, outputs: np.ndarray
) -> EvaluationResult:
    info = loaded.info
    result = EvaluationResult(info.name, info.version, task, len(truth), {})
    if task == "classification":
        n_classes = max(outputs.reshape(len(outputs), -1).shape[1], 2)
        labels = info.classes if len(info.classes or ()) == n_classes else None
        labels = labels or list(range(n_classes))
        indices = _class_indices(truth, labels, loaded.ref)
        scores = classification(
            indices, outputs, labels, probabilities_out=answers_probabilities(info)
        )
        result.labels, result.per_class = labels, scores.per_class
        result.confusion = scores.confusion
    else:
        scores, residuals = regression(truth, outputs)
        if residuals.shape[1:] == (1,):
            keep = slice(0, RESIDUALS_KEPT)
            result.residuals = residuals[keep, 0]
            result.fitted = outputs.reshape(len(outputs), -1)[keep, 0]
    result.metrics, result.notes = dict(scores.metrics), list(scores.notes)
    return result


def _class_indices(truth: np.ndarray, labels: list[Any], ref: str) -> np.ndarray:
    """Labels as the version's output indices (its ``km.classes``; else 0..C-1)."""
    import numpy as np

    index = {label: i for i, label in enumerate(labels)}
    values = truth.reshape(-1).tolist()
    found = [index.get(v) for v in values]
    unknown = sorted({repr(v) for v, i in zip(values, found, strict=True) if i is None})
    if unknown:
        shown = ", ".join(unknown[:5]) + (" ..." if len(unknown) > 5 else "")
        raise InvalidInput(
            f"y has labels {ref} does not know: {shown} (its classes: {labels[:20]})"
        )
    return np.asarray(found, dtype=np.int64)


# -- logging ------------------------------------------------------------------------------------
def log_evaluation(store: Store, result: EvaluationResult) -> str:
    """One evaluation run linked to the version, and the headline metrics as version tags."""
    extra = {
        f"{metric}_class_{label}": values[metric]
        for label, values in result.per_class.items()
        for metric in ("precision", "recall", "f1")
    }
    document = {
        "rows": result.rows,
        "task": result.task,
        "metrics": result.metrics,
        "per_class": result.per_class,
        "labels": result.labels,
        "confusion": result.confusion,
        "notes": result.notes,
    }
    version_tags = {f"{TAG_EVAL_PREFIX}{k}": f"{v:.6g}" for k, v in result.metrics.items()}
    version_tags[f"{TAG_EVAL_PREFIX}rows"] = str(result.rows)
    return log_to_version(
        store,
        result.name,
        result.version,
        kind="holdout",
        metrics={**result.metrics, **extra},
        params={"rows": result.rows, "task": result.task},
        document=document,
        version_tags=version_tags,
    )


def log_to_version(
    store: Store,
    name: str,
    version: int,
    *,
    kind: str,
    metrics: dict[str, float],
    params: dict[str, Any],
    document: dict[str, Any],
    version_tags: dict[str, str],
    steps: list[dict[str, float]] | None = None,
) -> str:
    """An evaluation run (``km.model``, ``km.version``, ``km.eval.kind``) with ``metrics``
    (``steps``: per-step values too, e.g. one per fold) and ``document`` as
    ``evaluation.json``; then ``version_tags`` (and ``km.eval.run`` when ``kind`` is
    "holdout") on the version."""
    import math

    from mlflow.entities import Metric, Param, RunTag

    from kernel_magics.orphans import owner_tags
    from kernel_magics.pipelines import pipeline_tags

    client = store.client
    now = int(time.time() * 1000)
    batch = [Metric(k, float(v), now, 0) for k, v in metrics.items() if math.isfinite(v)]
    for step, values in enumerate(steps or []):
        batch += [Metric(k, float(v), now, step) for k, v in values.items() if math.isfinite(v)]
    tags = {"km.model": name, "km.version": str(version), "km.eval.kind": kind, **pipeline_tags()}
    tags.update(owner_tags())  # a sweep ends the run if this process dies before it does
    experiment_id = store.experiment_id(EXPERIMENT)
    with store.write_lock():
        run = retry_locked(
            client.create_run, experiment_id, run_name=f"{name} v{version} {kind}", tags=tags
        )
        run_id = run.info.run_id
        retry_locked(
            client.log_batch,
            run_id,
            metrics=batch,
            params=[Param(k, str(v)) for k, v in params.items()],
            tags=[RunTag("mlflow.note.content", f"{kind} evaluation of {name} v{version}")],
        )
        client.log_dict(run_id, document, "evaluation.json")
        retry_locked(client.set_terminated, run_id, "FINISHED")
        if kind == "holdout":
            version_tags = {**version_tags, f"{TAG_EVAL_PREFIX}run": run_id}
        for key, value in version_tags.items():
            retry_locked(client.set_model_version_tag, name, str(version), key, value)
    return run_id
