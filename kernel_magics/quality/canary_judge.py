"""Judging a canary against the live version: the metrics, one figure per arm and a verdict.

The inference process's supervisor (``serving/control/canary_watch.py``) gathers what each arm
answered over the rule's window and asks ``decide``: no decision until both arms have the rule's
``min_requests``; then the canary is rolled back if any metric finds it worse than the live
version by more than the settings allow, and promoted otherwise.

A metric is one function in ``METRICS`` (name → function of ``Arms`` giving a ``Verdict``); a new
one is one entry. Nothing heavy at import time (no numpy, mlflow or IPython): the supervisor
imports it; ``drift`` imports the inference log's reader and the drift statistics when it runs.
"""

from __future__ import annotations

import datetime as _dt
import math
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from kernel_magics.config import Settings
from kernel_magics.errors import InvalidInput
from kernel_magics.records import CanaryRule


@dataclass
class ArmSamples:
    """What one arm answered: per request its wall-clock time, latency (ms) and whether the
    model failed to answer it (its forward raised, or its output could not be encoded)."""

    times: list[float] = field(default_factory=list)
    latencies_ms: list[float] = field(default_factory=list)
    failed: list[bool] = field(default_factory=list)

    def add(self, time: float, latency_ms: float, failed: bool) -> None:
        self.times.append(time)
        self.latencies_ms.append(latency_ms)
        self.failed.append(failed)

    def since(self, start: float) -> ArmSamples:
        """The samples at or after ``start`` (times arrive in order per worker, not overall)."""
        keep = [i for i, t in enumerate(self.times) if t >= start]
        return ArmSamples(
            [self.times[i] for i in keep],
            [self.latencies_ms[i] for i in keep],
            [self.failed[i] for i in keep],
        )

    @property
    def requests(self) -> int:
        return len(self.times)

    @property
    def error_rate(self) -> float:
        return sum(self.failed) / len(self.failed) if self.failed else 0.0

    @property
    def p99_ms(self) -> float:
        if not self.latencies_ms:
            return 0.0
        ordered = sorted(self.latencies_ms)
        return ordered[max(0, math.ceil(0.99 * len(ordered)) - 1)]  # nearest rank

    def to_wire(self) -> dict[str, list]:
        return {
            "times": [round(t, 4) for t in self.times],
            "latencies_ms": [round(x, 3) for x in self.latencies_ms],
            "failed": [int(f) for f in self.failed],
        }

    @classmethod
    def from_wire(cls, doc: Any) -> ArmSamples:
        if not isinstance(doc, dict):
            return cls()
        times, lat, failed = doc.get("times"), doc.get("latencies_ms"), doc.get("failed")
        if not (isinstance(times, list) and isinstance(lat, list) and isinstance(failed, list)):
            return cls()
        if not len(times) == len(lat) == len(failed):
            return cls()
        return cls([float(t) for t in times], [float(x) for x in lat], [bool(f) for f in failed])


@dataclass
class Arms:
    """Both arms of one canary over the rule's window, and what a metric may need besides."""

    name: str
    live_version: int
    canary_version: int
    live: ArmSamples
    canary: ArmSamples
    window_start: float  # wall clock
    settings: Settings
    # what the drift metric compares both arms' predictions with (``reference_profile``)
    profile: Any = None


@dataclass(frozen=True)
class Verdict:
    metric: str
    live: float | None
    canary: float | None
    failed: bool  # the canary is worse than the settings allow
    limit: str  # the tolerance, as the history line writes it ("> 2.0x")
    unit: str = ""
    # False while the metric has too little to go on (no feedback yet): no decision is made
    ready: bool = True

    def line(self) -> str:
        """ "p99 41 ms vs live 12 ms (> 2.0x)"."""
        what = self.metric.replace("_", " ")
        return f"{what} {_fmt(self.canary, self.unit)} vs live {_fmt(self.live, self.unit)}" + (
            f" ({self.limit})" if self.failed else ""
        )

    def to_wire(self) -> dict[str, Any]:
        return {
            "live": self.live,
            "canary": self.canary,
            "failed": self.failed,
            "limit": self.limit,
            "unit": self.unit,
        }


def _fmt(value: float | None, unit: str) -> str:
    if value is None:
        return "-"
    if unit == "%":
        return f"{value * 100:.1f}%"
    if unit == "ms":
        return f"{value:.0f} ms" if value >= 10 else f"{value:.2f} ms"
    if unit == "PSI":
        return f"PSI {value:.2f}"
    return f"{value:.3f}"


def error_rate(arms: Arms) -> Verdict:
    margin = arms.settings.canary_error_rate_margin
    live, canary = arms.live.error_rate, arms.canary.error_rate
    return Verdict("error_rate", live, canary, canary > live + margin, f"> +{margin:.0%}", "%")


def p99(arms: Arms) -> Verdict:
    s = arms.settings
    live, canary = arms.live.p99_ms, arms.canary.p99_ms
    failed = canary > max(live * s.canary_p99_ratio, live + s.canary_p99_slack_ms)
    return Verdict("p99", live, canary, failed, f"> {s.canary_p99_ratio:g}x", "ms")


# PSI over fewer logged answers than this is noise: the drift metric waits for more.
DRIFT_MIN_ROWS = 30


