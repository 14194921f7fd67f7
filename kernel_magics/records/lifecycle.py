"""Records of the lifecycle: what a worker loads, what happened to a model, a canary's rule,
the answer to a transition."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

from kernel_magics.errors import InvalidInput
from kernel_magics.records._wire import _classes, _float_or_none, _int_or_none, _mapping, _Wire


@dataclass(frozen=True)
class ModelSpec(_Wire):
    """Everything a worker needs to load one version; built from the store after the version's
    content hash was checked. ``format`` picks the worker's loader (``km.format``)."""

    name: str
    version: int
    path: str
    sha256: str
    task: str | None = None
    format: str | None = None
    max_batch_size: int | None = None
    max_wait_ms: float | None = None
    classes: tuple | None = None  # km.classes: a classifier's labels in output order
    log_sample: float | None = None  # the inference log's share; None: the worker's setting

    @classmethod
    def from_wire(cls, doc: Any) -> ModelSpec:
        doc = _mapping(doc, "a model spec")
        try:
            name, path = str(doc["name"]), str(doc["path"])
            version = _int_or_none(doc["version"], "version")
        except KeyError as err:
            raise InvalidInput(f"model spec needs name, version and path: missing {err}") from None
        if version is None:
            raise InvalidInput("model spec needs a version")
        batch = _int_or_none(doc.get("max_batch_size"), "max_batch_size")
        return cls(
            name=name,
            version=version,
            path=path,
            sha256=str(doc.get("sha256") or ""),
            task=doc.get("task"),
            format=doc.get("format"),
            max_batch_size=batch or None,
            max_wait_ms=_float_or_none(doc.get("max_wait_ms"), "max_wait_ms"),
            classes=_classes(doc.get("classes")),
            log_sample=_float_or_none(doc.get("log_sample"), "log_sample"),
        )


@dataclass(frozen=True)
class HistoryEvent(_Wire):
    """One deploy / rollback / undeploy of a model; ``time`` is ISO 8601 in UTC.

    A transition the inference process made by itself (a canary it judged) says why: ``reason``
    is one human line, ``evidence`` the figures and the rule behind it. Both are None for a
    transition someone asked for, and readers that predate them ignore them."""

    time: str
    action: str
    from_version: int | None
    to_version: int | None
    reason: str | None = None
    evidence: dict[str, Any] | None = None

    @classmethod
    def from_wire(cls, doc: Any) -> HistoryEvent:
        doc = _mapping(doc, "a history event")
        evidence = doc.get("evidence")
        if evidence is not None:
            evidence = dict(_mapping(evidence, "a history event's evidence"))
        reason = doc.get("reason")
        return cls(
            time=str(doc.get("time") or ""),
            action=str(doc.get("action") or ""),
            from_version=_int_or_none(doc.get("from_version"), "from_version"),
            to_version=_int_or_none(doc.get("to_version"), "to_version"),
            reason=str(reason) if reason is not None else None,
            evidence=evidence,
        )


# What a canary is judged on when the deploy names no metric (``quality/canary_judge.py`` holds
# the metrics themselves).
DEFAULT_CANARY_METRICS = ("error_rate", "p99")


@dataclass(frozen=True)
class CanaryRule(_Wire):
    """How the inference process judges a canary by itself (``%deploy NAME@V --canary P
    --analyze``): it compares ``metrics`` between the canary's requests and the live version's
    over the last ``window_s`` seconds and, once each has ``min_requests``, promotes the canary
    or rolls it back. None leaves a figure to the process's settings (``canary_window_s``,
    ``canary_min_requests``); the process records the rule with every figure filled in."""

    metrics: tuple[str, ...] = DEFAULT_CANARY_METRICS
    window_s: float | None = None
    min_requests: int | None = None

    @classmethod
    def from_wire(cls, doc: Any) -> CanaryRule:
        doc = _mapping(doc, "a canary rule")
        unknown = set(doc) - {"metrics", "window_s", "min_requests"}
        if unknown:
            raise InvalidInput(f"unknown canary rule field(s): {', '.join(sorted(unknown))}")
        metrics = doc.get("metrics")
        if metrics is None:
            metrics = DEFAULT_CANARY_METRICS
        if (
            isinstance(metrics, str)
            or not isinstance(metrics, list | tuple)
            or not metrics
            or not all(isinstance(m, str) for m in metrics)
        ):
            raise InvalidInput("metrics must be a non-empty list of metric names")
        window = _float_or_none(doc.get("window_s"), "window_s")
        if window is not None and not 0 < window <= 7 * 86400:
            raise InvalidInput(f"window_s must be between 0 and one week, got {window}")
        least = _int_or_none(doc.get("min_requests"), "min_requests")
        if least is not None and not 1 <= least <= 10**9:
            raise InvalidInput(f"min_requests must be a whole number of at least 1, got {least}")
        # one metric named twice is judged once
        return cls(tuple(dict.fromkeys(metrics)), window, least)


def _history(raw: Any) -> tuple[HistoryEvent, ...]:
    return tuple(HistoryEvent.from_wire(e) for e in (raw or ()))


@dataclass(frozen=True)
class TransitionResult(_Wire):
    """The answer to a deploy, rollback or undeploy. ``version`` is None after an undeploy;
    ``reused`` when the version was already loaded (a rollback to the standby loads nothing)."""

    name: str
    action: str
    version: int | None
    previous_version: int | None
    load_ms: float | None = None
    ready_at: float | None = None
    reused: bool = False
    url: str | None = None
    history: tuple[HistoryEvent, ...] = ()
    # action "canary": the share of requests (percent) ``version`` answers beside the live one
    canary: int | None = None
    # the version asked for was already live as asked: nothing changed, nothing was recorded
    unchanged: bool = False
    # action "canary" with analysis: the rule the process judges it by (every figure filled in)
    analyze: CanaryRule | None = None

    @classmethod
    def from_wire(cls, doc: Any) -> TransitionResult:
        doc = _mapping(doc, "a transition result")
        return cls(
            name=str(doc.get("name") or ""),
            action=str(doc.get("action") or ""),
            version=_int_or_none(doc.get("version"), "version"),
            previous_version=_int_or_none(doc.get("previous_version"), "previous_version"),
            load_ms=_float_or_none(doc.get("load_ms"), "load_ms"),
            ready_at=_float_or_none(doc.get("ready_at"), "ready_at"),
            reused=bool(doc.get("reused", False)),
            url=doc.get("url"),
            history=_history(doc.get("history")),
            canary=_int_or_none(doc.get("canary"), "canary"),
            unchanged=bool(doc.get("unchanged", False)),
            analyze=CanaryRule.from_wire(doc["analyze"]) if doc.get("analyze") else None,
        )

    def with_url(self, url: str | None) -> TransitionResult:
        return dataclasses.replace(self, url=url)
