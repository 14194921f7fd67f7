"""The model's quality in service: the inference log, feedback and live metrics
(``kernel_magics/quality``). The log and the metrics are read from the log's file in the home
folder (the kernel and the inference process share it), so they answer whether or not the
process runs; feedback goes through the process, which checks it against what it logged.
"""

from __future__ import annotations

import json
from typing import TYPE_CHECKING, Any

from kernel_magics.api._context import _settings, _store, _target
from kernel_magics.config import Settings
from kernel_magics.errors import InvalidInput
from kernel_magics.naming import validate_name
from kernel_magics.quality.log_reader import Since

if TYPE_CHECKING:
    import pandas as pd

    from kernel_magics.evaluation.live import LiveEvaluation
    from kernel_magics.records import ServerStatus


def inference_log(
    name: str,
    *,
    since: Since = None,
    version: int | None = None,
    limit: int | None = None,
    settings: Settings | None = None,
) -> pd.DataFrame:
    """The logged requests of ``name``, one frame row per request row, oldest first: columns
    ``time`` (UTC), ``version``, ``request_id``, ``row``, ``input``, ``output``,
    ``latency_ms``. ``since``: a duration ("90s", "30m", "1h", "2d"), seconds, or a time;
    ``limit``: only the newest N rows."""
    from kernel_magics.quality.log_reader import read_log

    validate_name(name)
    return read_log(_settings(settings).home, name, since=since, version=version, limit=limit)


def feedback(name: str, feedback: Any, *, settings: Settings | None = None) -> dict[str, Any]:
    """Send true labels for logged requests: a list of ``{"request_id": ..., "row": 0,
    "label": ...}`` (``row`` optional), or the whole ``{"feedback": [...]}`` body. Answers
    ``{"accepted": N, "unknown": [ids not in the log]}``. A classifier's label is compared
    with the class it answered (its name when the version has class names)."""
    from kernel_magics.quality.feedback import parse_feedback
    from kernel_magics.targets.http import check_answer

    validate_name(name)
    doc = feedback if isinstance(feedback, dict) else {"feedback": _as_list(feedback)}
    parse_feedback(doc)  # the process checks it too; here a mistake costs no request
    serving = _target(_settings(settings))
    serving.ensure_running()
    status, _, data = serving.request(  # type: ignore[attr-defined]
        "POST",
        f"/v1/models/{name}/feedback",
        json.dumps(doc).encode(),
        {"Content-Type": "application/json"},
    )
    return dict(check_answer(status, data))


def live_metrics(
    name: str,
    *,
    version: int | None = None,
    since: Since = None,
    settings: Settings | None = None,
) -> dict[int, dict[str, float]]:
    """Per version of ``name``, over its logged rows that got feedback (answered since
    ``since``): ``labelled`` and ``accuracy`` + ``f1_macro`` (a classifier) or ``mse`` +
    ``mae`` (a regressor)."""
    from kernel_magics.quality.live import live_metrics as compute

    validate_name(name)
    return compute(_settings(settings).home, name, version=version, since=since)


def served_live_metrics(
    status: ServerStatus | None, name: str | None = None, *, settings: Settings | None = None
) -> dict[str, dict[int, dict[str, float]]]:
    """``live_metrics`` of every model ``status`` serves (or of ``name``), only those with
    feedback: what ``%monitor`` and the Models panel show next to the drift checks."""
    if status is None:
        return {}
    s = _settings(settings)
    figures = {}
    for model in [name] if name else sorted(status.models):
        try:
            per_version = live_metrics(model, settings=s)
        except Exception:  # a log being written by a newer version, a locked file: skip it
            continue
        if per_version:
            figures[model] = per_version
    return figures


def evaluate_live(
    name: str, *, since: Since = None, settings: Settings | None = None
) -> LiveEvaluation:
    """``%evaluate NAME --live``: ``live_metrics`` per version, each also logged to the
    version's MLflow run as ``live_<metric>`` (a point per call: the run's history over time)."""
    from kernel_magics.evaluation.live import evaluate_live as run

    validate_name(name)
    s = _settings(settings)
    return run(_store(s), s.home, name, since)


def _as_list(items: Any) -> list:
    if hasattr(items, "to_dict"):  # a DataFrame with request_id, row, label columns
        return list(items.to_dict("records"))
    try:
        return list(items)
    except TypeError:
        raise InvalidInput("feedback must be a list of {request_id, row, label} items") from None
