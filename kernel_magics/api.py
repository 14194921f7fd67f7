"""The one Python API of kernel-magics.

Magics, widgets, the CLI, the JupyterLab panel and papermill pipelines all call these functions
and only render what they return. Every failure a user can cause raises a
``kernel_magics.errors.KernelMagicsError`` whose message is one readable line.

    from kernel_magics import api
    r = api.train(Net(), X, y, name="digits", epochs=5)
    api.deploy("digits")                 # newest version goes live in the inference process
    api.predict("digits", X[:3])         # class labels (raw=True: model outputs)
    api.rollback("digits")
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from kernel_magics import catalog
from kernel_magics._request_rows import request_rows
from kernel_magics.catalog import ModelSummary, VersionRow
from kernel_magics.config import Settings, load_settings
from kernel_magics.errors import InvalidInput, ServiceUnavailable
from kernel_magics.records import HistoryEvent, ServerStatus, TransitionResult
from kernel_magics.registration import RegisterResult, register_version
from kernel_magics.serving import tokens
from kernel_magics.store import Store, parse_ref, validate_name
from kernel_magics.tracking import TrainResult, run_training
from kernel_magics.training.config import TrainConfig

if TYPE_CHECKING:
    import numpy as np
    import torch

    from kernel_magics.evaluation.compare import Comparison  # pipelines and evaluation
    from kernel_magics.evaluation.cv import CVResult  # pipelines and evaluation
    from kernel_magics.evaluation.evaluate import EvaluationResult  # pipelines and evaluation
    from kernel_magics.explain.record import Explanation  # explanations
    from kernel_magics.optimize import OptimizeResult  # kernel-magics optimize
    from kernel_magics.pipelines.record import PipelineRecord  # pipelines and evaluation
    from kernel_magics.pipelines.rerun import RerunResult  # pipelines and evaluation
    from kernel_magics.targets import ServingTarget

__all__ = [
    "TrainResult",
    "TrainConfig",
    "RegisterResult",
    "TransitionResult",
    "HistoryEvent",
    "ServerStatus",
    "ModelSummary",
    "VersionRow",
    "train",
    "register",
    "deploy",
    "rollback",
    "promote",
    "undeploy",
    "predict",
    "models",
    "history",
    "server_status",
    "server_start",
    "server_stop",
    "server_logs",
    "server_token",
    "pipeline_run",  # pipelines and evaluation
    "pipeline_rerun",  # pipelines and evaluation
    "evaluate",  # pipelines and evaluation
    "compare",  # pipelines and evaluation
    "explain",  # explanations
    "optimize",  # kernel-magics optimize
]


@functools.lru_cache(maxsize=8)
def _store(settings: Settings) -> Store:
    return Store(settings)


@functools.lru_cache(maxsize=8)
def _target(settings: Settings) -> ServingTarget:
    """The serving target the settings name (one per settings: it keeps connections)."""
    from kernel_magics.targets import open_target

    return open_target(settings, lambda: _store(settings))


def _settings(settings: Settings | None) -> Settings:
    return settings if settings is not None else load_settings()


# -- training and registration ------------------------------------------------------------------
def train(
    model: torch.nn.Module,
    X: Any,
    y: Any = None,
    *,
    name: str,
    config: TrainConfig | None = None,
    epochs: int | None = None,
    lr: float | None = None,
    batch_size: int | None = None,
    optimizer: str | None = None,
    weight_decay: float | None = None,
    val_split: float | None = None,
    seed: int | None = None,
    task: str | None = None,
    loss: str | Callable[[Any, Any], Any] | None = None,
    scale: str | None = None,
    encode: str | None = None,
    nproc: int | None = None,
    nnodes: int | None = None,
    rdzv_endpoint: str | None = None,
    progress: Any = "auto",
    settings: Settings | None = None,
) -> TrainResult:
    """Train ``model`` on (X, y), log the run to MLflow and register a new version of ``name``.

    How to train is ``config`` (a ``TrainConfig``; its defaults without one); the keyword
    arguments given override its fields. ``X`` holds rows of any shape (N, ...); ``y`` may be
    the name of a column of a DataFrame ``X``. ``loss`` is "cross_entropy", "mse", "l1",
    "huber", "bce" or a callable ``(outputs, targets) -> scalar tensor``. ``scale``
    ("standard", the default, "minmax" or "none") scales float features, and regression
    targets for mse/l1/huber, with statistics of the training split; ``encode="onehot"``
    one-hot encodes string columns of a DataFrame. Both become part of the registered
    version, which takes raw rows and answers in raw units (``result.model``,
    ``result.predict``). ``progress`` is "auto", "widget", "text", "none" or a ``Progress``
    object. A kernel interrupt raises ``TrainingInterrupted`` after recording the run as
    KILLED; nothing is registered.
    ``nproc`` > 1 (or ``nnodes`` > 1 with ``rdzv_endpoint``) trains with PyTorch DDP under
    torchrun (``training.distributed``); the kernel still logs the run and registers once.
    """
    from kernel_magics.registration import check_model
    from kernel_magics.training.data import prepare_data
    from kernel_magics.training.fit import fit
    from kernel_magics.training.progress import make_progress
    from kernel_magics.training.scaling import scale_data

    validate_name(name)
    check_model(model)
    given = {
        "epochs": epochs,
        "lr": lr,
        "batch_size": batch_size,
        "optimizer": optimizer,
        "weight_decay": weight_decay,
        "val_split": val_split,
        "seed": seed,
        "task": task,
        "loss": loss,
        "scale": scale,  # preprocessing registered with the model (preprocess.py)
        "encode": encode,
        "nproc": nproc,  # distributed training (training/distributed.py)
        "nnodes": nnodes,
        "rdzv_endpoint": rdzv_endpoint,
    }
    config = (config or TrainConfig()).replace(**{k: v for k, v in given.items() if v is not None})
    data = prepare_data(
        X,
        y,
        task=config.target_task,
        val_split=config.val_split,
        seed=config.seed,
        encode=config.encode,
    )
    data = scale_data(data, config)  # fitted on the training split; registered with the model
    reporter = make_progress(progress) if isinstance(progress, str) else progress

    def fit_fn(on_epoch: Any) -> Any:
        from kernel_magics.training.distributed import fit_distributed, is_distributed

        if is_distributed(config):  # the same run and registration; the fit runs in torchrun
            return fit_distributed(model, data, config, on_epoch=on_epoch, progress=reporter)
        return fit(model, data, config, on_epoch=on_epoch, progress=reporter)

    return run_training(_store(_settings(settings)), name, model, data, config, fit_fn)


def register(
    model: torch.nn.Module,
    example: Any,
    *,
    name: str,
    task: str | None = None,
    classes: list | None = None,
    metrics: dict[str, float] | None = None,
    params: dict[str, Any] | None = None,
    parent: str | None = None,
    recipe: str | None = None,
    settings: Settings | None = None,
) -> RegisterResult:
    """Register a model trained anywhere (your own loop, a library) as the next version of
    ``name``, ready to deploy like a ``train`` result.

    ``example``: a few input rows of the model (array, tensor or DataFrame of shape (N, ...),
    in the dtype the model takes). One MLflow run records ``metrics`` and ``params``; the model
    is exported (pt2, or MLflow's pickle format with the reason in ``notes``) in eval mode.
    ``task``: "classification" (outputs are class scores; ``classes`` names them),
    "regression" or "other". ``parent`` ("NAME@VERSION", which must exist) and ``recipe`` (how
    it was made) are kept on the version and shown by ``models()``.
    """
    return register_version(
        _store(_settings(settings)),
        model,
        example,
        name=name,
        task=task,
        classes=classes,
        metrics=metrics,
        params=params,
        parent=parent,
        recipe=recipe,
    )


# -- optimization (kernel_magics.optimize; its libraries load only when it runs) --------------
def optimize(
    ref: str,
    *,
    quantize: str | None = None,
    calibration: Any = None,
    prune: float | None = None,
    structured: bool = False,
    finetune_epochs: int = 0,
    distill: bool = False,
    student: torch.nn.Module | None = None,
    temperature: float = 4.0,
    alpha: float = 0.5,
    epochs: int = 20,
    export: str | None = None,
    X: Any = None,
    y: Any = None,
    name: str | None = None,
    seed: int = 0,
    progress: Any = "auto",
    settings: Settings | None = None,
) -> OptimizeResult:
    """A new version of ``ref`` ("NAME", "NAME@VERSION", "NAME@ALIAS") made by one method,
    tagged ``km.parent``/``km.recipe``, measured beside its parent; returns an
    ``optimize.OptimizeResult`` (size, parameters, p50 latency at batch 1 and 64 on one thread,
    accuracy/F1 or MSE on the held-out 20% of ``X, y``).

    ``quantize="dynamic"|"static"`` (int8 ONNX served by onnxruntime; static calibrates on
    ``calibration`` rows or X), ``prune=AMOUNT`` (``structured=True`` drops Linear neurons;
    ``finetune_epochs`` on X, y), ``distill=True`` with ``student`` (trained on the parent's
    softened outputs, ``temperature``, ``alpha``, ``epochs``; compared with the same student
    trained on labels only), ``export="onnx"`` (fp32, or int8 with ``quantize``).
    """
    from kernel_magics.optimize import optimize as run_optimize

    return run_optimize(
        _store(_settings(settings)),
        ref,
        quantize=quantize,
        calibration=calibration,
        prune=prune,
        structured=structured,
        finetune_epochs=finetune_epochs,
        distill=distill,
        student=student,
        temperature=temperature,
        alpha=alpha,
        epochs=epochs,
        export=export,
        X=X,
        y=y,
        name=name,
        seed=seed,
        progress=progress,
    )


# -- deployment ---------------------------------------------------------------------------------
def deploy(
    target: str,
    version: int | str | None = None,
    *,
    max_batch_size: int | None = None,
    max_wait_ms: float | None = None,
    canary: int | None = None,
    settings: Settings | None = None,
) -> TransitionResult:
    """Make ``NAME`` (newest version), ``NAME@VERSION`` or ``NAME@ALIAS`` live.

    Starts the serving target if needed. The new version is loaded and warmed before it takes
    traffic; if it fails, the live version keeps serving and ``DeployFailed`` says why.

    ``canary=P`` (1–99) instead loads the version beside the live one and sends it P% of the
    model's requests; the live alias stays. The split is deterministic: a request with an
    ``X-Request-ID`` header goes by a hash of it, others by a per-worker counter (exactly
    every (100/P)th request). ``promote(name)`` makes the canary live; ``rollback(name)``
    drops it.
    """
    name, ref = parse_ref(target)
    ref = str(version) if version is not None else ref
    s = _settings(settings)
    serving = _target(s)
    serving.ensure_running(check=lambda: _store(s).resolve(name, ref))
    options: dict[str, Any] = {"max_batch_size": max_batch_size, "max_wait_ms": max_wait_ms}
    if canary is not None:  # only then: a target without canaries keeps working without it
        options["canary"] = canary
    return serving.deploy(name, ref, **options)


def promote(name: str, *, settings: Settings | None = None) -> TransitionResult:
    """Make the running canary of ``name`` live (a normal hot swap; history event "promote")."""
    validate_name(name)
    serving = _target(_settings(settings))
    serving.ensure_running()
    return serving.promote(name)


def rollback(
    name: str, to: int | None = None, *, settings: Settings | None = None
) -> TransitionResult:
    """Make the previously live version (or version ``to``) live again, same hot swap."""
    validate_name(name)
    s = _settings(settings)
    serving = _target(s)
    check = (lambda: _store(s).resolve(name, int(to))) if to is not None else None
    serving.ensure_running(check=check)
    return serving.rollback(name, to)


def undeploy(name: str, *, settings: Settings | None = None) -> TransitionResult:
    """Stop serving ``name`` and clear its live alias (recorded in the history)."""
    validate_name(name)
    serving = _target(_settings(settings))
    serving.ensure_running()
    return serving.undeploy(name)


def history(name: str, *, settings: Settings | None = None) -> list[HistoryEvent]:
    """Deployment events of ``name``, oldest first (``NotFound`` for a model nobody registered)."""
    validate_name(name)
    s = _settings(settings)
    events = _target(s).history(name)
    if not events:
        _store(s).resolve(name)  # an unknown name is an error that lists the known ones
    return events


# -- inference ----------------------------------------------------------------------------------
def predict(
    name: str, X: Any, *, raw: bool = False, settings: Settings | None = None
) -> np.ndarray:
    """Predictions of the live version of ``name``, through its HTTP endpoint. ``X`` holds rows
    of any shape (N, ...) in the model's dtype (floats, integer token ids, booleans).

    Classification models answer class labels unless ``raw`` (then the model's outputs).
    """
    import numpy as np

    validate_name(name)
    s = _settings(settings)
    outputs, version = _target(s).predict(name, request_rows(X))
    if raw:
        return outputs
    info = _version_info(s, name, version)
    if info.task == "classification" and outputs.ndim == 2:
        index = outputs.argmax(axis=1)
        classes = info.classes
        return (
            np.asarray(classes, dtype=object)[index].astype(type(classes[0])) if classes else index
        )
    return outputs


@functools.lru_cache(maxsize=256)
def _version_info(settings: Settings, name: str, version: int) -> Any:
    # Versions are immutable once registered, so caching by (name, version) is safe.
    return _store(settings).resolve(name, int(version))


# -- what exists --------------------------------------------------------------------------------
def models(*, settings: Settings | None = None) -> list[ModelSummary]:
    """Every registered model with its versions, final metrics, and what is live and served."""
    s = _settings(settings)
    try:
        status = _target(s).status()
    except ServiceUnavailable:
        status = None
    return catalog.summaries(_store(s), status)


# -- the serving target -------------------------------------------------------------------------
def server_status(*, settings: Settings | None = None) -> ServerStatus | None:
    """A snapshot of the running serving target (what it serves, usage per token), or None."""
    return _target(_settings(settings)).status()


def server_start(
    *,
    workers: int | None = None,
    host: str | None = None,
    port: int | None = None,
    allow_remote: bool | None = None,
    settings: Settings | None = None,
) -> ServerStatus | None:
    """Start the serving target (if not running) and return its status. A host other than
    loopback needs ``allow_remote=True`` (and then every request needs a token)."""
    changes = {"host": host, "port": port, "allow_remote": allow_remote}
    s = _settings(settings).replace(**{k: v for k, v in changes.items() if v is not None})
    s.check_bind()
    serving = _target(s)
    if workers is None:
        serving.ensure_running()
    else:
        serving.start(workers=workers)
    return serving.status()


def server_stop(*, settings: Settings | None = None) -> bool:
    """Stop the serving target this home folder started; False if none was running."""
    return _target(_settings(settings)).stop()


def server_logs(lines: int = 50, *, settings: Settings | None = None) -> str:
    return _target(_settings(settings)).logs(lines)


def server_token(*, settings: Settings | None = None) -> str:
    """The bearer token scripts and ``curl`` need for the HTTP API."""
    return _target(_settings(settings)).token()


def token_create(name: str, *, settings: Settings | None = None) -> str:
    """A new named bearer token (shown once; its usage is metered under ``name``)."""
    return tokens.create_token(_settings(settings), name)


def token_revoke(name: str, *, settings: Settings | None = None) -> None:
    """Revoke a named token; a running process refuses it within a second."""
    tokens.revoke_token(_settings(settings), name)


def token_list(*, settings: Settings | None = None) -> list[dict]:
    """Named tokens: ``[{"name", "created"}]`` (never the tokens themselves)."""
    return tokens.list_tokens(_settings(settings))


# -- pipelines, evaluation and comparison (kernel_magics.pipelines, kernel_magics.evaluation) ----
def pipeline_run(
    notebook: str,
    parameters: dict[str, Any] | None = None,
    *,
    run_name: str | None = None,
    output: str | None = None,
    progress: str = "bar",
    settings: Settings | None = None,
) -> PipelineRecord:
    """Execute ``notebook`` with papermill (``parameters`` go after its ``parameters`` cell) in
    a fresh kernel of this environment, as one MLflow run of ``kernel-magics-pipelines``:
    parameters, provenance, the input and executed notebooks, the notebook's own metrics
    (``kernel_magics.pipelines.log_metric``) and the versions it registered. ``progress``:
    "bar" (papermill's), "text" (a line per cell) or "none". A failing cell raises
    ``PipelineFailed`` (its error on one line) after the run was stored as FAILED."""
    from kernel_magics.pipelines.run import run_pipeline

    return run_pipeline(
        notebook,
        parameters,
        settings=_settings(settings),
        run_name=run_name,
        output=output,
        progress=progress,
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
    the rows of ``X`` (the first ``rows``): Captum's Integrated Gradients on the version loaded
    in this process after its hash check. ``target``: a class label or output index (default:
    each row's predicted class; output 0 of a regressor). ``baseline``: "zeros", "mean" or an
    array shaped like one row. Nothing is written to the store."""
    from kernel_magics.explain.attribute import explain as run_explain

    store = _store(_settings(settings))
    return run_explain(store, ref, X, target=target, baseline=baseline, steps=steps, rows=rows)
