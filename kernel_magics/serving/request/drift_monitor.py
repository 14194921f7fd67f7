"""Drift gauges for Prometheus, computed by the inference process on its own log.

Worker 0 runs one daemon thread: every ``Settings.drift_interval_s`` it takes the versions it
serves (live and canary), and for each whose folder has a reference profile and whose logged
requests are not empty, compares the newest ``drift_window_rows`` logged rows with the profile
(``quality.drift``) and sets ``km_drift_psi`` and ``km_drift_flagged`` per model, version and
feature (``prediction`` for the predictions). Off the request path: the requests never wait for
it, and it reads the log's file as the kernel does. One worker computes, so several workers do
not repeat the work; the gauges keep the largest value among live processes, which is worker 0's.
A failure is logged and the next tick tries again: the gauges only go stale.
"""

from __future__ import annotations

import contextlib
import logging
import threading
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

from prometheus_client import Gauge

from kernel_magics.config import Settings

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
        for gone in self._series - current:  # a version no longer served: its series go
            for gauge in (DRIFT_PSI, DRIFT_FLAGGED):
                with contextlib.suppress(KeyError):
                    gauge.remove(*gone)
        self._series = current

    def _profile(self, name: str, version: int, folder: Path) -> ReferenceProfile | None:
        from kernel_magics.quality.profile import read_profile

        key = (name, version)
        if key not in self._profiles:
            self._profiles[key] = read_profile(folder)
        return self._profiles[key]
