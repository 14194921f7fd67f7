"""Reproducible notebook pipelines: a notebook executed with papermill is one MLflow run.

The parent side (``run.py``, ``rerun.py``) executes a notebook in a fresh kernel of this
environment and records it; this module is the child side, imported by the notebook itself, so
it stays light (no papermill, no mlflow until a metric is logged):

    from kernel_magics.pipelines import log_metric
    log_metric("holdout_accuracy", 0.97)     # on the pipeline run; nothing outside a pipeline

The parent tells the child kernel which run it belongs to through ``KERNEL_MAGICS_PIPELINE_RUN``.
Runs the child creates carry ``pipeline_tags()`` (``km.pipeline_run`` and MLflow's
``mlflow.parentRunId``), which is how the pipeline run finds the versions it produced.
"""

from __future__ import annotations

import functools
import math
import numbers
import os
import re
import time
from typing import TYPE_CHECKING, Any

from kernel_magics.errors import InvalidInput, KernelMagicsError

if TYPE_CHECKING:
    from kernel_magics.config import Settings
    from kernel_magics.store import Store

ENV_RUN = "KERNEL_MAGICS_PIPELINE_RUN"
EXPERIMENT = "kernel-magics-pipelines"
TAG_PIPELINE_RUN = "km.pipeline_run"
TAG_PARENT_RUN = "mlflow.parentRunId"
_METRIC_NAME = re.compile(r"^[\w\-./ ]{1,250}$")


class PipelineFailed(KernelMagicsError):
    """A pipeline notebook raised in a cell (or its kernel died); its run is marked FAILED and
    the executed notebook, error cell included, is stored with it."""

    def __init__(self, message: str, *, run_id: str | None = None, record: Any = None):
        super().__init__(message)
        self.run_id = run_id
        self.record = record  # the PipelineRecord of the failed run, when it was recorded


def current_run() -> str | None:
    """The pipeline run this kernel executes for (None outside a pipeline)."""
    return os.environ.get(ENV_RUN) or None


def pipeline_tags() -> dict[str, str]:
    """Tags for any run created inside a pipeline: the link back to the pipeline run."""
    run_id = current_run()
    return {TAG_PIPELINE_RUN: run_id, TAG_PARENT_RUN: run_id} if run_id else {}


def log_metric(name: str, value: float, *, step: int | None = None) -> None:
    """Record ``value`` on the pipeline run this notebook executes for; a rerun compares it.

    Outside a pipeline (an interactive kernel) nothing is recorded.
    """
    log_metrics({name: value}, step=step)


def log_metrics(metrics: dict[str, Any], *, step: int | None = None) -> None:
    """``log_metric`` for several values at once (one write)."""
    checked = {_metric_name(k): _metric_value(k, v) for k, v in metrics.items()}
    run_id = current_run()
    if run_id is None or not checked:
        return
    from mlflow.entities import Metric

    from kernel_magics.config import load_settings
    from kernel_magics.store import retry_locked

    store = _store(load_settings())
    now = int(time.time() * 1000)
    batch = [Metric(k, v, now, step or 0) for k, v in checked.items()]
    with store.write_lock():
        retry_locked(store.client.log_batch, run_id, metrics=batch)


@functools.lru_cache(maxsize=4)
def _store(settings: Settings) -> Store:
    from kernel_magics.store import Store

    return Store(settings)


def _metric_name(name: Any) -> str:
    if not isinstance(name, str) or not _METRIC_NAME.match(name):
        raise InvalidInput(
            f"metric name {name!r}: use letters, digits, '_', '-', '.', '/' and spaces"
        )
    return name


def _metric_value(name: str, value: Any) -> float:
    value = value.item() if hasattr(value, "item") else value
    if isinstance(value, bool) or not isinstance(value, numbers.Real) or not math.isfinite(value):
        raise InvalidInput(f"metric {name!r} must be a finite number, got {value!r}")
    return float(value)
