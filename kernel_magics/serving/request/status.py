"""``GET /v1/status``: everything a dashboard polls, in one request to one worker.

The kernel's ``%monitor``, ``%models`` and the JupyterLab panel refresh every second or so; one
snapshot per refresh keeps that cheap for the process serving traffic. It holds what is live
(as ``GET /v1/models`` describes it), per loaded version the Prometheus counters of
``metrics.py`` (requests, errors, latency histogram, batches and rows, queue depth), usage per
token, the latest error answers, the last lines of the process log, the supervisor's state
file and the drift monitor's latest check per served version (``drift_monitor.py``). With
several workers the counters are the multiprocess sums (``MULTIPROC_ENV``), as ``/metrics``
shows them; the recent errors are those of the worker that answers.

The work is done on the event loop thread, so it is bounded: a few metric families, one read of
each small file. Nothing here runs per prediction except ``RecentErrors.add`` on error answers.
"""

from __future__ import annotations

import collections
import json
import os
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

from kernel_magics.records import RecentError, VersionStats
from kernel_magics.serving.request import metrics
from kernel_magics.serving.request.drift_monitor import read_summaries

if TYPE_CHECKING:
    from kernel_magics.serving.request.app import WorkerApp
    from kernel_magics.serving.request.protocol import Connection, Request

RECENT_ERRORS = 20
LOG_LINES = 20
_LOG_TAIL_BYTES = 16 * 1024


class RecentErrors:
    """The latest error answers of this worker (a bounded ring: old ones fall off)."""

    def __init__(self, size: int = RECENT_ERRORS) -> None:
        self._items: collections.deque[RecentError] = collections.deque(maxlen=size)

    def add(self, status: int, message: str, model: str = "", version: int | None = None) -> None:
        self._items.append(RecentError(time.time(), status, message[:300], model[:200], version))

    def to_wire(self) -> list[dict[str, Any]]:
        return [e.to_wire() for e in self._items]


# Prometheus sample name → VersionStats field (counters and the batch histogram's totals)
_SAMPLE_FIELDS = {
    "km_requests_total": "requests",
    "km_request_errors_total": "errors",
    "km_request_server_errors_total": "server_errors",
    "km_batch_size_sum": "rows",
    "km_batch_size_count": "batches",
    "km_queue_depth": "queue",
    "km_request_latency_seconds_count": "latency_count",
    "km_request_latency_seconds_sum": "latency_sum_s",
    "km_generation_tokens_total": "tokens",
}
# histogram buckets → VersionStats field
_BUCKET_FIELDS = {
    "km_request_latency_seconds_bucket": "latency_buckets",
    "km_generation_ttft_seconds_bucket": "ttft_buckets",
    "km_generation_inter_token_seconds_bucket": "inter_token_buckets",
}
_TOKEN_FIELDS = {
    "km_token_requests_total": "requests",
    "km_token_rows_total": "rows",
    "km_token_prompt_tokens_total": "prompt_tokens",
    "km_token_completion_tokens_total": "completion_tokens",
}
# the inference log's counters (unlabelled): shown by %serve status
_LOG_FIELDS = {
    "km_inference_log_written_total": "written",
    "km_inference_log_dropped_total": "dropped",
}


