"""Drift gauges for Prometheus, computed by the inference process on its own log.

Worker 0 runs one daemon thread: every ``Settings.drift_interval_s`` it takes the versions it
serves (live and canary), and for each whose folder has a reference profile and whose logged
requests are not empty, compares the newest ``drift_window_rows`` logged rows with the profile
(``quality.drift``) and sets ``km_drift_psi`` and ``km_drift_flagged`` per model, version and
feature (``prediction`` for the predictions). It also writes the latest result per version
(``records.DriftSummary``: when, rows compared, PSI per feature, the flagged ones) to
``Settings.drift_file``, which every worker's ``/v1/status`` reads: the gauges have no room for
the time and the row count, and a file is what the other workers can see. Off the request
path: the requests never wait for it, and it reads the log's file as the kernel does. One
worker computes, so several workers do not repeat the work; the gauges keep the largest value
among live processes, which is worker 0's. A failure is logged and the next tick tries again:
the gauges and the file only go stale.
"""

from __future__ import annotations

import contextlib
import logging
import math
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

from prometheus_client import Gauge

from kernel_magics.config import Settings
from kernel_magics.errors import KernelMagicsError
from kernel_magics.records import DriftSummary

if TYPE_CHECKING:
    from kernel_magics.quality.profile import ReferenceProfile

log = logging.getLogger(__name__)
_LABELS = ("model", "version", "feature")
DRIFT_PSI = Gauge(
    "km_drift_psi",
    "PSI of a feature (or the predictions) over the newest logged rows against the reference",
    _LABELS,
    multiprocess_mode="livemax",
)
DRIFT_FLAGGED = Gauge(
    "km_drift_flagged",
    "1 when the feature drifted (test p < drift_p_value and PSI >= drift_psi), else 0",
    _LABELS,
    multiprocess_mode="livemax",
)
# (name, version, model folder) of every version the worker serves
Served = Callable[[], list[tuple[str, int, Path]]]


class DriftMonitor:
    def __init__(self, settings: Settings, served: Served):
        self.settings = settings
        self.served = served
        self._stop = threading.Event()
        self._profiles: dict[tuple[str, int], ReferenceProfile | None] = {}  # never change
        self._series: set[tuple[str, str, str]] = set()
        # an earlier process's results are not this one's: nothing until the first tick
        with contextlib.suppress(OSError):
            settings.drift_file.unlink()
        self._thread = threading.Thread(target=self._run, name="drift-monitor", daemon=True)
        self._thread.start()

    def close(self) -> None:
        self._stop.set()

    def _run(self) -> None:
        while not self._stop.wait(self.settings.drift_interval_s):
            try:
                self.tick()
            except Exception as err:  # the gauges go stale; serving goes on
                log.warning("drift gauges not updated: %s: %s", type(err).__name__, err)

    def tick(self) -> None:
        from kernel_magics.quality.drift import drift_report
        from kernel_magics.quality.drift_log import logged_rows

        current: set[tuple[str, str, str]] = set()
        summaries: list[DriftSummary] = []
        for name, version, folder in self.served():
            profile = self._profile(name, version, folder)
            if profile is None:
                continue
            window = f"{self.settings.drift_window_rows}rows"
            rows, predictions = logged_rows(self.settings.home, name, version, window)
            if not rows:
                continue
            report = drift_report(
                profile,
                rows,
                predictions,
                p_value=self.settings.drift_p_value,
                psi=self.settings.drift_psi,
            )
            for feature in report.features:
                labels = (name, str(version), feature.feature)
                DRIFT_PSI.labels(*labels).set(feature.psi)
                DRIFT_FLAGGED.labels(*labels).set(1.0 if feature.flagged else 0.0)
                current.add(labels)
            summaries.append(
                DriftSummary(
                    model=name,
                    version=version,
                    time=time.time(),
                    rows=len(rows),
                    flagged=tuple(report.flagged),
                    psi={
                        f.feature: round(f.psi, 4) if math.isfinite(f.psi) else 1e6
                        for f in report.features
                    },
                )
            )
        for gone in self._series - current:  # a version no longer served: its series go
            for gauge in (DRIFT_PSI, DRIFT_FLAGGED):
                with contextlib.suppress(KeyError):
                    gauge.remove(*gone)
        self._series = current
        write_summaries(self.settings.drift_file, summaries)

    def _profile(self, name: str, version: int, folder: Path) -> ReferenceProfile | None:
        from kernel_magics.quality.profile import read_profile

        key = (name, version)
        if key not in self._profiles:
            self._profiles[key] = read_profile(folder)
        return self._profiles[key]


def write_summaries(path: Path, summaries: list[DriftSummary]) -> None:
    """Replaces the file in one step, so a worker reading it never sees half of it."""
    import orjson

    from kernel_magics.serving.files import write_atomic

    write_atomic(path, orjson.dumps([s.to_wire() for s in summaries]).decode())


def read_summaries(path: Path) -> list[DriftSummary]:
    """The latest results, or none (no file yet, or one this version cannot read)."""
    import orjson

    try:
        doc = orjson.loads(path.read_bytes())
        return [DriftSummary.from_wire(d) for d in doc]
    except (OSError, ValueError, TypeError, KernelMagicsError):
        return []
