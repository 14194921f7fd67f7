"""``%evaluate NAME --live``: the live metrics of every version of a model (the inference log
joined with feedback, ``kernel_magics/quality/live.py``), each logged to the version's own MLflow
run as ``live_<metric>`` (one point per evaluation, so the run's metric history shows them over
time)."""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path

from kernel_magics.quality.live import live_metrics
from kernel_magics.quality.log_reader import Since
from kernel_magics.store import Store, retry_locked

LIVE_PREFIX = "live_"


@dataclass(frozen=True)
class LiveEvaluation:
    """Live figures per version: ``labelled`` rows, then accuracy + f1_macro or mse + mae."""

    name: str
    since: str | None
    versions: dict[int, dict[str, float]] = field(default_factory=dict)
    runs: dict[int, str] = field(default_factory=dict)  # version → the run its figures went to


def evaluate_live(
    store: Store, home: Path, name: str, since: Since = None, *, log: bool = True
) -> LiveEvaluation:
    """Live metrics of ``name`` per version; with ``log``, each version's figures are logged
    to its run as ``live_*`` metrics."""
    figures = live_metrics(home, name, since=since)
    runs: dict[int, str] = {}
    if log and figures:
        from mlflow.entities import Metric

        now = int(time.time() * 1000)
        with store.write_lock():
            for version, values in figures.items():
                run_id = store.resolve(name, version).run_id
                if not run_id:
                    continue
                batch = [Metric(LIVE_PREFIX + k, float(v), now, 0) for k, v in values.items()]
                retry_locked(store.client.log_batch, run_id, metrics=batch)
                runs[version] = run_id
    return LiveEvaluation(name, None if since is None else str(since), figures, runs)
