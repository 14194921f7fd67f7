"""Pipelines, evaluation, comparison and explanations of registered versions."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from kernel_magics.api._context import _settings, _store
from kernel_magics.config import Settings
from kernel_magics.errors import InvalidInput
from kernel_magics.training.config import TrainConfig

if TYPE_CHECKING:
    from kernel_magics.evaluation.compare import Comparison
    from kernel_magics.evaluation.cv import CVResult
    from kernel_magics.evaluation.evaluate import EvaluationResult
    from kernel_magics.explain.record import Explanation
    from kernel_magics.pipelines.record import PipelineRecord
    from kernel_magics.pipelines.rerun import RerunResult


# -- pipelines, evaluation and comparison (kernel_magics.pipelines, kernel_magics.evaluation) ----
def pipeline_run(
    notebook: str,
    parameters: dict[str, Any] | None = None,
    *,
    run_name: str | None = None,
    output: str | None = None,
    progress: str = "bar",
    allow_extra_params: bool = False,
    settings: Settings | None = None,
) -> PipelineRecord:
    """Execute ``notebook`` with papermill (``parameters`` go after its ``parameters`` cell) in
    a fresh kernel of this environment, as one MLflow run of ``kernel-magics-pipelines``:
    parameters, provenance, the input and executed notebooks, the notebook's own metrics
    (``kernel_magics.pipelines.log_metric``) and the versions it registered. ``progress``:
    "bar" (papermill's), "text" (a line per cell) or "none". A failing cell raises
    ``PipelineFailed`` (its error on one line) after the run was stored as FAILED.

    A parameter the notebook's parameters cell does not set is refused before anything runs
    ("unknown parameter 'epoch' (did you mean 'epochs'?)") unless ``allow_extra_params``."""
    from kernel_magics.pipelines.run import run_pipeline

    return run_pipeline(
        notebook,
        parameters,
        settings=_settings(settings),
        run_name=run_name,
        output=output,
        progress=progress,
        allow_extra_params=allow_extra_params,
    )


def pipeline_rerun(
    run_id: str,
    *,
    parameters: dict[str, Any] | None = None,
    use_source: bool = False,
    output: str | None = None,
    progress: str = "bar",
    settings: Settings | None = None,
) -> RerunResult:
    """Execute pipeline run ``run_id`` again with its recorded parameters (``parameters``
    override some) and compare the metrics of both runs. The notebook executed is the copy
    stored with the run, or with ``use_source`` the file at its recorded path."""
    from kernel_magics.pipelines.rerun import rerun_pipeline

    return rerun_pipeline(
        run_id,
        settings=_settings(settings),
        parameters=parameters,
        use_source=use_source,
        output=output,
        progress=progress,
    )


def evaluate(
    target: str,
    X: Any,
    y: Any,
    *,
    cv: int | None = None,
    model: Any = None,
    config: TrainConfig | None = None,
    batch_size: int = 4096,
    settings: Settings | None = None,
) -> EvaluationResult | CVResult:
    """Evaluate version ``target`` ("NAME", "NAME@VERSION", "NAME@ALIAS") on ``(X, y)``:
    scikit-learn metrics (classification: accuracy, macro and per-class precision / recall /
    F1, ROC AUC where it applies, the confusion matrix; regression: MSE, MAE, R², residuals),
    logged as an evaluation run of the version and as its ``km.eval.<metric>`` tags.

    With ``cv=K``: K-fold cross-validation of the version's recipe instead (its recorded
    hyper-parameters, or ``config``), training models from ``model`` (a zero-argument factory,
    or a module copied for each fold); mean and standard deviation per metric."""
    s = _settings(settings)
    if cv is None:
        from kernel_magics.evaluation.evaluate import evaluate as run_evaluation

        return run_evaluation(_store(s), target, X, y, batch_size=batch_size)
    if model is None:
        raise InvalidInput("cross-validation needs model: a factory of fresh models, e.g. Net")
    from kernel_magics.evaluation.cv import cross_validate

    return cross_validate(_store(s), target, X, y, model, cv, config=config)


def compare(name: str, *versions: int | str, settings: Settings | None = None) -> Comparison:
    """Versions (numbers or aliases) of ``name`` side by side: training and evaluation
    metrics, params, lineage, size, parameter count and one-row latency; ``best`` per row."""
    from kernel_magics.evaluation.compare import compare as run_compare

    return run_compare(_store(_settings(settings)), name, list(versions))


def explain(
    ref: str,
    X: Any,
    *,
    target: Any = None,
    baseline: str | Any = "zeros",
    steps: int = 50,
    rows: int | None = None,
    settings: Settings | None = None,
) -> Explanation:
    """Per-feature attributions of version ``ref`` ("NAME", "NAME@VERSION", "NAME@ALIAS") for
    the rows of ``X`` (the first ``rows``; a bare NAME is the live version, else the newest,
    and ``why`` says which): Captum's Integrated Gradients on the version loaded
    in this process after its hash check. ``target``: a class label or output index (default:
    each row's predicted class; output 0 of a regressor). ``baseline``: "zeros", "mean" or an
    array shaped like one row. Nothing is written to the store."""
    from kernel_magics.explain.attribute import explain as run_explain

    store = _store(_settings(settings))
    return run_explain(store, ref, X, target=target, baseline=baseline, steps=steps, rows=rows)
