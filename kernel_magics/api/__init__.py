"""The one Python API of kernel-magics.

Magics, widgets, the CLI, the JupyterLab panel and papermill pipelines all call these functions
and only render what they return. Every failure a user can cause raises a
``kernel_magics.errors.KernelMagicsError`` whose message is one readable line.

    from kernel_magics import api
    r = api.train(Net(), X, y, name="digits", epochs=5)
    api.deploy("digits")                 # newest version goes live in the inference process
    api.predict("digits", X[:3])         # class labels (raw=True: model outputs)
    api.rollback("digits")

The functions live in ``_versions`` (train, register, optimize), ``_serving`` (deploy … predict,
models, the serving target and its tokens) and ``_analysis`` (pipelines, evaluate, compare,
explain), ``_runs`` (runs and versions, read-only: params, metric histories, sizes),
``_quality`` (the inference log, feedback, live metrics), ``_drift`` (drift against a
version's reference profile);
``_context`` holds the per-settings store and target every one of them goes through.
"""

from __future__ import annotations

from kernel_magics.api._analysis import compare, evaluate, explain, pipeline_rerun, pipeline_run
from kernel_magics.api._drift import drift
from kernel_magics.api._generate import Generation, chat, generate
from kernel_magics.api._quality import (
    evaluate_live,
    feedback,
    inference_log,
    live_metrics,
    served_live_metrics,
)
from kernel_magics.api._runs import last_run_id, metric_history, run_params, version_size
from kernel_magics.api._serving import (
    deploy,
    history,
    models,
    predict,
    promote,
    rollback,
    server_logs,
    server_start,
    server_status,
    server_stop,
    server_token,
    token_create,
    token_list,
    token_revoke,
    undeploy,
)
from kernel_magics.api._versions import is_generative, optimize, register, store_doctor, train
from kernel_magics.catalog import ModelSummary, VersionRow
from kernel_magics.naming import not_found, validate_name
from kernel_magics.quality.canary_judge import METRICS as CANARY_METRICS
from kernel_magics.quality.drift import DriftReport
from kernel_magics.records import CanaryRule, HistoryEvent, ServerStatus, TransitionResult
from kernel_magics.registration import RegisterResult
from kernel_magics.serving.tokens import SCOPES as TOKEN_SCOPES
from kernel_magics.tracking import TrainResult
from kernel_magics.training.config import TrainConfig

__all__ = [
    "TOKEN_SCOPES",
    "TrainResult",
    "TrainConfig",
    "RegisterResult",
    "TransitionResult",
    "HistoryEvent",
    "CanaryRule",  # deploy(..., canary=P, analyze=CanaryRule(...))
    "CANARY_METRICS",  # the metrics a canary can be judged on
    "ServerStatus",
    "ModelSummary",
    "VersionRow",
    "train",
    "register",
    "generate",
    "chat",
    "Generation",
    "is_generative",
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
    "token_create",
    "token_list",
    "token_revoke",
    "drift",  # model quality
    "DriftReport",
    "pipeline_run",  # pipelines and evaluation
    "pipeline_rerun",  # pipelines and evaluation
    "evaluate",  # pipelines and evaluation
    "compare",  # pipelines and evaluation
    "explain",  # explanations
    "optimize",  # kernel-magics optimize
    "run_params",  # runs and versions, read-only
    "metric_history",
    "version_size",
    "last_run_id",
    "validate_name",  # the model-name rule, for front ends that check a name before a call
    "not_found",  # the one wording for an unknown model
    "store_doctor",  # runs left RUNNING by killed processes
    "inference_log",  # the model's quality in service
    "feedback",
    "live_metrics",
    "served_live_metrics",
    "evaluate_live",
]