def drift(arms: Arms) -> Verdict:
    """How far each arm's predictions (from the inference log, over the window) are from the
    reference profile's predictions, as PSI; the canary fails when its PSI is more than
    ``canary_drift_ratio`` times the live version's **and** more than ``canary_drift_margin``
    above it (PSI over a few dozen answers is noisy for both arms alike: the ratio keeps a
    canary as good as the live version from failing by that noise)."""
    s = arms.settings
    limit = f"> {s.canary_drift_ratio:g}x"
    live = _prediction_psi(arms, arms.live_version)
    canary = _prediction_psi(arms, arms.canary_version)
    if live is None or canary is None:
        return Verdict("drift", live, canary, False, limit, "PSI", ready=False)
    worse = canary > max(live * s.canary_drift_ratio, live + s.canary_drift_margin)
    return Verdict("drift", live, canary, worse, limit, "PSI")


def _prediction_psi(arms: Arms, version: int) -> float | None:
    """The largest PSI of a version's logged predictions in the window against the reference
    profile's; None while fewer than ``DRIFT_MIN_ROWS`` are logged."""
    from kernel_magics.quality.drift import drift_report
    from kernel_magics.quality.log_reader import read_log

    if arms.profile is None:
        return None
    since = _dt.datetime.fromtimestamp(arms.window_start, _dt.UTC)
    logged = read_log(arms.settings.home, arms.name, since=since, version=version)
    if len(logged) < DRIFT_MIN_ROWS:
        return None
    s = arms.settings
    report = drift_report(
        arms.profile,
        list(logged["input"]),
        list(logged["output"]),
        p_value=s.drift_p_value,
        psi=s.drift_psi,
    )
    psis = [float(f.psi) for f in report.features if f.prediction]
    return max(psis) if psis else None


def reference_profile(*model_folders: str) -> Any:
    """The reference profile the drift metric compares both arms with: the first of the
    (verified) version folders given that has one (the live version's, else the canary's)."""
    from kernel_magics.quality.profile import read_profile

    for folder in model_folders:
        profile = read_profile(Path(folder))
        if profile is not None and profile.predictions:
            return profile
    return None


# Live accuracy over fewer labelled answers than this says little: the metric waits for more.
ACCURACY_MIN_LABELS = 20


def accuracy(arms: Arms) -> Verdict:
    """Live accuracy per arm: each version's logged answers in the window joined with the true
    labels sent back for them (``POST /v1/models/{name}/feedback``). The canary fails when its
    accuracy is lower than the live version's by more than ``canary_accuracy_margin``. For a
    regressor the figure is the mean absolute error, and the canary fails when its MAE is
    higher by more than that share of the live version's."""
    from kernel_magics.quality.live import live_metrics

    margin = arms.settings.canary_accuracy_margin
    since = _dt.datetime.fromtimestamp(arms.window_start, _dt.UTC)
    figures = live_metrics(arms.settings.home, arms.name, since=since)
    live, canary = figures.get(arms.live_version, {}), figures.get(arms.canary_version, {})
    enough = min(live.get("labelled", 0), canary.get("labelled", 0)) >= ACCURACY_MIN_LABELS
    if "mae" in live and "mae" in canary:
        worse = canary["mae"] > live["mae"] * (1 + margin)
        limit = f"> +{margin:.0%} MAE"
        return Verdict("mae", live["mae"], canary["mae"], worse, limit, ready=enough)
    limit = f"< -{margin:.0%}"
    if "accuracy" not in live or "accuracy" not in canary:
        return Verdict("accuracy", live.get("accuracy"), None, False, limit, "%", ready=False)
    worse = canary["accuracy"] < live["accuracy"] - margin
    return Verdict("accuracy", live["accuracy"], canary["accuracy"], worse, limit, "%", enough)


METRICS: dict[str, Callable[[Arms], Verdict]] = {
    "error_rate": error_rate,
    "p99": p99,
    "accuracy": accuracy,
    "drift": drift,
}


def check_rule(rule: CanaryRule) -> None:
    """Refuse a rule naming a metric that does not exist (InvalidInput names those that do)."""
    unknown = [m for m in rule.metrics if m not in METRICS]
    if unknown:
        raise InvalidInput(
            f"unknown canary metric(s) {', '.join(repr(m) for m in unknown)}: "
            f"use {', '.join(METRICS)}"
        )


def filled(rule: CanaryRule, settings: Settings) -> CanaryRule:
    """The rule with the settings' defaults in place of what the deploy left unsaid."""
    return CanaryRule(
        rule.metrics,
        rule.window_s if rule.window_s is not None else settings.canary_window_s,
        rule.min_requests if rule.min_requests is not None else settings.canary_min_requests,
    )


@dataclass(frozen=True)
class Decision:
    action: str  # "promote" or "rollback"
    reason: str  # one line for the history, %models and the log
    evidence: dict[str, Any]


def decide(rule: CanaryRule, arms: Arms) -> Decision | None:
    """Promote, roll back, or (None) not yet: an arm short of ``min_requests``, or a metric
    with too little to go on."""
    least = rule.min_requests or arms.settings.canary_min_requests
    if arms.live.requests < least or arms.canary.requests < least:
        return None
    verdicts = [METRICS[m](arms) for m in rule.metrics if m in METRICS]
    if not all(v.ready for v in verdicts):
        return None
    worse = [v for v in verdicts if v.failed]
    counts = f"over {arms.canary.requests:,}/{arms.live.requests:,} requests"
    if worse:
        action = "rollback"
        reason = f"auto-rollback: canary {worse[0].line()} {counts}"
    else:
        action = "promote"
        reason = f"auto-promote: canary {', '.join(v.line() for v in verdicts)} {counts}"
    evidence = {
        "rule": rule.to_wire(),
        "live_version": arms.live_version,
        "canary_version": arms.canary_version,
        "requests": {"live": arms.live.requests, "canary": arms.canary.requests},
        "metrics": {v.metric: v.to_wire() for v in verdicts},
    }
    return Decision(action, reason, evidence)