def collect() -> tuple[list[VersionStats], dict[str, dict[str, int]], int, dict[str, int]]:
    """(stats per served version, usage per token, errors for names that are not deployed, the
    inference log's written and dropped samples)."""
    versions: dict[tuple[str, int], dict[str, Any]] = {}
    buckets: dict[tuple[str, int, str], dict[float, float]] = {}
    usage: dict[str, dict[str, int]] = {}
    unknown = 0
    inference_log = dict.fromkeys(_LOG_FIELDS.values(), 0)
    for family in metrics.families():
        for sample in family.samples:
            name, labels, value = sample.name, sample.labels, sample.value
            log_field = _LOG_FIELDS.get(name)
            if log_field is not None:
                inference_log[log_field] += int(value)
                continue
            token_field = _TOKEN_FIELDS.get(name)
            if token_field is not None:
                entry = usage.setdefault(
                    labels.get("token", ""), dict.fromkeys(_TOKEN_FIELDS.values(), 0)
                )
                entry[token_field] += int(value)
                continue
            model, raw_version = labels.get("model"), labels.get("version")
            if model is None or raw_version is None:
                continue
            if not model:  # errors for names that are not deployed share one empty series
                if name == "km_request_errors_total":
                    unknown += int(value)
                continue
            key = (model, int(raw_version))
            bucket_field = _BUCKET_FIELDS.get(name)
            if bucket_field is not None:
                bound = float(labels["le"])
                per_version = buckets.setdefault((*key, bucket_field), {})
                per_version[bound] = per_version.get(bound, 0) + value
                continue
            stat = _SAMPLE_FIELDS.get(name)
            if stat is not None:
                fields = versions.setdefault(key, {})
                fields[stat] = fields.get(stat, 0) + value
    stats = []
    histograms = {
        key: {
            field: tuple(
                (bound, int(count))
                for bound, count in sorted(buckets.get((*key, field), {}).items())
            )
            for field in _BUCKET_FIELDS.values()
        }
        for key in {k[:2] for k in buckets} | set(versions)
    }
    for key in sorted(histograms):
        fields = versions.get(key, {})
        stats.append(
            VersionStats(
                model=key[0],
                version=key[1],
                requests=int(fields.get("requests", 0)),
                errors=int(fields.get("errors", 0)),
                server_errors=int(fields.get("server_errors", 0)),
                rows=int(fields.get("rows", 0)),
                batches=int(fields.get("batches", 0)),
                queue=max(0, int(fields.get("queue", 0))),
                latency_count=int(fields.get("latency_count", 0)),
                latency_sum_s=float(fields.get("latency_sum_s", 0.0)),
                tokens=int(fields.get("tokens", 0)),
                **histograms[key],
            )
        )
    return stats, usage, unknown, inference_log


def log_tail(path: Path, lines: int = LOG_LINES) -> list[str]:
    """The last ``lines`` lines of the process log (one bounded read from its end)."""
    try:
        with open(path, "rb") as fh:
            fh.seek(0, 2)
            size = fh.tell()
            fh.seek(max(0, size - _LOG_TAIL_BYTES))
            text = fh.read().decode(errors="replace")
    except OSError:
        return []
    return text.splitlines()[-lines:]


def supervisor_state(path: Path) -> dict[str, Any]:
    try:
        doc = json.loads(path.read_text())
    except (OSError, ValueError):
        return {}
    return doc if isinstance(doc, dict) else {}


def snapshot(app: WorkerApp) -> dict[str, Any]:
    """The ``/v1/status`` document."""
    app.refresh_generation_gauges()
    stats, usage, unknown, inference_log = collect()
    by_version = {(s.model, s.version): s for s in stats}
    models = []
    for name in sorted(app.table.live):
        described = app.table.describe(name)
        live = by_version.get((name, app.table.live[name].version))
        standby = app.table.standby.get(name)
        described["stats"] = live.to_wire() if live else None
        described["standby_version"] = standby.version if standby is not None else None
        models.append(described)
    settings = app.settings
    served = {(name, version) for name, version, _ in app.served_folders()}
    drift = [d for d in read_summaries(settings.drift_file) if (d.model, d.version) in served]
    return {
        "time": time.time(),
        "worker": {"index": app.index, "pid": os.getpid()},
        "supervisor": supervisor_state(settings.state_file),
        "models": models,
        "versions": [s.to_wire() for s in stats],
        "usage": usage,
        "unknown_model_errors": unknown,
        "inference_log": inference_log,
        "errors": app.recent_errors.to_wire(),
        "log": log_tail(settings.log_file),
        "drift": [d.to_wire() for d in drift],
    }


def answer(app: WorkerApp, req: Request, conn: Connection) -> None:
    """The route handler: the token is required (the snapshot names models, tokens, errors)."""
    from kernel_magics.serving.request.bodies import dumps

    if not app._authorized(req):
        app._unauthorized(req, conn)
        return
    conn.send(200, dumps(snapshot(app)), req=req)
